"""Fourier-space resampling of frames: FFT downsampling, the ptychography pre-processing step.

Cropping the centred 2-D Fourier transform of a frame to a smaller shape and
transforming back keeps every spatial frequency the smaller grid can hold and
nothing else: unlike binning, it does not alias and does not blur the
band-limited content, and it works for any target shape, not only integer
factors.
"""
from __future__ import annotations

from typing import Any

from lightpipe.core.bounds import FrameShape
from lightpipe.core.geometry import FrameGeometry
from lightpipe.core.ports import Port
from lightpipe.core.stage import MapStage, StageParams, param
from lightpipe.core.xp import array_namespace


def fft_downsample(frame: Any, shape: tuple[int, int], preserve_total: bool = True) -> Any:
    """Downsample a 2-D frame to ``shape`` by cropping its centred Fourier transform.

    Parameters
    ----------
    frame
        A 2-D real array (NumPy, CuPy or PyTorch). Integer frames are computed in
        float64; float32 frames stay float32.
    shape
        Target ``(ny, nx)``, no larger than the frame in either axis.
    preserve_total
        ``True``: the output sums to the frame's total (each output pixel holds
        the counts of the area it covers, like a summing bin). ``False``: the
        output holds counts per input pixel, i.e. the band-limited frame sampled
        on the coarser grid (like a mean bin).

    Returns
    -------
    array
        The downsampled frame, of shape ``shape`` and a real floating dtype.

    Raises
    ------
    ValueError
        When the frame is not 2-D or ``shape`` does not fit inside it.

    Notes
    -----
    Output pixel ``(j, i)`` samples input position ``(j * ny / my, i * nx / mx)``,
    so a pattern centred on pixel ``(ny // 2, nx // 2)`` (the FFT-centred
    convention of ptychography) stays centred on ``(my // 2, mx // 2)``. A
    ``shape`` equal to the frame's returns the frame's values exactly (no
    rounding from the transforms, so no small negative counts).

    Examples
    --------
    >>> import numpy as np
    >>> frame = np.ones((8, 8), dtype=np.uint16)
    >>> small = fft_downsample(frame, (4, 4))
    >>> small.shape, float(small.sum())
    ((4, 4), 64.0)
    """
    xp = array_namespace(frame)
    if frame.ndim != 2:
        raise ValueError(f"FFT downsampling needs a 2-D frame, got shape {tuple(frame.shape)}")
    (ny, nx), (my, mx) = frame.shape, shape
    if not (1 <= my <= ny and 1 <= mx <= nx):
        raise ValueError(
            f"target shape {tuple(shape)} does not fit the {ny}x{nx} frame: FFT downsampling only shrinks, "
            f"so choose a shape between (1, 1) and ({ny}, {nx})"
        )
    real = frame if xp.isdtype(frame.dtype, "real floating") else xp.astype(frame, xp.float64)
    if (my, mx) == (ny, nx):  # nothing to cut: the frame itself, without the transforms' rounding
        return xp.asarray(real, copy=True) if real is frame else real
    # The real-input transform holds only kx >= 0, so only the rows need a centred crop;
    # rows are kept in FFT order (non-negative ky first), which is the order irfftn wants.
    spectrum = xp.fft.rfftn(real, axes=(0, 1))
    keep_pos, cols = my - my // 2, mx // 2 + 1
    cropped = xp.concat([spectrum[:keep_pos, :cols], spectrum[ny - my // 2 :, :cols]], axis=0)
    # With the backward norm the inverse transform divides by my*mx instead of
    # ny*nx, which is what keeps the total: the zero frequency is the sum.
    out = xp.fft.irfftn(cropped, s=(my, mx), axes=(0, 1))
    if not preserve_total:
        out = out * ((my * mx) / (ny * nx))
    return out


class FFTDownsampleParams(StageParams):
    """Parameters of :class:`FFTDownsample`."""

    shape: FrameShape = param(description="Target frame shape (ny, nx), no larger than the frame", unit="px")
    preserve_total: bool = param(
        True, "Keep the frame's total counts (true) or the counts per input pixel (false)"
    )

    def frame_problem(self, shape: tuple[int, int]) -> str | None:
        """Why the target shape does not fit a frame of ``shape`` (it may not be larger), or ``None``."""
        if self.shape[0] > shape[0] or self.shape[1] > shape[1]:
            return (f"shape={list(self.shape)} is larger than the {shape[0]} x {shape[1]} frame; downsampling "
                    f"cannot add pixels, so give at most [{shape[0]}, {shape[1]}]")
        return None


class FFTDownsample(MapStage):
    """Downsample a frame by cropping its centred 2-D Fourier transform (band-limited, no aliasing)."""

    name = "fft_downsample"
    Params = FFTDownsampleParams
    inputs = {"frame": Port(ndim=2, dtype="number", unit="counts", description="Frame")}
    outputs = {"frame": Port(ndim=2, dtype="float", unit="counts", description="Downsampled frame")}

    @classmethod
    def frame_geometry(cls, params: FFTDownsampleParams, geometry: FrameGeometry) -> FrameGeometry:
        """The same detector window on ``shape`` pixels: each pixel spans more of the detector."""
        return geometry.resampled(params.shape)

    def process(self, frame: Any) -> dict[str, Any]:
        return {"frame": fft_downsample(frame, self.params.shape, self.params.preserve_total)}
