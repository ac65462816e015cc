"""The message envelope and the ack frame (DESIGN.md §3), with validation naming the bad field.

Every frame body is either an envelope ``{v, id, target, action, object, try, last, to, from,
re?}`` or an ack ``{v, ack, error?}``. :func:`parse_frame` tells them apart and checks every
field, so the runtime never touches a half-valid message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.codec import CodecError, nesting, pack, unpack
from protocol.keys import ChipAddress, IdentityError

VERSION = 1
ID_SIZE = 16
TARGETS = frozenset({"tally", "chit", "route", "lift", "relay", "ch", "node"})
_ENVELOPE_KEYS = frozenset({"v", "id", "target", "action", "object", "try", "last", "to", "from"})
_OPTIONAL_KEYS = frozenset({"re"})
MAX_ACTION = 64
MAX_NESTING = 32  # maps and lists in a frame body: a peer's deeper one is malformed
ATTEMPT_ROOM = 32  # bytes ``with_attempt`` adds at most: try and last, each up to 64 bits


class EnvelopeError(ValueError):
    """A frame body that is not a valid envelope or ack.

    ``message_id`` is set when the id could be read, so the receiver can reject that message
    with an error ack rather than only dropping it.
    """

    def __init__(self, message: str, message_id: bytes | None = None) -> None:
        super().__init__(message)
        self.message_id = message_id


@dataclass(slots=True)
class Envelope:
    id: bytes
    target: str
    action: str
    object: dict
    to: ChipAddress
    from_: ChipAddress
    try_: int = 1
    last: int = 0
    re: bytes | None = None

    def to_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": VERSION,
            "id": self.id,
            "target": self.target,
            "action": self.action,
            "object": self.object,
            "try": self.try_,
            "last": self.last,
            "to": self.to.to_map(),
            "from": self.from_.to_map(),
        }
        if self.re is not None:
            out["re"] = self.re
        return out

    def encode(self) -> bytes:
        return pack(self.to_map())


@dataclass(slots=True)
class Ack:
    ack: bytes
    error: dict | None = field(default=None)

    def encode(self) -> bytes:
        out: dict[str, Any] = {"v": VERSION, "ack": self.ack}
        if self.error is not None:
            out["error"] = self.error
        return pack(out)


_ATTEMPT = ("try", "last")
_TRY, _LAST = pack("try"), pack("last")


def attempt_prefix(envelope: dict[str, Any]) -> bytes:
    """An envelope map encoded up to its ``try`` and ``last``, which go last: each attempt
    appends its own (:func:`with_attempt`) instead of encoding the whole message again."""
    rest = {key: value for key, value in envelope.items() if key not in _ATTEMPT}
    if len(rest) + len(_ATTEMPT) > 15:
        raise CodecError("an envelope has at most 15 fields")
    body = pack(rest)  # a fixmap: one header byte, which now counts try and last too
    return bytes([0x80 | (len(rest) + len(_ATTEMPT))]) + body[1:]


def with_attempt(prefix: bytes, tries: int, last: int) -> bytes:
    """The frame body of one attempt: :func:`attempt_prefix`'s bytes, ``try``, ``last``."""
    return prefix + _TRY + pack(tries) + _LAST + pack(last)


def unsendable(prefix: bytes, envelope: dict[str, Any], max_frame: int) -> str | None:
    """Why a peer with our limits would refuse this message as malformed (so it must not be
    queued: it would be sent again and again), or None. ``prefix``: its ``attempt_prefix``."""
    size = len(prefix) + ATTEMPT_ROOM
    if size > max_frame:
        return f"it would be a frame of up to {size} bytes, over max_frame ({max_frame})"
    if nesting(envelope) > MAX_NESTING:
        return f"it nests maps and lists deeper than {MAX_NESTING} levels"
    return None


MAX_ERROR_MESSAGE = 2000  # characters of an error ack's message: one that echoes a value is cut
MAX_ERROR_CODE = 64  # characters of an error ack's code (ours are a word or two)


def _cut(text: str, most: int) -> str:
    return text if len(text) <= most else text[:most - 3] + "..."


