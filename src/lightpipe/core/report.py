"""What a run hands back: one report per scan, with its accounting, files and results."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightpipe.core.ledger import Ledger


@dataclass
class ScanReport:
    """The outcome of one scan."""

    scan: str
    ledger: Ledger
    files: list[Path]
    results: dict[str, Any]
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class RunReport:
    """The outcome of a run: one report per scan."""

    scans: list[ScanReport] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return [f for s in self.scans for f in s.files]
