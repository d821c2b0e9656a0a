"""A stage that passes frames through: for measuring engine overhead and testing."""
from __future__ import annotations

from typing import Any

from lightpipe.core.ports import Port
from lightpipe.core.stage import MapStage


class Identity(MapStage):
    """Pass the frame through unchanged (no computation)."""

    name = "identity"
    inputs = {"frame": Port(ndim=None, dtype=None, description="Any value")}
    outputs = {"frame": Port(ndim=None, dtype=None, description="The same value")}

    def process(self, frame: Any) -> dict[str, Any]:
        return {"frame": frame}
