"""Frames on the decrypted byte stream: a 4-byte big-endian length, then a msgpack body.

The decoder checks a frame's declared length against ``max_frame`` *before* buffering it, so
a peer cannot make us allocate more than one frame's worth of memory.
"""

from __future__ import annotations

import struct

DEFAULT_MAX_FRAME = 1 << 20
_LEN = struct.Struct(">I")


class FrameError(Exception):
    """The stream is broken (oversize frame): the connection must be closed."""


def encode_frame(body: bytes) -> bytes:
    return _LEN.pack(len(body)) + body


class FrameDecoder:
    """Incremental decoder: ``feed(bytes) -> [frame bodies]``."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._need: int | None = None  # body length of the frame being collected

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def partial(self) -> bool:
        """Whether a frame has begun (its header or part of it came) and is not finished."""
        return self._need is not None or bool(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        frames: list[bytes] = []
        offset = 0
        end = len(data)
        while offset < end:
            if self._need is None:
                take = min(4 - len(buffer), end - offset)
                buffer += data[offset : offset + take]
                offset += take
                if len(buffer) < 4:
                    break
                (length,) = _LEN.unpack_from(buffer, 0)
                buffer.clear()
                if length > self.max_frame:
                    raise FrameError(f"frame of {length} bytes exceeds max_frame {self.max_frame}")
                self._need = length
            take = min(self._need - len(buffer), end - offset)
            if not buffer and take == self._need:
                frames.append(bytes(data[offset : offset + take]))
            else:
                buffer += data[offset : offset + take]
                if len(buffer) < self._need:
                    offset += take
                    break
                frames.append(bytes(buffer))
                buffer.clear()
            offset += take
            self._need = None
        return frames
