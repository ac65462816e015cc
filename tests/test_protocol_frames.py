"""protocol/frames.py: 4-byte length-prefixed frames on the decrypted stream."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from protocol.frames import (
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    FrameError,
    FrameRefused,
    encode_frame,
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def test_encode_frame() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"") == b"\x00\x00\x00\x00"


def test_default_max_frame_is_one_mebibyte() -> None:
    assert DEFAULT_MAX_FRAME == 1 << 20
    assert FrameDecoder().max_frame == 1 << 20


def test_whole_frames_in_one_feed() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(b"one") + encode_frame(b"two")) == [b"one", b"two"]
    assert decoder.buffered == 0


def test_zero_length_frames() -> None:
    decoder = FrameDecoder(max_frame=0)
    assert decoder.feed(encode_frame(b"") * 3) == [b"", b"", b""]
    # A zero-length frame whose header ends exactly at the end of a feed.
    assert decoder.feed(b"\x00\x00") == []
    assert decoder.feed(b"\x00\x00") == [b""]
    assert decoder.buffered == 0


def test_byte_at_a_time() -> None:
    decoder = FrameDecoder()
    wire = encode_frame(b"hello") + encode_frame(b"") + encode_frame(b"world")
    out: list[bytes] = []
    for byte in wire:
        out.extend(decoder.feed(bytes([byte])))
    assert out == [b"hello", b"", b"world"]


def test_frame_of_exactly_max_frame_is_accepted() -> None:
    decoder = FrameDecoder(max_frame=10)
    assert decoder.feed(encode_frame(b"x" * 10)) == [b"x" * 10]


def test_oversize_declared_length_raises_before_any_body_byte() -> None:
    decoder = FrameDecoder(max_frame=10)
    header = struct.pack(">I", 11)
    assert decoder.feed(header[:3]) == []
    with pytest.raises(FrameError, match="11 bytes exceeds max_frame 10"):
        decoder.feed(header[3:])
    assert decoder.buffered == 0


def test_huge_declared_length_raises_at_once() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError):
        decoder.feed(b"\xff\xff\xff\xff" + b"x" * 100)
    assert decoder.buffered <= 4


def test_oversize_frame_after_good_frames() -> None:
    decoder = FrameDecoder(max_frame=5)
    with pytest.raises(FrameError):
        decoder.feed(encode_frame(b"ok") + struct.pack(">I", 6))


def test_feed_accepts_bytearray_and_memoryview() -> None:
    decoder = FrameDecoder()
    wire = encode_frame(b"abc") + encode_frame(b"defg")
    assert decoder.feed(bytearray(wire[:5])) == []
    assert decoder.feed(memoryview(wire[5:])) == [b"abc", b"defg"]
    assert all(type(frame) is bytes for frame in decoder.feed(bytearray(encode_frame(b"z"))))


@settings(deadline=None, max_examples=300)
@given(
    frames=st.lists(st.binary(max_size=300), max_size=10),
    cuts=st.lists(st.integers(min_value=0), max_size=20),
)
@example(frames=[b"x" * 70_000, b"", b"y" * 1_000], cuts=[1, 3, 4, 5, 65_536, 70_004, 70_008])
def test_frames_in_arbitrary_splits_come_out_identical(
    frames: list[bytes], cuts: list[int]
) -> None:
    decoder = FrameDecoder(max_frame=100_000)
    wire = b"".join(encode_frame(frame) for frame in frames)
    out: list[bytes] = []
    for piece in split(wire, cuts):
        out.extend(decoder.feed(piece))
        assert decoder.buffered <= decoder.max_frame + 4
    assert out == frames
    assert decoder.buffered == 0


@settings(deadline=None, max_examples=300)
@given(
    garbage=st.binary(max_size=400),
    cuts=st.lists(st.integers(min_value=0), max_size=20),
    max_frame=st.integers(min_value=0, max_value=64),
)
def test_garbage_raises_only_frame_error_and_stays_bounded(
    garbage: bytes, cuts: list[int], max_frame: int
) -> None:
    decoder = FrameDecoder(max_frame=max_frame)
    out: list[bytes] = []
    try:
        for piece in split(garbage, cuts):
            out.extend(decoder.feed(piece))
            assert decoder.buffered <= max_frame + 4
    except FrameError:
        return
    # No error: the garbage parsed as frames, none over the limit, and re-encodes exactly
    # to the bytes consumed so far.
    assert all(len(frame) <= max_frame for frame in out)
    consumed = b"".join(encode_frame(frame) for frame in out)
    assert garbage.startswith(consumed)
    assert len(garbage) - len(consumed) <= 3 + max_frame  # one incomplete frame at most


@settings(deadline=None, max_examples=100)
@given(
    length=st.integers(min_value=11, max_value=2**32 - 1),
    cuts=st.lists(st.integers(min_value=0, max_value=3), max_size=3),
)
def test_any_oversize_header_in_any_split_raises(length: int, cuts: list[int]) -> None:
    decoder = FrameDecoder(max_frame=10)
    pieces = split(struct.pack(">I", length), cuts)
    for piece in pieces[:-1]:
        assert decoder.feed(piece) == []
    with pytest.raises(FrameError):
        decoder.feed(pieces[-1] + b"body")


def test_admit_judges_an_unfinished_frame_on_its_declared_length() -> None:
    asked: list[int] = []
    decoder = FrameDecoder(admit=lambda length: asked.append(length) or length <= 200)
    assert decoder.feed(encode_frame(b"x" * 500)) == [b"x" * 500]  # whole: never asked
    assert decoder.feed(struct.pack(">I", 100)) == []  # the header alone is charged
    assert asked == [100] and decoder.pending == 100 and decoder.buffered == 0
    assert decoder.feed(b"y" * 100 + struct.pack(">I", 101) + b"z") == [b"y" * 100]
    assert asked == [100, 101]
    with pytest.raises(FrameRefused):  # refused before a byte of its body was kept
        FrameDecoder(admit=lambda length: False).feed(struct.pack(">I", 10) + b"abc")
    decoder = FrameDecoder(admit=lambda length: True)
    decoder.feed(struct.pack(">I", 10) + b"abc")
    decoder.discard()
    assert (decoder.pending, decoder.buffered) == (0, 0)
