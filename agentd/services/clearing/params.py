"""The ``ch.*`` methods' params, checked before anything is sent: a mistyped one is invalid
params naming it and its value, not a refusal a round trip later (or, with the clearing house
down, a retry and a wait)."""

from __future__ import annotations

from typing import Any

from agentd.rpc import invalid_params
from protocol import evidence as ev
from protocol.clearing_fields import Rejection, check_count, date_ms
from protocol.clearing_fields import check_pid as house_checks_pid
from protocol.codec import CodecError, canonical


def log_object(pid: object, payload: Any, mode: object = "full", header: object = None,
               payload_type: object = None) -> dict[str, Any]:
    """The ``log`` request for ``ch.log``'s params; ``invalid_params`` names what is bad."""
    if not isinstance(pid, str):
        raise invalid_params("pid must be text")
    check_pid(pid)
    if not isinstance(mode, str):
        raise invalid_params("mode must be full, header or hash")
    if header is not None and not isinstance(header, dict):
        raise invalid_params("header must be an object")
    if payload_type is not None and not isinstance(payload_type, str):
        raise invalid_params("payload_type must be text")
    if payload_type == "":  # it was taken as the default, unsaid
        raise invalid_params("payload_type is empty: leave it out for the default, or "
                             "give a media type (text/plain, application/json, ...)")
    if header is not None:
        try:
            canonical(header)
        except CodecError as exc:  # the house refused it, a round trip later
            raise invalid_params("header: " + _no_floats(exc, HEADER_TEXT)) from exc
    try:
        return ev.log_object(pid, payload, mode=mode, header=header,
                             payload_type=payload_type)
    except CodecError as exc:
        raise invalid_params("payload: " + _no_floats(exc, PAYLOAD_TEXT)) from exc
    except ValueError as exc:
        raise invalid_params(str(exc)) from exc


PAYLOAD_TEXT = """payload='"3.14"'"""  # a fraction as text, as ch.log's payload
HEADER_TEXT = """header='{"rate": "3.14"}'"""  # ... and in its header


def _no_floats(exc: CodecError, example: str) -> str:
    """A value JSON gave as a fraction, which signed data cannot hold, said with what to write
    instead (``$`` alone, where the whole value was one, told a person nothing)."""
    text = str(exc).removeprefix("$: ").removeprefix("$.")
    if "float" not in text:
        return text
    return (f"{text}: a number with a fraction cannot be logged (signed data holds integers "
            f"only): give it as text, in quotes (on the command line, {example})")


def check_pid(pid: str) -> None:
    """A pid no clearing house takes (empty, ``default``, too long, with spaces) is invalid
    params before anything is sent: sent, it waited for the clearing house's refusal, 10 s
    and a retry if the house was down."""
    try:
        house_checks_pid(pid, "ch")
    except Rejection as exc:
        raise invalid_params(exc.message.removeprefix("ch.")) from exc


def check_query(page: int | None, size: int | None, sort: str | None,
                 date_from: int | str | None, date_to: int | str | None) -> None:
    """``ch.query``'s params as the clearing house reads them (``protocol.clearing_fields``),
    checked before they are sent: a mistyped one is invalid params naming it and its value,
    not a refusal after a round trip. The size's maximum stays the clearing house's."""
    if sort not in (None, "asc", "desc"):
        raise invalid_params(f"sort must be asc or desc, not {sort!r}")
    try:
        check_count(page, "page", 1)
        check_count(size, "size", 1)
        start = date_ms(date_from, "date_from", end_of_day=False)
        end = date_ms(date_to, "date_to", end_of_day=True)
    except Rejection as exc:
        raise invalid_params(exc.message) from exc
    if start is not None and end is not None and start > end:
        raise invalid_params(f"date_from {date_from!r} is after date_to {date_to!r}: no entry "
                             "can be in between")
