"""A clearing-house process's evidence as a hash chain: appending an entry, and checking a
chain of them (sans-IO).

Each process is its own chain: ``seq`` from 1, ``prev_hash`` of seq 1 is ``ZERO_HASH`` (64
zeros), ``entry_hash`` = SHA-256 of the canonical map of ``HASHED_FIELDS`` (DESIGN's list plus
``payload_type``, so no stored field can change undetected). An entry's time never precedes
its predecessor's (:func:`next_entry` clamps a clock that went back). The clearing house
appends with :func:`next_entry`; a process owner audits what it read with
:func:`verify_chain`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from protocol.clearing import HEX64, Entry, LogRequest
from protocol.codec import CodecError, digest

ZERO_HASH = "0" * 64
HASHED_FIELDS = (
    "pid", "seq", "prev_hash", "timestamp", "client_id", "header", "payload_sha256", "payload_type",
)  # fmt: skip


class ChainError(ValueError):
    """The first entry of a chain that does not verify, and why."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"entry {index}: {reason}")
        self.index = index
        self.reason = reason


_ENTRY_TYPES: dict[str, type | tuple[type, ...]] = {
    "pid": str,
    "seq": int,
    "prev_hash": str,
    "timestamp": int,
    "client_id": str,
    "header": dict,
    "payload_sha256": str,
    "payload_type": str,
    "payload": (bytes, type(None)),
    "entry_hash": str,
}


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical map of an entry's ``HASHED_FIELDS``."""
    return digest({name: entry[name] for name in HASHED_FIELDS}).hex()


def next_entry(
    prev: Mapping[str, Any] | None, request: LogRequest, *, client_id: str, now_ms: int
) -> Entry:
    """The entry that appends ``request`` after ``prev`` (None: the process's first entry)."""
    if not isinstance(now_ms, int) or now_ms < 0:
        raise ValueError(f"now_ms must be integer ms since the epoch, got {now_ms!r}")
    if prev is None:
        seq, prev_hash, timestamp = 1, ZERO_HASH, now_ms
    elif prev["pid"] != request["pid"]:
        raise ValueError(
            f"the previous entry is from process {prev['pid']!r}, not {request['pid']!r}"
        )
    else:
        seq, prev_hash = prev["seq"] + 1, prev["entry_hash"]
        timestamp = max(now_ms, prev["timestamp"])
    entry: Entry = {
        "pid": request["pid"],
        "seq": seq,
        "prev_hash": prev_hash,
        "timestamp": timestamp,
        "client_id": client_id,
        "header": request["header"],
        "payload_sha256": request["payload_sha256"],
        "payload_type": request["payload_type"],
        "payload": request["payload"],
        "entry_hash": "",
    }
    entry["entry_hash"] = entry_hash(entry)
    return entry


def _entry_problem(entry: object, prev: Mapping[str, Any] | None) -> str | None:
    if not isinstance(entry, Mapping):
        return f"is a {type(entry).__name__}, not a map"
    missing = sorted(_ENTRY_TYPES.keys() - entry.keys())
    unknown = sorted(map(str, entry.keys() - _ENTRY_TYPES.keys()))
    if missing or unknown:
        return f"fields missing {missing}, unexpected {unknown}"
    for name, kind in _ENTRY_TYPES.items():
        value = entry[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{name} is a {type(value).__name__}"
    for name in ("prev_hash", "payload_sha256", "entry_hash"):
        if not HEX64.fullmatch(entry[name]):
            return f"{name} {entry[name][:70]!r} is not 64 lowercase hex digits"
    seq = entry["seq"]
    if prev is None:
        expected_seq, expected_prev = 1, ZERO_HASH
    else:
        if entry["pid"] != prev["pid"]:
            return f"seq {seq}: pid {entry['pid']!r} differs from the chain's {prev['pid']!r}"
        expected_seq, expected_prev = prev["seq"] + 1, prev["entry_hash"]
        if entry["timestamp"] < prev["timestamp"]:
            return f"seq {seq}: timestamp {entry['timestamp']} precedes {prev['timestamp']}"
    if seq != expected_seq:
        return f"seq {seq} where {expected_seq} is due: an entry is missing or out of order"
    if entry["prev_hash"] != expected_prev:
        return f"seq {seq}: prev_hash {entry['prev_hash']} is not the previous hash {expected_prev}"
    payload = entry["payload"]
    if payload is not None and hashlib.sha256(payload).hexdigest() != entry["payload_sha256"]:
        return f"seq {seq}: the payload does not hash to payload_sha256"
    try:
        recomputed = entry_hash(entry)
    except CodecError as exc:
        return f"seq {seq}: cannot be hashed: {exc}"
    if recomputed != entry["entry_hash"]:
        return f"seq {seq}: entry_hash is not {recomputed}, the hash of the entry's fields"
    return None


def verify_chain(
    entries: Sequence[Mapping[str, Any]], prev: Mapping[str, Any] | None = None
) -> None:
    """Check consecutive entries in ascending ``seq``; raise ``ChainError`` at the first bad one.

    ``prev`` is the trusted entry just before ``entries[0]``; None means the chain must start
    at seq 1, so a full audit needs every page of an ascending query. A withheld payload
    (None) passes: its hash is still bound into the chain.
    """
    for index, entry in enumerate(entries):
        problem = _entry_problem(entry, prev)
        if problem is not None:
            raise ChainError(index, problem)
        prev = entry
