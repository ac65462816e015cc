"""protocol/codec.py: canonical msgpack for digests and signatures, and strict decoding."""

from __future__ import annotations

import contextlib
import hashlib
import random
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import codec
from protocol.codec import CodecError, canonical, digest, pack, unpack

# -- strategies -------------------------------------------------------------------------

ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
scalars = st.none() | st.booleans() | ints | st.binary(max_size=40) | st.text(max_size=20)
canonical_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


def shuffled(value: Any, rng: random.Random) -> Any:
    """The same value with every map's keys inserted in a random order."""
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {key: shuffled(value[key], rng) for key in keys}
    if isinstance(value, list):
        return [shuffled(item, rng) for item in value]
    return value


def key_orders(value: Any) -> list[list[str]]:
    """The key order of every map in a decoded value, depth first."""
    if isinstance(value, dict):
        out = [list(value)]
        for item in value.values():
            out.extend(key_orders(item))
        return out
    if isinstance(value, list):
        return [order for item in value for order in key_orders(item)]
    return []


# -- canonical encoding -----------------------------------------------------------------


def test_keys_sorted_at_every_depth() -> None:
    value = {"z": 1, "a": {"y": [{"d": 1, "c": 2}], "b": 2}, "m": None}
    decoded = msgpack.unpackb(canonical(value), raw=False)
    assert key_orders(decoded) == [["a", "m", "z"], ["b", "y"], ["c", "d"]]
    assert decoded == value


def test_keys_sort_by_encoded_bytes() -> None:
    # "é" (U+00E9, C3 A9 in UTF-8) sorts after "z" and before "€" (E2 82 AC); "Z" before "a".
    value = {"€": 1, "a": 2, "é": 3, "z": 4, "Z": 5, "": 6}
    decoded = msgpack.unpackb(canonical(value), raw=False)
    assert list(decoded) == ["", "Z", "a", "z", "é", "€"]


def test_canonical_is_plain_msgpack_of_sorted_map() -> None:
    assert canonical({"b": 1, "a": b"\x00"}) == b"\x82\xa1a\xc4\x01\x00\xa1b\x01"


def test_bytes_stay_bin_and_text_stays_str() -> None:
    data = canonical({"bin": b"abc", "str": "abc"})
    decoded = msgpack.unpackb(data, raw=False)
    assert decoded == {"bin": b"abc", "str": "abc"}
    assert type(decoded["bin"]) is bytes
    assert type(decoded["str"]) is str
    assert b"\xc4\x03abc" in data  # bin 8 header
    assert b"\xa3abc" in data  # fixstr header


def test_bytearray_memoryview_and_tuples_are_normalised() -> None:
    assert canonical({"a": bytearray(b"x"), "b": memoryview(b"y"), "c": (1, 2)}) == canonical(
        {"a": b"x", "b": b"y", "c": [1, 2]}
    )


@pytest.mark.parametrize(
    ("value", "path"),
    [
        (1.5, "$"),
        ({"a": {"b": [1, 2.0]}}, "$.a.b[1]"),
        ({"x": [{"y": float("nan")}]}, "$.x[0].y"),
        ({"a": {1: "one"}}, "$.a"),
        ({"a": [{b"k": 1}]}, "$.a[0]"),
        ({"n": 2**64}, "$.n"),
        ({"n": -(2**63) - 1}, "$.n"),
        ({"s": {1, 2}}, "$.s"),
        ({"o": object()}, "$.o"),
    ],
)
def test_refuses_non_canonical_values_naming_the_path(value: Any, path: str) -> None:
    with pytest.raises(CodecError) as info:
        canonical(value)
    assert str(info.value).startswith(f"{path}:")
    with pytest.raises(CodecError):
        digest(value)


def test_error_messages_say_what_is_wrong() -> None:
    with pytest.raises(CodecError, match="float"):
        canonical({"a": 1.0})
    with pytest.raises(CodecError, match="not text"):
        canonical({b"a": 1})
    with pytest.raises(CodecError, match="64 bits"):
        canonical([2**70])


def test_integer_bounds_are_inclusive() -> None:
    assert unpack(canonical([2**64 - 1, -(2**63)])) == [2**64 - 1, -(2**63)]


def test_digest_is_sha256_of_canonical() -> None:
    value = {"b": [1, 2], "a": "x"}
    assert digest(value) == hashlib.sha256(canonical(value)).digest()
    assert digest(value) != digest({"b": [2, 1], "a": "x"})


def test_pack_keeps_insertion_order_and_refuses_unencodable() -> None:
    assert list(msgpack.unpackb(pack({"b": 1, "a": 2}), raw=False)) == ["b", "a"]
    with pytest.raises(CodecError):
        pack({"a": object()})
    with pytest.raises(CodecError):
        pack(2**64)


