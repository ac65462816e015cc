"""Questions to a payee's node (``route/ask`` → ``route/hops``), for the route service.

A payment's search asks the payee's node for the payee's *last hops* (``protocol.route_last``),
and the answer also settles whether that node hosts the payee at all: it refuses an ask for a
user it does not host (``UNKNOWN_USER``), and the search ends there with ``UNKNOWN_PAYEE``
instead of flooding the network for a user nobody hosts and then waiting out ``ASK_S``. Any
other refusal ends the wait for the hops at once. Only a node whose address we know is asked
(a route message goes nowhere else: a payee found through tallies teaches it once a payment
to it is good, ``RouteService.decided``); a payee on our own node is looked up here.
"""

from __future__ import annotations

import contextlib
import uuid as uuidlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from agentd.runtime.context import Reject, Tx
from protocol import route
from protocol.keys import ChipAddress

if TYPE_CHECKING:
    import sqlite3

    from agentd.runtime.context import Runtime
    from agentd.services.credit.ledger import CreditLedger

ASK_S = 2.0  # at most this long for the payee's node to name its last hops, then search without
UNKNOWN = "UNKNOWN_USER"  # what a node refuses an ask for a user it does not host with


@dataclass
class Ask:
    """One question while a search waits on it: the last hops named, or the code it was
    refused with. ``sent`` is False when the payee's node could not be asked. ``search``:
    a search to cancel as soon as the node says it has no such user (``route.find`` asks
    beside its search)."""

    find: ChipAddress
    units: int
    sent: bool = False
    arrived: trio.Event = field(default_factory=trio.Event)
    hops: list[route.LastHop] = field(default_factory=list)
    refused: str | None = None
    search: trio.CancelScope | None = None

    @property
    def unknown(self) -> bool:
        """Whether the payee's node said it has no such user."""
        return self.refused == UNKNOWN


def unknown_payee(find: ChipAddress) -> Reject:
    return Reject("UNKNOWN_PAYEE", f"node {find.agent} has no user {find.cuid!r} (its "
                  "users.list shows the users it hosts)")


class PayeeAsks:
    """The asks in flight of one node's searches. ``into(conn, cuid)``: our user's hops into
    it, with what each partner can pay it now (``RouteService.into``)."""

    def __init__(self, runtime: Runtime, ledger: CreditLedger,
                 into: Callable[[sqlite3.Connection, str], list[route.Candidate]]) -> None:
        self.runtime = runtime
        self.ledger = ledger
        self._into = into
        self._asks: dict[str, Ask] = {}

    def can_ask(self, find: ChipAddress) -> bool:
        """Whether ``find``'s node can be asked about its user: ours, or one whose address we
        know."""
        node = self.runtime
        return find.agent == node.agent_id or find.host is not None or node.address_of(
            find.agent) is not None

    def check_ours(self, find: ChipAddress) -> None:
        """``UNKNOWN_PAYEE`` when ``find`` names a user of our own node that it does not
        host."""
        if find.agent == self.runtime.agent_id and not self.runtime.db.reading(
                lambda conn: self.ledger.known(conn, find.cuid)):
            raise unknown_payee(find)

    async def last_hops(self, cuid: str, find: ChipAddress, units: int, salt: bytes
                        ) -> list[route.LastHop]:
        """The payee's last hops that can carry ``units``, from its node (ours: read here),
        or none when its node cannot be asked, refuses for another reason than the payee,
        or does not answer within ``ASK_S``. ``UNKNOWN_PAYEE`` as soon as its node says it
        hosts no such user."""
        node = self.runtime
        if find.agent == node.agent_id:
            self.check_ours(find)
            return node.db.reading(
                lambda conn: route.last_hops(salt, self._into(conn, find.cuid), units))
        with self.asking(cuid, find, units, salt) as ask:
            if ask.sent:
                with trio.move_on_after(ASK_S):
                    await ask.arrived.wait()
        if ask.unknown:
            raise unknown_payee(find)
        return ask.hops

    @contextlib.contextmanager
    def asking(self, cuid: str, find: ChipAddress, units: int, salt: bytes
               ) -> Iterator[Ask]:
        """Our user ``cuid``'s question to the node of ``find`` (another node's user), open
        while the block runs; not sent (``sent`` False) when no address is known for it.
        A node we know is asked at the address we know, not at one ``find`` names: the pump
        dials a peer at the address its first queued message names, so a mistyped port in
        ``find`` would hold up everything we send that node (a payment to its users) until
        the ask expired."""
        ask, query = Ask(find, units), str(uuidlib.uuid4())
        if find.agent == self.runtime.agent_id or not self.can_ask(find):
            yield ask
            return
        to = find
        if self.runtime.address_of(find.agent) is not None:
            to = ChipAddress(agent=find.agent, cuid=find.cuid)
        else:  # the user gave where it listens, perhaps anew: not judged by an earlier dial
            self.runtime.redial(find.agent)
        self._asks[query] = ask
        try:
            self.runtime.transact_ephemeral(lambda tx: self.ledger.emit(tx, [route.ask(
                query=query, kind="linear", find=to, units=units, salt=salt,
                payor_cuid=cuid)]))
            ask.sent = True
            yield ask
        finally:
            self._asks.pop(query, None)

    def refused(self, tx: Tx, query: str, code: str) -> None:
        """The payee's node refused our ask: the search waiting on it goes on at once,
        without last hops, or (``UNKNOWN_USER``) ends."""
        ask = self._asks.get(query)
        if ask is not None:
            tx.after_commit(lambda: _arrive(ask, refused=code))

    def answered(self, tx: Tx, obj: Any, sender: ChipAddress) -> None:
        """The payee's node's answer to our ask (``route/hops``): taken only from the payee
        asked; a late one (the search went on without it) is dropped."""
        query = obj.get("query") if isinstance(obj, dict) else None
        if not isinstance(query, str):
            raise Reject("BAD_FIELD", "route hops names its ask (a uuid)")
        ask = self._asks.get(query)
        if ask is None:
            return
        if (sender.agent, sender.cuid) != (ask.find.agent, ask.find.cuid):
            raise Reject("NOT_ASKED", "route hops from a user this ask was not sent to")
        hops = route.read_hops(obj, ask.units)
        tx.after_commit(lambda: _arrive(ask, hops=hops))


def _arrive(ask: Ask, *, hops: Sequence[route.LastHop] = (), refused: str | None = None
            ) -> None:
    """The first answer to an ask counts; a later one changes nothing."""
    if ask.arrived.is_set():
        return
    ask.hops.extend(hops)
    ask.refused = refused
    ask.arrived.set()
    if ask.unknown and ask.search is not None:
        ask.search.cancel()
