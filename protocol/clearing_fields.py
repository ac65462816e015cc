"""The clearing house's request fields and their checks, shared by :mod:`protocol.clearing`
(sans-IO): constants, the reason codes and ``Rejection``, the request and entry shapes, and the
checks of one field each. Every refusal is a ``Rejection`` naming the field it refuses.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Collection
from datetime import date
from enum import StrEnum
from typing import Any, Literal, TypedDict

from protocol.errors import Refusal

RESERVED_PID = "default"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_OWNERS = 64
MAX_BATCH = 256

MAX_PID_LENGTH = 128
MAX_TYPE_LENGTH = 255
INT64_LIMIT = 2**63
_DAY_MS = 86_400_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
HEX64 = re.compile(r"[0-9a-f]{64}")  # every hash, and so every document id
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

Reply = tuple[str, dict[str, Any]]


class Reason(StrEnum):
    """IDS rejection reason codes, sent as text in ``rejection{code}``."""

    NOT_AUTHENTICATED = "NOT_AUTHENTICATED"
    NOT_AUTHORIZED = "NOT_AUTHORIZED"
    NOT_FOUND = "NOT_FOUND"
    BAD_PARAMETERS = "BAD_PARAMETERS"
    MALFORMED_MESSAGE = "MALFORMED_MESSAGE"
    INTERNAL_RECIPIENT_ERROR = "INTERNAL_RECIPIENT_ERROR"
    TOO_MANY_RESULTS = "TOO_MANY_RESULTS"


class Rejection(Refusal):
    """A request the clearing house refuses; ``reply()`` is the answer to send."""

    code: Reason

    def __init__(self, code: Reason, message: str) -> None:
        super().__init__(code, message)

    def reply(self) -> Reply:
        return "rejection", {"code": self.code.value, "message": self.message}


class CreateProcess(TypedDict):
    pid: str
    owners: list[str]


class LogRequest(TypedDict):
    pid: str
    header: dict[str, Any]
    payload: bytes | None
    payload_sha256: str
    payload_type: str


class QueryRequest(TypedDict):
    """The store selects ``date_from <= timestamp <= date_to`` (None: unbounded), orders by
    ``seq`` in ``sort`` order and returns ``size`` entries from offset ``(page - 1) * size``."""

    pid: str
    page: int
    size: int
    sort: Literal["asc", "desc"]
    date_from: int | None
    date_to: int | None


class GetRequest(TypedDict):
    pid: str
    id: str


class Entry(TypedDict):
    """One link of a process's chain, as stored and as returned by ``query``/``get``."""

    pid: str
    seq: int
    prev_hash: str
    timestamp: int
    client_id: str
    header: dict[str, Any]
    payload_sha256: str
    payload_type: str
    payload: bytes | None
    entry_hash: str


# --- one field each ----------------------------------------------------------------------

# A rejection quotes what it refuses, but never more than a few dozen characters of it: quoted
# whole, a value as long as a frame (repr shows a byte of "\x00" as four) made the reply too
# large to send, and the request got TOO_LARGE about our reply instead of what was wrong with it.
_QUOTE = reprlib.Repr()
_QUOTE.maxstring = _QUOTE.maxother = 60
_QUOTE.maxlist = _QUOTE.maxdict = 4
_NAMES_SHOWN = 5


def shown(value: object) -> str:
    """``value`` as a rejection quotes it: its repr, cut short (never built in full)."""
    return _QUOTE.repr(value)


def field_names(names: Collection[str]) -> str:
    """Field names as a rejection lists them: the first few, each cut short."""
    listed = sorted(names)
    text = ", ".join(name if len(name) <= 40 else name[:37] + "..."
                     for name in listed[:_NAMES_SHOWN])
    more = len(listed) - _NAMES_SHOWN
    return text + (f" and {more} more" if more > 0 else "")


def check_fields(obj: object, action: str, required: set[str], optional: set[str]
                 ) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise Rejection(
            Reason.MALFORMED_MESSAGE,
            f"{action}: the object must be a map, not {type(obj).__name__}",
        )
    missing = required - obj.keys()
    if missing:
        raise Rejection(
            Reason.MALFORMED_MESSAGE, f"{action}: missing field(s) {field_names(missing)}"
        )
    unknown = obj.keys() - required - optional
    if unknown:
        raise Rejection(
            Reason.MALFORMED_MESSAGE,
            f"{action}: unknown field(s) {field_names(unknown)}",
        )
    return obj


def malformed_type(where: str, expected: str, value: object) -> Rejection:
    return Rejection(
        Reason.MALFORMED_MESSAGE, f"{where}: must be {expected}, not {type(value).__name__}"
    )


def check_pid(value: object, action: str) -> str:
    where = f"{action}.pid"
    if not isinstance(value, str):
        raise malformed_type(where, "text", value)
    if not value:
        raise Rejection(Reason.BAD_PARAMETERS, f"{where}: must not be empty")
    if value == RESERVED_PID:
        raise Rejection(Reason.BAD_PARAMETERS, f"{where}: {RESERVED_PID!r} is reserved")
    if len(value) > MAX_PID_LENGTH or not value.isprintable() or " " in value:
        raise Rejection(
            Reason.BAD_PARAMETERS,
            f"{where}: {value[:40]!r} is not 1 to {MAX_PID_LENGTH} printable non-space characters",
        )
    return value


def check_hex64(value: object, where: str, what: str) -> str:
    if not isinstance(value, str):
        raise malformed_type(where, "text", value)
    if not HEX64.fullmatch(value):
        raise Rejection(Reason.BAD_PARAMETERS, f"{where}: {value[:70]!r} is not {what}")
    return value


def check_count(value: object, where: str, default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise malformed_type(where, "an integer", value)
    if value < 1:
        raise Rejection(Reason.BAD_PARAMETERS, f"{where}: {value} is below 1")
    if value >= INT64_LIMIT:  # msgpack carries no more: it failed as the message was encoded
        raise Rejection(Reason.BAD_PARAMETERS, f"{where}: {value} is above 2^63-1")
    return value


def date_ms(value: object, where: str, *, end_of_day: bool) -> int | None:
    """An inclusive bound in ms: integer ms as given, or a UTC day's first (last) ms."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < INT64_LIMIT:
            raise Rejection(Reason.BAD_PARAMETERS, f"{where}: {value} ms is outside 0..2^63-1")
        return value
    if isinstance(value, str) and _DAY.fullmatch(value):
        try:
            day = date.fromisoformat(value)
        except ValueError as exc:
            raise Rejection(Reason.BAD_PARAMETERS, f"{where}: {value!r}: {exc}") from exc
        start = (day.toordinal() - _EPOCH_ORDINAL) * _DAY_MS
        if start < 0:
            raise Rejection(Reason.BAD_PARAMETERS, f"{where}: {value!r} is before 1970-01-01")
        return start + _DAY_MS - 1 if end_of_day else start
    raise Rejection(
        Reason.BAD_PARAMETERS,
        f"{where}: {shown(value)} is neither integer ms since the epoch nor a YYYY-MM-DD day",
    )
