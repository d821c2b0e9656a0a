"""The error of the DECTRIS stream layer."""
from __future__ import annotations

from lightpipe.core.errors import LightpipeError


class StreamError(LightpipeError):
    """A detector stream message that cannot be decoded or encoded.

    The message names the part or field that is wrong and what was expected,
    so that a receiver can record the bad message and go on with the next one.
    """
