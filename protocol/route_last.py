"""Last hops: the hops into a search's ``find`` that its originator knows before it searches
(sans-IO).

For a circle they are the payor's own; for a payment the payee's node names them when asked
(``route/ask`` → ``route/hops``). Every query of the search carries them as digests salted
per search, so a node whose partner is one answers ``good`` through it at once and the
originator completes the route (:class:`protocol.route.Search`): a round goes one hop less
far. The payee's node names neither the partners (only digests) nor how much more than the
units they could carry, and answers over the channel the ask came by.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .keys import ChipAddress
from .messages import Send
from .route_fields import (
    DIGEST_BYTES,
    MAX_LAST,
    MAX_UNITS,
    SALT_BYTES,
    Candidate,
    Refusal,
    check_digests,
    check_integer,
    check_kind,
    check_uuid,
    user_key,
)


@dataclass(frozen=True)
class LastHop:
    """A hop into ``find`` that the originator knows already: the user :func:`last_digest`
    names pays ``find`` over ``tally``, which can carry ``capacity``. Queries and the payee's
    node name that user only by the salted digest, so the nodes a search reaches (and the
    payor) learn no more than which of their own partners it is."""

    digest: bytes
    tally: str
    capacity: int


def last_digest(salt: bytes, user: ChipAddress | dict[str, Any]) -> bytes:
    """How a search names a last-hop user: salted per search, so no two searches match."""
    cuid, agent = user_key(user)
    return hashlib.sha256(salt + f"\n{cuid}\n{agent}".encode()).digest()[:DIGEST_BYTES]


def last_hops(salt: bytes, into: Iterable[Candidate], units: int) -> list[LastHop]:
    """A user's hops into it (each ``Candidate``'s capacity from :func:`receive_capacity`)
    as last hops of a search for ``units``: those that can carry them, best first, at most
    :data:`MAX_LAST`."""
    fit = sorted((cand for cand in into if cand.capacity >= units),
                 key=lambda cand: (-cand.capacity, cand.tally))[:MAX_LAST]
    return [LastHop(last_digest(salt, cand.partner), cand.tally, cand.capacity) for cand in fit]


def ask(*, query: str, kind: str, find: ChipAddress, units: int, salt: bytes,
        payor_cuid: str) -> Send:
    """The payor's question to ``find``'s node: which of its user's partners can pay it
    ``units`` now, named by digests salted with ``salt`` (answered by :func:`answer_ask`)."""
    obj = {"query": query, "kind": kind, "units": units, "salt": salt}
    check_ask(obj)
    return Send(find, "route", "ask", obj, payor_cuid)


def check_ask(obj: Any) -> None:
    if not isinstance(obj, dict) or set(obj) != {"query", "kind", "units", "salt"}:
        raise Refusal("bad_field", "a route ask has exactly the fields kind, query, salt, units")
    check_uuid(obj["query"], "ask.query")
    if check_kind(obj["kind"]) != "linear":
        raise Refusal("bad_field", "only a payment's payee is asked for its last hops")
    check_integer(obj["units"], "ask.units", 1, MAX_UNITS)
    check_digests(obj["salt"], [], "ask")


def answer_ask(obj: Any, *, here: ChipAddress, sender: ChipAddress,
               into: Iterable[Candidate]) -> Send:
    """The payee's node's answer: ``{query, last: [{digest, tally}]}`` for the hops ``into``
    its user that can carry ``units``, best first. It names neither the partners (only
    salted digests) nor how much more than ``units`` they could carry. The answer goes to
    the asking user over the channel the ask came by, never to an address it names."""
    check_ask(obj)
    hops = last_hops(obj["salt"], into, obj["units"])
    return Send(ChipAddress(agent=sender.agent, cuid=sender.cuid), "route", "hops",
                {"query": obj["query"],
                 "last": [{"digest": hop.digest, "tally": hop.tally} for hop in hops]},
                here.cuid)


def read_hops(obj: Any, units: int) -> list[LastHop]:
    """The last hops in a payee's node's answer, each good for ``units`` (all it says)."""
    if not isinstance(obj, dict) or set(obj) != {"query", "last"}:
        raise Refusal("bad_field", "route hops has exactly the fields last, query")
    last = obj["last"]
    if not isinstance(last, list) or not all(
            isinstance(hop, dict) and set(hop) == {"digest", "tally"} for hop in last):
        raise Refusal("bad_field", "hops.last must be a list of {digest, tally} maps")
    check_digests(bytes(SALT_BYTES), [hop["digest"] for hop in last], "hops")
    for at, hop in enumerate(last):
        check_uuid(hop["tally"], f"hops.last[{at}].tally")
    return [LastHop(hop["digest"], hop["tally"], units) for hop in last]
