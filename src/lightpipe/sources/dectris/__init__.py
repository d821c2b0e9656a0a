"""DECTRIS detector streams (EIGER, PILATUS4): the wire formats of stream v1 and stream v2.

:mod:`~lightpipe.sources.dectris.simplon` reads and writes stream v1 (multipart
JSON and binary), :mod:`~lightpipe.sources.dectris.stream2` stream v2 (CBOR).
Both decode to the same messages: a :class:`SeriesHeader`, one :class:`Image`
per frame (still encoded; :meth:`Image.decode` gives the pixels), and a
:class:`SeriesEnd`. Anything off-protocol raises :class:`StreamError`.
"""
from lightpipe.sources.dectris.compression import EncodedFrame
from lightpipe.sources.dectris.errors import StreamError
from lightpipe.sources.dectris.messages import Image, Message, SeriesEnd, SeriesHeader

__all__ = ["EncodedFrame", "Image", "Message", "SeriesEnd", "SeriesHeader", "StreamError"]
