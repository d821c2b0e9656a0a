"""Frame geometry: how the pixels of a frame map onto the detector after crops, binning and downsampling.

A source's frames are the detector's own pixels. A stage that crops, bins or
resamples a frame declares how (:meth:`lightpipe.core.stage.Stage.frame_geometry`),
so the pipeline can tell, for any frame field, its shape and how many detector
pixels each of its pixels spans. Sinks take the pixel size of the frames they
write from it, and stages take the detector window their frames cover
(``stage.input_geometry``), so a user never repeats a crop by hand.

Example
-------
>>> g = FrameGeometry((1024, 1024))
>>> g.cropped((256, 256)).binned((2, 2)).window_px
(256.0, 256.0)
>>> g.cropped((256, 256)).binned((2, 2)).scale
(2.0, 2.0)
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FrameGeometry:
    """The shape of a frame and the detector pixels (y, x) each of its pixels spans.

    Attributes
    ----------
    shape
        Frame shape (ny, nx) in the frame's own pixels.
    scale
        Detector pixels per frame pixel, (y, x): 1 on the raw detector, 2 after
        2 x 2 binning, 4 after an FFT downsampling from 1024 to 256.
    """

    shape: tuple[int, int]
    scale: tuple[float, float] = (1.0, 1.0)

    @property
    def window_px(self) -> tuple[float, float]:
        """Detector pixels (y, x) the frame spans."""
        return (self.shape[0] * self.scale[0], self.shape[1] * self.scale[1])

    def pixel_size(self, detector_pixel: tuple[float, float]) -> tuple[float, float]:
        """Size (y, x) of the frame's pixels, given the detector's (same unit)."""
        return (detector_pixel[0] * self.scale[0], detector_pixel[1] * self.scale[1])

    def cropped(self, shape: tuple[int, int]) -> FrameGeometry:
        """A window of ``shape`` frame pixels: the pixel size is kept."""
        return FrameGeometry((int(shape[0]), int(shape[1])), self.scale)

    def binned(self, factor: tuple[int, int]) -> FrameGeometry:
        """``factor`` pixels summed into one along each axis; a remainder is dropped."""
        return FrameGeometry((self.shape[0] // factor[0], self.shape[1] // factor[1]),
                             (self.scale[0] * factor[0], self.scale[1] * factor[1]))

    def resampled(self, shape: tuple[int, int]) -> FrameGeometry:
        """The same window on ``shape`` pixels (an FFT downsampling): the pixels grow."""
        return FrameGeometry((int(shape[0]), int(shape[1])),
                             (self.scale[0] * self.shape[0] / shape[0], self.scale[1] * self.shape[1] / shape[1]))
