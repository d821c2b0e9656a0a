"""Decoded DECTRIS stream messages, the same for stream v1 (JSON) and v2 (CBOR).

A series is a :class:`SeriesHeader` (sent when the detector is armed), one
:class:`Image` per frame, and a :class:`SeriesEnd` (sent on disarm). The
series number, the frame number and (v2) the series' unique id are what a
receiver needs to notice frames out of order or missing, a series that never
ends, or a new series that starts before the old one ended.

Images keep their encoded blob: the receiver can hold or spill raw bytes, and
the worker that processes a frame calls :meth:`Image.decode`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightpipe.sources.dectris.compression import EncodedFrame, check_frame, decode_frame


@dataclass(frozen=True)
class SeriesHeader:
    """The start of a series.

    Parameters
    ----------
    series
        Series number (the ``sequence id`` that ``arm`` answered).
    detail
        ``none``, ``basic`` or ``all``: how much the detector sent.
    config
        Detector configuration under SIMPLON names (``nimages``, ``ntrigger``,
        ``photon_energy``, ``x_pixels_in_detector``, ...); empty for ``none``.
    flatfield, pixel_mask, countrate
        Arrays in NumPy order, sent with detail ``all``; for stream v2 those of
        the first channel (all channels are in ``message``).
    appendix
        The user's header appendix (v1 ``header_appendix``, v2 ``user_data``).
    channels
        Channel names (stream v2), in the order of the image data.
    unique_id
        ``series_unique_id`` (stream v2).
    message
        The whole stream v2 start message, arrays decoded, keys as sent.
    """

    series: int
    detail: str
    config: dict[str, Any] = field(default_factory=dict)
    flatfield: np.ndarray | None = None
    pixel_mask: np.ndarray | None = None
    countrate: np.ndarray | None = None
    appendix: Any = None
    channels: tuple[str, ...] = ()
    unique_id: str | None = None
    message: dict[str, Any] | None = None

    @property
    def total_images(self) -> int | None:
        """Images the series will hold (``nimages * ntrigger``), if the configuration says."""
        nimages = self.config.get("nimages")
        if not isinstance(nimages, int):
            return None
        ntrigger = self.config.get("ntrigger", 1)
        return nimages * ntrigger if isinstance(ntrigger, int) else None

    @property
    def frame_shape(self) -> tuple[int, int] | None:
        """Frame shape ``(y, x)`` from ``y/x_pixels_in_detector``, if sent."""
        y, x = self.config.get("y_pixels_in_detector"), self.config.get("x_pixels_in_detector")
        return (y, x) if isinstance(y, int) and isinstance(x, int) else None


@dataclass(frozen=True)
class Image:
    """One frame of a series, still encoded.

    Parameters
    ----------
    series
        Series number.
    frame
        Frame number in the series, from 0.
    blob
        Encoded pixels of the default (first) channel.
    shape
        NumPy shape ``(y, x)``.
    dtype
        Pixel type name (``uint16``); the byte order is the encoding's.
    encoding
        ``<``, ``lz4<``, ``bs16-lz4<``, ... (see
        :mod:`lightpipe.sources.dectris.compression`).
    md5
        MD5 hex digest of the blob sent by stream v1, already checked.
    start_time, stop_time, real_time
        Exposure times in nanoseconds.
    appendix
        The user's image appendix (v1 ``image_appendix``, v2 ``user_data``).
    channel
        Name of the default channel (stream v2); ``""`` for stream v1.
    other_channels
        The other channels of a multi-threshold image (stream v2), in order.
    unique_id
        ``series_unique_id`` (stream v2).
    """

    series: int
    frame: int
    blob: bytes
    shape: tuple[int, int]
    dtype: str
    encoding: str
    md5: str | None = None
    start_time: int = 0
    stop_time: int = 0
    real_time: int = 0
    appendix: Any = None
    channel: str = ""
    other_channels: dict[str, EncodedFrame] = field(default_factory=dict)
    unique_id: str | None = None

    @property
    def encoded(self) -> EncodedFrame:
        """The default channel as an :class:`EncodedFrame`."""
        return EncodedFrame(self.blob, self.shape, self.dtype, self.encoding)

    def check(self) -> None:
        """Raise :class:`~lightpipe.sources.dectris.errors.StreamError` if a blob cannot match its shape and type."""
        check_frame(self.blob, self.shape, self.dtype, self.encoding)
        for other in self.other_channels.values():
            other.check()

    def decode(self) -> np.ndarray:
        """The default channel as a new, writable array ``(y, x)``.

        Raises
        ------
        StreamError
            The blob does not decode to the shape and type (corrupt data).
        """
        return decode_frame(self.blob, self.shape, self.dtype, self.encoding)

    def decode_channels(self) -> dict[str, np.ndarray]:
        """Every channel by name, the default first."""
        return {self.channel: self.decode(), **{name: f.decode() for name, f in self.other_channels.items()}}


@dataclass(frozen=True)
class SeriesEnd:
    """The end of a series (sent on disarm, abort or cancel)."""

    series: int
    unique_id: str | None = None


Message = SeriesHeader | Image | SeriesEnd
