"""Frames on the decrypted byte stream: a 4-byte big-endian length, then a msgpack body.

The decoder checks a frame's declared length against ``max_frame`` *before* buffering it, so
a peer cannot make us allocate more than one frame's worth of memory; and a frame that will
not be complete in the bytes at hand is first offered to ``admit`` (the caller's budget for
unfinished frames), judged on its declared length while only its 4-byte header has come.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

DEFAULT_MAX_FRAME = 1 << 20
_LEN = struct.Struct(">I")


class FrameError(Exception):
    """The stream is broken (oversize frame): the connection must be closed."""


class FrameRefused(FrameError):
    """``admit`` refused to hold an unfinished frame of the declared length."""


def encode_frame(body: bytes) -> bytes:
    return _LEN.pack(len(body)) + body


class FrameDecoder:
    """Incremental decoder: ``feed(bytes) -> [frame bodies]``."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME,
                 admit: Callable[[int], bool] | None = None) -> None:
        """``admit(length)`` is asked before a frame of ``length`` bytes is buffered (never
        for one that arrives whole); False raises :class:`FrameRefused`."""
        self.max_frame = max_frame
        self._admit = admit
        self._buffer = bytearray()
        self._need: int | None = None  # body length of the frame being collected

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def pending(self) -> int:
        """The declared length of the unfinished frame being buffered (0 when none)."""
        return self._need or 0

    def discard(self) -> None:
        """Free what is buffered (the stream is over)."""
        self._buffer = bytearray()
        self._need = None

    @property
    def partial(self) -> bool:
        """Whether a frame has begun (its header or part of it came) and is not finished."""
        return self._need is not None or bool(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        view = memoryview(data)  # slices without copies: each frame body is copied once
        frames: list[bytes] = []
        offset = 0
        end = len(view)
        while offset < end:
            if self._need is None:
                if not buffer and end - offset >= 4:
                    (length,) = _LEN.unpack_from(view, offset)
                    offset += 4
                else:  # a header split across feeds
                    take = min(4 - len(buffer), end - offset)
                    buffer += view[offset : offset + take]
                    offset += take
                    if len(buffer) < 4:
                        break
                    (length,) = _LEN.unpack_from(buffer, 0)
                    buffer.clear()
                if length > self.max_frame:
                    raise FrameError(f"frame of {length} bytes exceeds max_frame {self.max_frame}")
                if length > end - offset and self._admit is not None \
                        and not self._admit(length):
                    raise FrameRefused(f"no room to buffer an unfinished frame of {length} bytes")
                self._need = length
            take = min(self._need - len(buffer), end - offset)
            if not buffer and take == self._need:
                frames.append(bytes(view[offset : offset + take]))
            else:
                buffer += view[offset : offset + take]
                if len(buffer) < self._need:
                    offset += take
                    break
                frames.append(bytes(buffer))
                buffer.clear()
            offset += take
            self._need = None
        return frames
