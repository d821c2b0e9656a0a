"""Settings of the service: command-line flags, then ``LIGHTPIPE_*`` environment variables, then a settings file.

Every setting has an embedded default, so ``lightpipe serve`` needs none: a data
root ``./data``, a state directory ``./.lightpipe`` holding the SQLite database,
the job outputs and the runtime directory of the job processes, and the local
engine. A settings file is YAML with the same names::

    # lightpipe-service.yaml, given with --settings or LIGHTPIPE_SETTINGS_FILE
    port: 8080
    data_root: /gpfs/current/raw
    database_url: postgresql://lightpipe@dbhost/lightpipe

Example
-------
>>> ServiceSettings(port=8080).port
8080
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from lightpipe.core.errors import LightpipeError

ENV_PREFIX = "LIGHTPIPE_"
SETTINGS_FILE_ENV = f"{ENV_PREFIX}SETTINGS_FILE"


class ServiceSettings(BaseSettings):
    """What the service listens on, where its data and state live, and how it runs jobs."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    settings_file: Path | None = Field(None, description="YAML file of settings (flags and environment win over it)")
    host: str = Field("127.0.0.1", description="Address to listen on; 0.0.0.0 for every interface")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on; 0 picks a free one")
    data_root: Path = Field(Path("data"), description="Folder of the datasets users may browse and process")
    state_dir: Path = Field(Path(".lightpipe"), description="Folder of the database, job outputs and run files")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default a SQLite file in state_dir")
    pipelines_dir: Path | None = Field(
        None, description="Pipeline YAML files registered as templates when the database has none "
                          "(default ./pipelines if it exists)")
    engine: str = Field("local", description="Engine that runs jobs (lightpipe engines lists them)")
    engine_options: dict[str, Any] = Field(default_factory=dict, description="Options of the engine, as for run")
    cluster: str | None = Field(None, description="Dask scheduler address or dask-jobqueue section: runs jobs "
                                                  "on the dask engine with this cluster")
    max_running_jobs: int = Field(2, ge=1, le=1024, description="Jobs running at once; more wait, queued")
    job_niceness: int = Field(5, ge=0, le=19, description="Niceness added to job processes, so that the server "
                                                         "answers promptly while jobs take every core (0: none)")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body accepted (413 beyond)")
    max_output_elements: int = Field(1_000_000, ge=1, description="Largest array an outputs request returns")
    token_days: float = Field(90.0, gt=0, le=3650, description="Lifetime of the tokens the service creates")
    live_streams: list[str] = Field(default_factory=list,
                                    description="Detector streams (eiger://HOST:PORT) users may start live jobs on")
    demo: bool = Field(False, description="Start with a simulated dataset, the templates and a finished demo job")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        given = getattr(init_settings, "init_kwargs", {}).get("settings_file") or os.environ.get(SETTINGS_FILE_ENV)
        if not given:
            return init_settings, env_settings
        if not Path(given).is_file():
            raise LightpipeError(f"settings file {given} not found; give an existing YAML file with --settings "
                                 f"or {SETTINGS_FILE_ENV}, or none")
        return init_settings, env_settings, YamlConfigSettingsSource(settings_cls, yaml_file=given)

    @property
    def database(self) -> str:
        """The database URL in use: :attr:`database_url`, or the SQLite file ``state_dir/lightpipe.db``."""
        return self.database_url or f"sqlite:///{(self.state_dir / 'lightpipe.db').resolve()}"

    @property
    def jobs_dir(self) -> Path:
        """Where each job writes its results, one folder per job."""
        return (self.state_dir / "jobs").resolve()

    @property
    def runtime_dir(self) -> Path:
        """Where job processes announce their control channels (``lightpipe status`` reads it too)."""
        return (self.state_dir / "run").resolve()

    def engine_spec(self) -> dict[str, Any]:
        """The engine a job runs on: ``{"name": ..., "options": {...}}``."""
        options = dict(self.engine_options)
        if self.cluster is None:
            return {"name": self.engine, "options": options}
        options["cluster"] = self.cluster  # --cluster means the dask engine, as for `lightpipe run`
        return {"name": "dask" if self.engine == "local" else self.engine, "options": options}

    def seed_dir(self) -> Path | None:
        """The folder of pipeline files to register as templates at first start, if any."""
        if self.pipelines_dir is not None:
            return self.pipelines_dir
        default = Path("pipelines")
        return default if default.is_dir() else None
