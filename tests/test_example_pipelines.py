"""Every pipeline in pipelines/ has a header, validates, and runs as it stands."""
from __future__ import annotations

from pathlib import Path

import pytest

from example_runs import PIPELINES, run_small


def test_there_are_example_pipelines() -> None:
    assert len(PIPELINES) >= 2


@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_example_pipeline_runs(path: Path, tmp_path: Path) -> None:
    lines = path.read_text().splitlines()
    header = [line for line in lines[: next(i for i, l in enumerate(lines) if not l.startswith("#"))]]
    assert len(header) >= 2, f"{path.name} needs a comment header saying what it does"
    report = run_small(path, tmp_path).report  # the header's command runs the full size
    for scan in report.scans:
        assert scan.ledger.failed == [], scan.ledger.failed[:3]
        assert scan.ledger.written == scan.ledger.received > 0
    assert report.files and all(f.exists() for f in report.files)
