"""Relay errors and field validation shared by the relay modules (sans-IO).

Every refusal is a :class:`RelayError` whose text is fit for an ``Ack`` or a
``RequestState`` and whose ``code`` is the stable reason a source relay answers with; a bad
message field is a :class:`MessageError` naming the field, e.g. ``Query.nonce``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import fields
from enum import IntEnum
from typing import Any

SIGNATURE_BYTES = 64


class RelayError(ValueError):
    """Why the relay refuses something; the text is fit for an ``Ack`` or ``RequestState``.

    ``code`` is the stable reason a source relay answers with (the class default, or a more
    precise one given at the raise site).
    """

    code = "BAD_REQUEST"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class MessageError(RelayError):
    """A message field that is missing or malformed; ``field`` names it, e.g. ``Query.nonce``."""

    code = "BAD_QUERY"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class AddressError(RelayError):
    """A view address, view segment or view pattern outside the grammar."""

    code = "BAD_ADDRESS"


class SignatureError(RelayError):
    """The requestor's signature over ``address + nonce`` does not verify."""

    code = "BAD_SIGNATURE"


class AccessDenied(RelayError):
    """No access rule lets this requestor read this view."""

    code = "ACCESS_DENIED"


class ProofError(RelayError):
    """A view whose notarization fails its policy, or that answers some other request."""


class DecryptionError(RelayError):
    """A confidential payload that this key cannot open."""


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def require(where: str, ok: bool, problem: str) -> None:
    if not ok:
        raise MessageError(where, problem)


def is_uuid(value: object) -> bool:
    """Canonical lowercase hyphenated form only, so one request has one spelling."""
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


_NONCE = re.compile(r"[0-9a-f]{32}")


def is_nonce(value: object) -> bool:
    return isinstance(value, str) and _NONCE.fullmatch(value) is not None


_NETWORK = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


def is_network(value: object) -> bool:
    return isinstance(value, str) and _NETWORK.fullmatch(value) is not None


def map_fields(
    where: str, value: object, required: Sequence[str], optional: Sequence[str] = ()
) -> dict[str, Any]:
    """The map's fields, refusing a non-map, unknown fields and missing required ones."""
    if not isinstance(value, Mapping):
        raise MessageError(where, "must be a map")
    allowed = {*required, *optional}
    unknown = sorted(str(key) for key in value if key not in allowed)
    if unknown:
        raise MessageError(f"{where}.{unknown[0]}", "unknown field")
    for key in required:
        if key not in value:
            raise MessageError(f"{where}.{key}", "missing")
    return dict(value)


def plain(value: object) -> Any:
    """Tuples become lists, enums ints and nested messages maps: plain msgpack values."""
    if isinstance(value, IntEnum):
        return int(value)
    if isinstance(value, tuple):
        return [plain(item) for item in value]
    if hasattr(value, "to_map"):
        return value.to_map()
    return value


def as_tuple(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


class Message:
    """``to_map`` for the message dataclasses: every field, in declaration order."""

    def to_map(self) -> dict[str, Any]:
        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]
