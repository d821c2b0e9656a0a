"""The ``initial_probe`` stage: a probe estimate from the mean diffraction pattern of a scan."""
from __future__ import annotations

from typing import Any

import numpy as np

from lightpipe.core.event import Scan
from lightpipe.core.ports import Port
from lightpipe.core.stage import ReduceStage
from lightpipe.core.xp import to_numpy
from lightpipe.techniques.ptychography.geometry import GeometryParams, object_pixel_size, scan_wavelength
from lightpipe.techniques.ptychography.probe import probe_from_intensity

__all__ = ["InitialProbe"]


class InitialProbe(ReduceStage[Any]):
    """Initial probe estimate: the inverse FFT of the mean diffraction amplitude, with a flat phase.

    The probe's far field holds the mean photon count of a frame. With
    ``defocus_m`` the flat-phase probe at focus is propagated to the sample,
    on the object pixels of the frames' geometry
    (:mod:`lightpipe.techniques.ptychography.geometry`).
    """

    name = "initial_probe"
    Params = GeometryParams
    inputs = {"frame": Port(ndim=2, dtype="number", unit="counts", description="Pre-processed diffraction frame")}
    outputs = {
        "probe": Port(ndim=2, dtype="complex", description="Probe estimate (ny, nx), centred", scan=True),
        "mean": Port(ndim=2, dtype="float", unit="counts", description="Mean diffraction pattern", scan=True),
    }

    def setup(self, scan: Scan) -> None:
        self._metadata = scan.metadata

    def partial(self, frame: Any) -> Any:
        return (1, np.asarray(to_numpy(frame), dtype=np.float64))

    def merge(self, left: Any, right: Any) -> Any:
        return (left[0] + right[0], left[1] + right[1])

    def finish(self, total: Any) -> dict[str, Any]:
        if total is None:
            raise ValueError("no frame arrived to estimate the probe from; check the stage's stream and inputs")
        mean = total[1] / total[0]
        p = self.params
        wavelength, pixel = None, None
        if p.defocus_m:  # the geometry is needed, and must be known, only to propagate
            wavelength = scan_wavelength(self._metadata)
            pixel = object_pixel_size(self._metadata, p.object_pixel_size_m, self.input_geometry.get("frame"))
        return {"probe": probe_from_intensity(mean, p.defocus_m, wavelength, pixel), "mean": mean}
