"""Ports that ptychography sources share: where the beam was on the sample for each frame."""
from __future__ import annotations

from lightpipe.core.ports import Port

__all__ = ["POSITION_PORTS"]

#: Fields of a ptychography event: the frame and where the beam was.
POSITION_PORTS = {
    "position_y_m": Port(ndim=0, dtype="float", unit="m", description="Probe position y on the sample (NaN for darks)"),
    "position_x_m": Port(ndim=0, dtype="float", unit="m", description="Probe position x on the sample (NaN for darks)"),
}
