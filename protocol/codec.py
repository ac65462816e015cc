"""Canonical msgpack: the one encoding that digests and signatures are computed over.

Canonical means map keys sorted (by their encoded bytes), text as msgpack str, binary as
msgpack bin, integers only. Floats are refused anywhere in signed data, so two
implementations can never disagree about a rounding.
"""

from __future__ import annotations

import gc
import hashlib
import threading
from typing import Any

import msgpack


class CodecError(ValueError):
    """A value that cannot be encoded canonically, or bytes that are not valid msgpack."""


Path = tuple[object, ...]  # the keys and indexes from the root, for error messages


def _where(path: Path) -> str:
    return "$" + "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path)


def _canonicalize(value: Any, path: Path) -> Any:
    kind = type(value)
    if kind is str or kind is bytes or kind is bool or value is None:
        return value
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise CodecError(f"{_where(path)}: map key {key!r} is not text")
        # UTF-8 keeps code point order, so sorting the text sorts the encoded keys
        return {key: _canonicalize(value[key], (*path, key)) for key in sorted(value)}
    if isinstance(value, list | tuple):
        return [_canonicalize(item, (*path, i)) for i, item in enumerate(value)]
    if isinstance(value, str | bytes):
        return value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise CodecError(f"{_where(path)}: integer {value} does not fit in 64 bits")
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise CodecError(f"{_where(path)}: {kind.__name__} is not allowed in canonical data")


class _Unusual(Exception):
    """A value the fast walk does not take: the careful one says what is wrong, and where."""


def _sorted_plain(value: Any) -> Any:
    """The fast walk of :func:`canonical` over plain maps, lists, text, bytes and integers
    (what digests are nearly always taken of): no path kept for an error message."""
    kind = type(value)
    if kind is dict:
        out = {}
        for key in sorted(value):  # keys of mixed types raise TypeError: the careful walk
            if type(key) is not str:
                raise _Unusual
            out[key] = _sorted_plain(value[key])
        return out
    if kind is str or kind is bytes or kind is bool or value is None:
        return value
    if kind is int:
        if not -(2**63) <= value < 2**64:
            raise _Unusual
        return value
    if kind is list or kind is tuple:
        return [_sorted_plain(item) for item in value]
    raise _Unusual


def canonical(value: Any) -> bytes:
    """Encode ``value`` as canonical msgpack (sorted keys, no floats). Data nested deeper
    than msgpack packs (or Python recurses) is a ``CodecError``: it came from a peer."""
    try:
        plain = _sorted_plain(value)
    except (_Unusual, TypeError, RecursionError):
        try:
            plain = _canonicalize(value, ())
        except RecursionError:
            raise CodecError("nested too deeply to encode") from None
    try:
        return _packer().pack(plain)
    except ValueError as exc:  # msgpack's nesting limit
        raise CodecError(f"cannot encode: {exc}") from exc


def digest(value: Any) -> bytes:
    """SHA-256 of the canonical encoding: the identity of a signed object."""
    return hashlib.sha256(canonical(value)).digest()


def pack(value: Any) -> bytes:
    """Encode a message body (not necessarily canonical: key order as given)."""
    try:
        return _packer().pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode message: {exc}") from exc


_PER_THREAD = threading.local()


def _packer() -> msgpack.Packer:
    """This thread's packer. ``msgpack.packb`` makes a packer, with a 256 KiB buffer, for
    every call: most of the cost of packing a small value (0.5 of 0.55 µs), and packing is
    done hundreds of times a lift. A packer is not thread-safe; it empties itself after each
    value, and after a value it failed to pack."""
    try:
        return _PER_THREAD.packer
    except AttributeError:
        packer = _PER_THREAD.packer = msgpack.Packer(use_bin_type=True)
        return packer


def _text_keys_only(value: dict) -> dict:
    # strict_map_key admits bin keys as well as str ones; our maps have text keys only.
    for key in value:
        if type(key) is not str:
            raise CodecError(f"map key {key!r} is not text")
    return value


def _no_extensions(code: int, data: bytes) -> Any:
    raise CodecError(f"msgpack extension type {code} is not allowed")


def unpack(data: bytes, *, max_size: int | None = None, max_nesting: int | None = None) -> Any:
    """Decode one msgpack value, refusing trailing bytes, raw strings, non-text map keys,
    oversize data and (with ``max_nesting``) maps and lists nested deeper than that."""
    if max_size is not None and len(data) > max_size:
        raise CodecError(f"message of {len(data)} bytes exceeds the limit of {max_size}")
    collecting = gc.isenabled()
    if collecting:  # decoding makes a tree, no cycle to collect: a megabyte of empty lists
        gc.disable()  # decodes ~5x faster without the collector scanning them as they come
    try:
        value = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True, object_hook=_text_keys_only,
            ext_hook=_no_extensions,
        )
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise CodecError(f"malformed msgpack: {exc}") from exc
    except (ValueError, TypeError) as exc:  # truncated data, bad UTF-8, non-text keys
        raise CodecError(f"malformed msgpack: {exc}") from exc
    finally:
        if collecting:
            gc.enable()
    if max_nesting is not None and nesting(value) > max_nesting:
        raise CodecError(f"malformed msgpack: maps and lists nested deeper than {max_nesting}")
    return value


def nesting(value: Any) -> int:
    """How deep maps and lists nest in ``value`` (0 for a scalar), walked a level at a time
    rather than recursively: msgpack decodes ~1,000 levels, deeper than Python code that
    walks them (or writes them in an error message) can recurse."""
    depth = 0
    level = [value] if type(value) in _NESTS else []
    while level:
        depth += 1
        deeper = []
        for item in level:
            for inner in item.values() if type(item) is dict else item:
                if type(inner) in _NESTS:
                    deeper.append(inner)
        level = deeper
    return depth


_NESTS = frozenset({dict, list, tuple})
