"""The service's commands: ``db upgrade``, the schema check at start-up, ``token create``, and ``submit``,
``jobs`` and ``logs`` against a real running service through :mod:`lightpipe.client`."""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from lightpipe.cli.main import main
from lightpipe.client import Client, ServiceError
from lightpipe.service.app import create_app
from lightpipe.service.db.models import Base
from lightpipe.service.db.session import DatabaseError, make_engine
from lightpipe.service.settings import ServiceSettings
from service_harness import POWDER, RunningService, make_data


def test_db_upgrade_builds_the_schema_of_the_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade", "--state-dir", str(tmp_path)]) == 0
    assert "from revision none to 0001" in capsys.readouterr().out
    assert main(["db", "upgrade", "--state-dir", str(tmp_path)]) == 0
    assert "up to date" in capsys.readouterr().out
    engine = make_engine(f"sqlite:///{tmp_path / 'lightpipe.db'}")
    with engine.connect() as connection:  # the migration makes exactly what the models describe
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def test_the_server_refuses_a_database_of_another_schema(tmp_path: Path) -> None:
    db = tmp_path / "lightpipe.db"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE samples (id INTEGER)")
    settings = ServiceSettings(state_dir=tmp_path, data_root=tmp_path / "data")
    with pytest.raises(DatabaseError, match="lightpipe db upgrade"):
        create_app(settings)
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        connection.execute("INSERT INTO alembic_version VALUES ('9999')")
    with pytest.raises(DatabaseError, match="newer lightpipe"):
        create_app(settings)
    assert main(["serve", "--state-dir", str(tmp_path), "--data-root", str(tmp_path / "data")]) == 2


def test_settings_come_from_flags_then_environment_then_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "service.yaml"
    file.write_text("port: 9001\nhost: 0.0.0.0\nmax_running_jobs: 3\n")
    monkeypatch.setenv("LIGHTPIPE_SETTINGS_FILE", str(file))
    monkeypatch.setenv("LIGHTPIPE_PORT", "9002")
    settings = ServiceSettings(host="127.0.0.2")
    assert (settings.host, settings.port, settings.max_running_jobs) == ("127.0.0.2", 9002, 3)
    assert ServiceSettings(cluster="tcp://scheduler:8786").engine_spec() == {
        "name": "dask", "options": {"cluster": "tcp://scheduler:8786"}}


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[RunningService]:
    make_data(tmp_path / "data")
    running = RunningService(ServiceSettings(state_dir=tmp_path / "state", data_root=tmp_path / "data"))
    try:
        yield running
    finally:
        running.close()


def test_token_create_submit_jobs_and_logs(service: RunningService, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    state = str(service.settings.state_dir)
    assert main(["token", "create", "--user", "ines", "--folder", "visit1", "--state-dir", state,
                 "--data-root", str(service.settings.data_root)]) == 0
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert secret.startswith("lp_")
    with Client(service.url, service.admin) as admin:
        admin.register_pipeline(POWDER)
    monkeypatch.setenv("LIGHTPIPE_SERVER", service.url)
    monkeypatch.setenv("LIGHTPIPE_TOKEN", secret)
    assert main(["submit", "powder-profile", "--dataset", "visit1/scan_master.h5", "-p", "photons.threshold=5",
                 "--wait"]) == 0
    out = capsys.readouterr().out
    assert "completed" in out and "scan scan" in out and "48 written" in out
    assert main(["submit", "powder-profile", "--dataset", "visit2/scan_master.h5"]) == 2
    assert "403" in capsys.readouterr().err
    assert main(["jobs"]) == 0
    assert "jobs (1 of 1)" in capsys.readouterr().out
    with Client() as client:
        (job,) = client.jobs()["items"]
        assert job["overrides"] == {"photons.threshold": 5}
        total = client.output(job["id"], "scan", "scalars.total")
        assert total.shape == (40,) and np.isfinite(total).all()
        assert client.download(job["id"], "scan.nxs", service.settings.state_dir / "down").stat().st_size > 0
        with pytest.raises(ServiceError) as refused:
            client.cancel(job["id"])
        assert refused.value.status == 409
    assert main(["logs", job["id"], "--component", "service"]) == 0
    assert "submitted powder-profile v1" in capsys.readouterr().out