def ack_frame(message_id: bytes, code: str | None = None, message: str = "") -> bytes:
    """Encoded ack body; with ``code`` it rejects the message for good."""
    error = {"code": code, "message": _cut(message, MAX_ERROR_MESSAGE)} if code is not None \
        else None
    return Ack(message_id, error).encode()


def parse_frame(body: bytes) -> Envelope | Ack:
    """Decode and validate one frame body. Raises ``CodecError`` or ``EnvelopeError``."""
    value = unpack(body, max_nesting=MAX_NESTING)
    if not isinstance(value, dict):
        raise EnvelopeError(f"frame body is a {type(value).__name__}, expected a map")
    version = value.get("v")
    if type(version) is not int or version != VERSION:  # not True, not 1.0
        # An envelope with a readable id is rejected with an error ack, not dropped; an ack
        # is never acked.
        message_id = None if "ack" in value else value.get("id")
        if not isinstance(message_id, bytes) or len(message_id) != ID_SIZE:
            message_id = None
        raise EnvelopeError(f"field 'v' must be {VERSION}, got {version!r}", message_id)
    if "ack" in value:
        return _parse_ack(value)
    return _parse_envelope(value)


def _parse_ack(value: dict) -> Ack:
    if set(value) - {"v", "ack", "error"}:
        raise EnvelopeError(f"unknown ack fields {sorted(set(value) - {'v', 'ack', 'error'})}")
    ack = value["ack"]
    if not isinstance(ack, bytes) or len(ack) != ID_SIZE:
        raise EnvelopeError("field 'ack' must be 16 bytes")
    error = value.get("error")
    if error is not None and not (
        isinstance(error, dict)
        and isinstance(error.get("code"), str)
        and isinstance(error.get("message"), str)
    ):
        raise EnvelopeError("field 'error' must be a map with text 'code' and 'message'")
    if error is not None:  # as a peer's refusal of ours is kept (its row, the log, a tally's
        # error), cut as ours are: a frame's worth of either was kept whole, key and all
        error = {"code": _cut(error["code"], MAX_ERROR_CODE),
                 "message": _cut(error["message"], MAX_ERROR_MESSAGE)}
    return Ack(ack, error)


def _parse_envelope(value: dict) -> Envelope:
    message_id = value.get("id")
    if not isinstance(message_id, bytes) or len(message_id) != ID_SIZE:
        raise EnvelopeError("field 'id' must be 16 bytes")

    def bad(text: str) -> EnvelopeError:
        return EnvelopeError(text, message_id)

    missing = _ENVELOPE_KEYS - set(value)
    if missing:
        raise bad(f"missing field(s) {sorted(missing)}")
    unknown = set(value) - _ENVELOPE_KEYS - _OPTIONAL_KEYS
    if unknown:
        raise bad(f"unknown field(s) {sorted(unknown)}")
    target = value["target"]
    if not isinstance(target, str) or target not in TARGETS:
        raise bad(f"field 'target' must be one of {sorted(TARGETS)}, got {target!r}")
    action = value["action"]
    if not isinstance(action, str) or not 0 < len(action) <= MAX_ACTION:
        raise bad("field 'action' must be non-empty text")
    if not isinstance(value["object"], dict):
        raise bad("field 'object' must be a map")
    attempt = value["try"]
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise bad("field 'try' must be an integer >= 1")
    last = value["last"]
    if not isinstance(last, int) or isinstance(last, bool) or last < 0:
        raise bad("field 'last' must be a non-negative integer (ms since the epoch)")
    addresses = {}
    for name in ("to", "from"):
        try:
            addresses[name] = ChipAddress.from_map(value[name])
        except IdentityError as exc:
            raise bad(f"field '{name}': {exc}") from exc
    re_id = value.get("re")
    if re_id is not None and (not isinstance(re_id, bytes) or len(re_id) != ID_SIZE):
        raise bad("field 're' must be 16 bytes")
    return Envelope(
        id=message_id,
        target=target,
        action=action,
        object=value["object"],
        to=addresses["to"],
        from_=addresses["from"],
        try_=attempt,
        last=last,
        re=re_id,
    )


__all__ = [
    "Ack",
    "CodecError",
    "Envelope",
    "EnvelopeError",
    "ack_frame",
    "parse_frame",
]
