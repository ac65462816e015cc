"""Tally, chit and lift ids as RPC parameters: whole, or by their start as ``-H`` shows them
(``cdfd881a…``), so that a person can copy what a table shows. A start names the one id of
the user's (a lift: of this node's) that begins so. It is at least as long as ``-H`` shows
(8 characters): a shorter one mistyped could name another of the user's tallies and move
credit over it."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agentd.rpc import NOT_FOUND, RpcError, invalid_params
from store import id_starts

if TYPE_CHECKING:
    from agentd.services.credit.ledger import CreditLedger
    from store.db import Database

UUID_SHAPE = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
SHOWN = 8  # the characters of an id -H shows (agentd.human.CUT)
_HEX, _NOT_HEX = re.compile("[0-9a-f]"), re.compile("[^0-9a-f-]")


def tally_id(ledger: CreditLedger, cuid: str, value: Any) -> str:
    """A tally of ``cuid``'s (one it holds, or whose ticket it presented); else, one another
    user of this node holds, which the caller then refuses naming that user, as it does a
    whole id."""
    def starting(start: str) -> list[str]:
        return _of_user(ledger, id_starts.tallies, cuid, start) or ledger.runtime.db.reading(
            lambda conn: id_starts.any_users_tallies(conn, start))

    return _resolved(value, "tally", starting, f"user {cuid} holds", "UNKNOWN_TALLY")


def chit_id(ledger: CreditLedger, cuid: str, value: Any) -> str:
    """A chit on one of ``cuid``'s tallies."""
    return _resolved(value, "chit", lambda start: _of_user(ledger, id_starts.chits, cuid,
                                                           start),
                     f"user {cuid} holds", "UNKNOWN_CHIT")


def lift_id(db: Database, value: Any) -> str:
    """A lift this node takes part in or refereed."""
    return _resolved(value, "lift", lambda start: db.reading(
        lambda conn: id_starts.lifts(conn, start)), "this node knows", "UNKNOWN_LIFT")


def _of_user(ledger: CreditLedger, ids: Callable[..., list[str]], cuid: str, start: str
             ) -> list[str]:
    ledger.known_user(cuid)  # an unknown user is UNKNOWN_USER, as with a whole id
    return ledger.runtime.db.reading(lambda conn: ids(conn, cuid, start))


def _resolved(value: Any, name: str, starting: Callable[[str], list[str]], holder: str,
              unknown: str) -> str:
    """``value`` as a whole id: itself, or the one id ``starting`` finds (it gives at most
    two) when it is a start; ``holder`` says whose ids they are (``user alice holds``)."""
    start = _start(value)
    if start is None:
        raise invalid_params(f"{name} must be a uuid like 3f2a5b1c-9d4e-4f7a-8b6c-1d2e3f4a5b6c,"
                             f" or its start as -H shows it ({SHOWN} characters or more: "
                             f"3f2a5b1c…), not {value!r}")
    if len(start) == len(UUID_SHAPE):
        return start
    found = starting(start)
    if len(found) == 1:
        return found[0]
    if found:
        raise invalid_params(f"{name} {start}… is the start of {found[0]} and {found[1]} (and "
                             "maybe more): give more of it, or the whole id")
    raise RpcError(NOT_FOUND, f"{holder} no {name} whose id starts {start} (the whole id "
                   "is a uuid like 3f2a5b1c-9d4e-4f7a-8b6c-1d2e3f4a5b6c)", unknown)


def _start(value: Any) -> str | None:
    """``value`` as an id or its start, in the ids' own lower case and without the ``…`` (or
    ``...``) of -H; None when it is neither."""
    if not isinstance(value, str):
        return None
    text = value.lower().removesuffix("…").removesuffix("...")
    if len(text) < SHOWN or _NOT_HEX.search(text) or not UUID_SHAPE.startswith(
            _HEX.sub("x", text)):
        return None
    return text