def test_a_value_that_fails_half_packed_leaves_nothing_for_the_next() -> None:
    """The packer is reused: what it wrote before failing must not prefix the next value."""
    for bad in ([1, "two", b"three", object()], {"a": [1] * 100, "z": object()}):
        with pytest.raises(CodecError):
            pack(bad)
        assert pack({"ok": [1, 2]}) == msgpack.packb({"ok": [1, 2]}, use_bin_type=True)
        assert canonical({"ok": 1}) == msgpack.packb({"ok": 1}, use_bin_type=True)


@settings(deadline=None, max_examples=200)
@given(canonical_values)
def test_round_trip(value: Any) -> None:
    assert unpack(canonical(value)) == value


@settings(deadline=None, max_examples=200)
@given(canonical_values, st.randoms(use_true_random=False))
def test_canonical_bytes_do_not_depend_on_key_order(value: Any, rng: random.Random) -> None:
    other = shuffled(value, rng)
    assert canonical(other) == canonical(value)
    assert digest(other) == digest(value)


@settings(deadline=None, max_examples=200)
@given(st.recursive(scalars | st.floats() | st.integers() | st.binary().map(bytearray),
                    lambda children: st.lists(children, max_size=4) | st.tuples(children)
                    | st.dictionaries(st.text(max_size=4) | st.integers(), children, max_size=4),
                    max_leaves=20))
def test_the_fast_walk_encodes_or_refuses_as_the_careful_one_does(value: Any) -> None:
    """``canonical`` walks plain data without keeping a path, and falls back to the walk that
    names where a value is wrong: the outcome is the same either way."""
    try:
        careful: bytes | str = msgpack.packb(codec._canonicalize(value, ()), use_bin_type=True)
    except CodecError as exc:
        careful = str(exc)
    try:
        assert canonical(value) == careful
    except CodecError as exc:
        assert str(exc) == careful


@given(canonical_values)
def test_canonical_is_idempotent(value: Any) -> None:
    data = canonical(value)
    assert canonical(unpack(data)) == data


# -- strict decoding ---------------------------------------------------------------------


def test_unpack_refuses_trailing_bytes() -> None:
    with pytest.raises(CodecError, match="malformed"):
        unpack(canonical({"a": 1}) + b"\x00")


@pytest.mark.parametrize("data", [b"", b"\x81", b"\x81\xa1a", b"\xc4\x05abc", b"\x92\x01"])
def test_unpack_refuses_truncated_data(data: bytes) -> None:
    with pytest.raises(CodecError):
        unpack(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\x81\x01\x02",  # {1: 2}
        b"\x81\xc4\x01a\x01",  # {b"a": 1}
        b"\x81\x90\x01",  # {[]: 1}
        b"\x81\xc0\x01",  # {None: 1}
        b"\x81\xa1a\x81\xc4\x01b\x01",  # {"a": {b"b": 1}}: nested
        b"\x91\x81\xc4\x01b\x01",  # [{b"b": 1}]
    ],
)
def test_unpack_refuses_non_text_keys(data: bytes) -> None:
    with pytest.raises(CodecError):
        unpack(data)


def test_unpack_refuses_invalid_utf8() -> None:
    with pytest.raises(CodecError):
        unpack(b"\xa2\xff\xfe")


def test_unpack_refuses_oversize_input() -> None:
    data = canonical({"blob": b"x" * 100})
    assert unpack(data, max_size=len(data)) == {"blob": b"x" * 100}
    with pytest.raises(CodecError, match="exceeds the limit"):
        unpack(data, max_size=len(data) - 1)


def test_unpack_refuses_absurd_declared_lengths_and_nesting() -> None:
    with pytest.raises(CodecError):
        unpack(b"\xdd\xff\xff\xff\xff")  # array 32 with 4 billion items, none present
    with pytest.raises(CodecError):
        unpack(b"\x91" * 100_000 + b"\xc0")  # nesting deeper than the unpacker's stack


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=64))
def test_unpack_of_garbage_raises_only_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        unpack(data, max_size=48)


@settings(deadline=None, max_examples=200)
@given(canonical_values, st.data())
def test_unpack_of_any_truncation_raises_codec_error(value: Any, data: st.DataObject) -> None:
    encoded = canonical(value)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    with pytest.raises(CodecError):
        unpack(encoded[:cut])


def test_extension_types_are_refused() -> None:
    with pytest.raises(CodecError, match="extension type 5"):
        unpack(msgpack.packb(msgpack.ExtType(5, b"xx")))
