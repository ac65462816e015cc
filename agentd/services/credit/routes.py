"""Route discovery: paths of credit through the network, found on demand (the ``route`` target).

A node knows only its own tallies (MyCHIPs 1.5: no routing tables). ``route.find`` starts a
search from our user's tallies that can carry ``units`` (``protocol.route.start``); each node a
query reaches offers the tallies of the user it is addressed to (``forward``), which either
answers ``good`` or forwards it, at most ``FAN_OUT`` ways, never back onto the path, until
``DEPTH`` hops or the deadline. Answers go back the way the query came, hop by hop
(``protocol.route.Relay``), so a search only uses channels to tally partners and never makes a
node dial an address someone else named. Every query gets one ``none`` back, counting the
goods sent before it, so the originator's :class:`protocol.route.Search` knows when the
search is exhausted; the call returns then, or at its time budget, with the routes best first.
Capacity is read from the tally columns (limits, balance, what pending lift chits hold) with
one indexed query per user; a query is handled once per (query, user): repeats get ``none``.

Route messages are worthless seconds later and change no state, so the service is ephemeral
(``Service.ephemeral``): they are handled on the read connection with no commit and held by
the pump in memory only. A hop's capacity is checked again, durably, by the lift's promise.
"""

from __future__ import annotations

import os
import uuid as uuidlib
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import trio

from agentd.rpc import invalid_params
from agentd.rpc_types import shown
from agentd.runtime.context import Reject, Service, Tx
from agentd.services.credit.known_routes import Key, KnownRoutes
from agentd.services.credit.ledger import CreditLedger
from agentd.services.credit.params import param_amount, param_cuid
from agentd.services.credit.payee_asks import UNKNOWN, PayeeAsks, unknown_payee
from protocol import route
from protocol import tally as t
from protocol.envelope import Envelope
from protocol.keys import (
    ChipAddress,
    IdentityError,
    format_hostport,
    is_agent_id,
    parse_hostport,
)

if TYPE_CHECKING:
    import sqlite3

    from agentd.runtime.context import Runtime

FAN_OUT = 10  # partners a query goes on to from one user
DEPTH = 10  # hops at most
NEAR = 3  # hops a lift's search tries first
THIN = 2  # a round that stopped short of no more queries than this (a ring, a chain): next DEPTH
SEARCH_S = 2.0  # default time budget of a search
LIFT_SEARCH_S = 10.0  # a lift's: a search exhausted sooner ends sooner; this bounds a busy one
MAX_SEARCH_S = 30.0
DIRECT_S = 2.0  # at least this long for a directed query along the route a lift took last time
SEEN = 10_000  # (query, user) pairs remembered to answer each once, and relays kept
SEEN_PER_PEER = 1_000  # ... of them from one peer's queries: its flood evicts its own first


class RouteService(Service):
    """The ``route`` target and ``route.find``."""

    target = "route"
    actions = frozenset(route.ACTIONS)
    ephemeral = True
    # a payee's node answers an ask for a user it does not host so: the search ends, and
    # the caller is told, which is no cause for a warning
    routine_refusals = frozenset({("ask", UNKNOWN)})

    def __init__(self, node: Runtime, ledger: CreditLedger) -> None:
        super().__init__(node)
        self.ledger = ledger
        self._searches: dict[str, tuple[route.Search, trio.Event]] = {}
        self.asks = PayeeAsks(node, ledger, lambda conn, cuid: self.into(conn, cuid, "linear"))
        # (query, user) -> (the relay carrying its answers back or None, the peer it came from)
        self._seen: OrderedDict[tuple[Any, Any], tuple[route.Relay | None, str]] = OrderedDict()
        self._seen_by: dict[str, OrderedDict[tuple[Any, Any], None]] = {}  # the same, by peer
        self.known = KnownRoutes(longest=DEPTH)  # routes our lifts took, to check again
        node.register_method("route.find", self.rpc_find)

    async def rpc_find(self, cuid: str, find: str, units: int,
                       timeout_s: float = SEARCH_S) -> list[dict]:
        """Paths of tallies from our user to ``find`` (``cuid:agent`` or a full CHIP address)
        that can carry ``units`` now, best (through fewest users on the route of a lift to
        the same payee that went void lately, then largest capacity, then fewest hops)
        first; ``[]``
        when there is none. Not every path: a search reaches each user once, by its first
        way in, so a path with more room through a user reached another way is not listed
        (asking for more ``units``, which the first way cannot carry, looks for it).
        ``UNKNOWN_PAYEE`` when ``find``'s node says it has no such user: it is asked beside
        the search, which its refusal ends.

        The search returns once it is exhausted, or when ``timeout_s`` seconds have passed
        (more than 0 and at most 30; default 2) with the routes found by then."""
        cuid, target = self.ledger.known_user(param_cuid(cuid)), param_find(find)
        if (target.agent, target.cuid) == (self.runtime.agent_id, cuid):
            raise invalid_params("find is the payor itself: lift.clear finds a circle")
        units, timeout_s = param_amount(units, "units"), param_timeout(timeout_s)
        self.asks.check_ours(target)
        ends = trio.current_time() + timeout_s
        routes: list[dict] = []
        with self.asks.asking(cuid, target, units, os.urandom(route.SALT_BYTES)) as ask, \
                trio.CancelScope() as search:
            ask.search = search  # ended by the node's word that it has no such user
            routes = await self.search(cuid, target, units, route.KINDS[0], timeout_s)
            if not routes and ask.sent:  # whether the payee's node says why, in the time left
                with trio.move_on_after(max(ends - trio.current_time(), 0)):
                    await ask.arrived.wait()
        if ask.unknown:
            raise unknown_payee(target)
        return routes

    async def search(self, cuid: str, find: ChipAddress, units: int, kind: str,
                     timeout_s: float = SEARCH_S) -> list[dict]:
        """Every route the network offers within ``DEPTH`` hops (each ``{path, hops,
        capacity}``), once the search is exhausted or its time is up."""
        routes, _ = await self._search(cuid, find, units, kind, DEPTH, timeout_s, first=False)
        return routes

    async def search_near_first(self, cuid: str, find: ChipAddress, units: int, kind: str,
                                *, first: bool) -> tuple[list[dict], bool]:
        """A lift's search: its routes, and whether it was exhausted (False: its time ran
        out first). The route a good lift of this user took to the same payee (or
        round the same circle) is checked again first, with a directed query
        (:meth:`_directed`): one message a hop where a flood costs several. When there is
        none, or it cannot carry ``units`` now, the search floods in rounds
        (:meth:`_rounds`). With ``first``, a round ends at its first route (a lift needs
        one) through no suspect (a user on the route of a void lift to the same payee).
        ``LIFT_SEARCH_S`` bounds it all. Which routes are remembered, and for how long, and
        the suspects: :mod:`agentd.services.credit.known_routes` (the lift service tells it
        how lifts end).
        ``UNKNOWN_PAYEE`` when the payee's node says it has no such user."""
        ends = trio.current_time() + LIFT_SEARCH_S
        routes = await self._directed((cuid, kind, route.user_key(find)), find, units,
                                      first=first, ends=ends)
        if routes:
            return routes, True
        return await self._rounds(cuid, find, units, kind, first=first, ends=ends)

    async def no_route(self, cuid: str, find: ChipAddress, units: int, *,
                       exhausted: bool) -> Reject:
        """``NO_ROUTE`` for a payment whose search found no route, saying what does fit:
        once the search was exhausted, a second one, as ``route.find units=1`` makes, finds
        routes with any room, and the refusal names the most one of them can carry (a
        route's own capacity, which route.find shows anyone who asks). Not the most any route
        can carry: a search reaches each user once, by the first tally that brings it there,
        so a route with more room through a user reached another way goes unseen (a search for
        more units, which cannot take the first way, finds it), and the message says so."""
        head = f"no route from {cuid} to {find.cuid}:{find.agent} can carry {units} mCHIP now"
        if not exhausted:
            return Reject("NO_ROUTE", f"{head}: none was found within {LIFT_SEARCH_S:g} s, "
                          "and the search was cut short there (a busy network): try again")
        routes = await self.search(cuid, find, 1, route.KINDS[0], SEARCH_S)
        if routes:
            return Reject("NO_ROUTE", f"{head}: the most a route found can carry is "
                          f"{routes[0]['capacity']} mCHIP (a search reaches each user once, by "
                          "its first way in, so a route with more room may go unseen: "
                          "route.find units=N looks for one that carries N)")
        unasked = "" if self.asks.can_ask(find) else (
            "; that user may not exist at all: its node was not asked whether it hosts it, "
            "as no address is known for that node (give find as cuid:agent@host:port, or add "
            "that node with peers.add, and it is asked: UNKNOWN_PAYEE if it hosts no such "
            "user)")
        where = format_hostport(find.host, find.port) if find.host is not None else None
        runtime = self.runtime
        if not unasked and not runtime.connected(find.agent) \
                and not runtime.answered(find.agent, where):
            dialled = where or runtime.address_of(find.agent)
            check = "is the node running, and is that its address?"
            if dialled is not None and runtime.wrong_key_at(find.agent) == dialled:
                check = (f"a node answers there, with another key than {find.agent}: is that "
                         "address, or that agent id, mistyped?")
            unasked = (f"; that user may not exist at all: its node has not answered a dial "
                       f"of this node at {dialled}, so it may not have been asked whether it "
                       f"hosts it ({check})")
        return Reject("NO_ROUTE", f"{head}: no path of tallies with room to pay reaches that "
                      f"user within {DEPTH} hops (room: what a payee's limit leaves on an open "
                      f"tally; a closing one carries only payments toward a zero balance)"
                      f"{unasked}")

    def _where_known(self, find: ChipAddress) -> ChipAddress:
        """``find`` where this node knows its node listens, whatever address it names: that
        node is asked there (``PayeeAsks.asking``), and the route shows it there."""
        known = self.runtime.address_of(find.agent)
        if known is None or find.agent == self.runtime.agent_id:
            return find
        host, port = parse_hostport(known)
        return ChipAddress(agent=find.agent, cuid=find.cuid, host=host, port=port)

    async def _directed(self, key: Key, find: ChipAddress, units: int, *, first: bool,
                        ends: float) -> list[dict]:
        """The route known for ``key``, checked again hop by hop with a query that goes only
        through its users (``protocol.route.start`` ``via``), with three times as long as its
        search took (at least ``DIRECT_S``: the check runs one hop further, having no last
        hops); [] when there is none, or it cannot carry ``units`` now, counting what our
        undecided lifts along it hold."""
        known = self.known.to_check(key, trio.current_time())
        if known is None:
            return []
        cuid, kind, _ = key
        via = [{"cuid": user_cuid, "agent": agent} for user_cuid, agent in known.via]
        timeout_s = min(max(DIRECT_S, 3 * known.took_s), ends - trio.current_time())
        try:
            routes, _ = await self._search(cuid, find, units, kind, len(via) + 1, timeout_s,
                                           first=first, salt=os.urandom(route.SALT_BYTES),
                                           via=via)
        except t.Refusal:  # a route we can no longer even ask along (a tally closed)
            routes = []
        if not routes:
            self.known.failed(key, trio.current_time())
            return []
        if routes[0]["capacity"] - self.known.held(key, known.via) < units:
            return []  # our own lifts along it may take what the check saw: look wider
        return routes

    async def _rounds(self, cuid: str, find: ChipAddress, units: int, kind: str, *,
                      first: bool, ends: float) -> tuple[list[dict], bool]:
        """Rounds of growing depth (an expanding ring search, ``protocol.route.next_depth``):
        within ``NEAR`` hops first, then one hop more each round that found nothing while a
        deeper one can find more, or straight to ``DEPTH`` where the network is thin. In a
        well-connected network each round costs several times the one before, so the first
        round that reaches the payee is about the cheapest that can.

        Every round carries the *last hops*, the hops into the payee that can carry
        ``units``: a node with one of them as a partner answers at once, so a round goes one
        hop less far. For a circle they are our own user's; for a payment the payee's node
        names them when asked (``PayeeAsks.last_hops``)."""
        salt = os.urandom(route.SALT_BYTES)
        last = None
        if kind == "linear" and not self._partner_can_pay(cuid, find, units):
            last = await self.asks.last_hops(cuid, find, units, salt)
        depth: int | None = NEAR
        while depth is not None:
            routes, search = await self._search(cuid, find, units, kind, depth,
                                                ends - trio.current_time(), first=first,
                                                salt=salt, last=last)
            if routes or not search.done:
                return routes, search.done
            depth = route.next_depth(depth, search.frontier, deepest=DEPTH, thin=THIN)
        return [], True

    def decided(self, lift: str, state: str) -> None:
        """A lift of ours ended (``KnownRoutes.decided``). After a good payment, where the
        route said its payee's node listens is learned, unless we know already: a payee
        found through tallies without its address (``find`` as ``cuid:agent``) lets later
        searches ask that node (``UNKNOWN_PAYEE`` for a user it does not host, its last
        hops). A hop could have lied (Noise refuses an impostor there, as we dial by agent
        id), so it is hearsay: kept only once a dial there is answered, and forgotten after
        failed ones (``agentd.runtime.hearsay``)."""
        payee = self.known.decided(lift, state, trio.current_time())
        if payee is not None:
            self.runtime.learn_address(ChipAddress.from_map(
                {key: payee[key] for key in ("agent", "cuid", "host", "port") if key in payee}),
                hearsay=True)

    def _partner_can_pay(self, cuid: str, find: ChipAddress, units: int) -> bool:
        """Whether our user can pay ``find`` directly, over one tally: then the first round
        finds that route at once, and the payee's last hops are not worth a question."""
        payee = route.user_key(find)
        return any(route.user_key(cand.partner) == payee and cand.capacity >= units
                   for cand in self.runtime.db.reading(
                       lambda conn: self.candidates(conn, cuid, "linear")))

    async def _search(self, cuid: str, find: ChipAddress, units: int, kind: str, depth: int,
                      timeout_s: float, *, first: bool, salt: bytes = bytes(route.SALT_BYTES),
                      last: list[route.LastHop] | None = None, via: list[dict] = ()
                      ) -> tuple[list[dict], route.Search]:
        """One query: its routes, and the search (``done`` if it was exhausted in time).
        ``last``: the payee's last hops; None for a circle's (our user's own, read here).
        ``via``: the users a directed query goes through."""
        query = str(uuidlib.uuid4())
        node = self.runtime
        hops = list(last or [])
        find = self._where_known(find)

        def work(tx: Tx) -> route.Started:
            self.ledger.user(tx.conn, cuid)
            if last is None and kind == "circular":
                hops.extend(route.last_hops(salt, self.into(tx.conn, cuid, kind), units))
            started = route.start(
                query=query, kind=kind, payor=node.own_address(cuid), find=find, units=units,
                depth=depth, deadline=tx.now_ms + round(timeout_s * 1000),
                candidates=self.candidates(tx.conn, cuid, kind), fan_out=FAN_OUT, salt=salt,
                last=hops, first=first, via=via)
            self.ledger.emit(tx, started.messages)
            return started

        started = self.runtime.transact_ephemeral(work)
        if kind == "linear":  # our user has this query: one sent back to it is a repeat, not
            self._note_seen((query, cuid), None, node.agent_id)  # a relay taking our answers
        # Registered before the next checkpoint: no answer can have been processed yet.
        search = route.Search(query, units, [send.to for send in started.messages],
                              started.found, started.frontier, find=find, salt=salt,
                              last=hops, first_hops={route.user_key(send.to): send.object[
                                  "path"][0] for send in started.messages},
                              suspects=self.known.suspects((cuid, kind, route.user_key(find)),
                                                           trio.current_time()))
        try:
            with trio.move_on_after(max(timeout_s, 0)):  # with first, the first trusted route
                while not search.done and not (first and search.trusted):
                    arrived = trio.Event()
                    self._searches[query] = (search, arrived)
                    await arrived.wait()
        finally:
            self._searches.pop(query, None)
        return search.routes, search

    def candidates(self, conn: sqlite3.Connection, cuid: str, kind: str
                   ) -> list[route.Candidate]:
        """Our user's open and closing tallies as hops, with what each can carry now (a
        closing one only toward a zero balance: ``route.hop_kind``)."""
        out = []
        for row in self.ledger.store.route_candidates(conn, cuid, route.CARRYING):
            if row["partner_limit"] is None:
                continue  # not filled yet: offered once the node has started
            capacity = route.hop_capacity(route.hop_kind(kind, row["state"]),
                                          balance=row["balance"],
                                          partner_limit=row["partner_limit"],
                                          lift_out=row["lift_out"])
            address = self.partner_address(row["partner"], row["partner_cuid"])
            out.append(route.Candidate(row["uuid"], address, capacity))
        return out

    def into(self, conn: sqlite3.Connection, cuid: str, kind: str) -> list[route.Candidate]:
        """Our user's open and closing tallies as hops into it, with what each partner can
        pay it now."""
        out = []
        for row in self.ledger.store.route_candidates(conn, cuid, route.CARRYING):
            if row["lim"] is None:
                continue  # not filled yet, as in candidates()
            capacity = route.receive_capacity(route.hop_kind(kind, row["state"]),
                                              balance=row["balance"], limit=row["lim"],
                                              lift_in=row["lift_in"])
            out.append(route.Candidate(
                row["uuid"], ChipAddress(agent=row["partner"], cuid=row["partner_cuid"]),
                capacity))
        return out

    def partner_address(self, agent: str, cuid: str | None) -> ChipAddress:
        """A tally partner as a hop of a route: with where its node listens, if known (so a
        referee can reach it), else the pump finds it when it dials."""
        known = self.runtime.address_of(agent)
        if known is None:
            return ChipAddress(agent=agent, cuid=cuid)
        host, port = parse_hostport(known)
        return ChipAddress(agent=agent, cuid=cuid, host=host, port=port)

    # -- messages (event loop, read connection) ------------------------------------------

    def handle(self, tx: Tx, envelope: Envelope) -> None:
        action, obj = envelope.action, envelope.object
        if action not in route.ACTIONS:
            raise Reject("UNKNOWN_ACTION", f"route has no action {action!r}")
        here = envelope.to
        if here.cuid is None or not self.ledger.known(tx.conn, here.cuid):
            raise Reject("UNKNOWN_USER", f"no user {here.cuid!r} on this node")
        here = self.runtime.own_address(here.cuid)
        if action == "ask":
            tx.send(route.answer_ask(obj, here=here, sender=envelope.from_,
                                     into=self.into(tx.conn, here.cuid, "linear")),
                    re=envelope.id)
            return
        if action == "hops":
            self.asks.answered(tx, obj, envelope.from_)
            return
        if action != "query":
            self._answer(tx, action, obj, here, envelope.from_)
            return
        route.check_query(obj)  # before its fields key anything
        key = (obj["query"], here.cuid)
        if key in self._seen:
            sends = route.repeat(obj, here=here, sender=envelope.from_).messages
        else:
            kind = obj["kind"]
            forwarded = route.forward(obj, here=here, sender=envelope.from_, now_ms=tx.now_ms,
                                      candidates=self.candidates(tx.conn, here.cuid, kind),
                                      fan_out=FAN_OUT, depth=DEPTH,
                                      budget_ms=round(MAX_SEARCH_S * 1000))
            self._note_seen(key, forwarded.relay, envelope.from_.agent)
            sends = forwarded.messages
        self.ledger.emit(tx, sends)

    def _note_seen(self, key: tuple[str, str], relay: route.Relay | None, peer: str) -> None:
        """A (query, user) handled once, and the relay carrying its answers back, if any,
        for a query from ``peer``. Past ``SEEN_PER_PEER`` of one peer's, its oldest goes: a
        partner that floods us with queries cannot push out the relays of searches others
        sent through us (then the oldest of all, past ``SEEN``)."""
        mine = self._seen_by.setdefault(peer, OrderedDict())
        mine[key] = None
        self._seen[key] = (relay, peer)
        if len(mine) > SEEN_PER_PEER:
            self._seen.pop(mine.popitem(last=False)[0], None)
        while len(self._seen) > SEEN:
            gone, (_, owner) = self._seen.popitem(last=False)
            owned = self._seen_by[owner]
            del owned[gone]
            if not owned:
                del self._seen_by[owner]

    def _answer(self, tx: Tx, action: str, obj: Any, here: ChipAddress,
                sender: ChipAddress) -> None:
        """An answer to a query our user ``here`` sent on: passed back by its relay, or
        counted by the search it belongs to; a late one (its search ended) is dropped."""
        query = obj.get("query") if isinstance(obj, dict) else None
        if not isinstance(query, str):
            raise Reject("BAD_FIELD", "a route answer names its query (a uuid)")
        relay, _ = self._seen.get((query, here.cuid), (None, None))
        if relay is not None:
            self.ledger.emit(tx, relay.on_answer(action, obj, sender))
            return
        entry = self._searches.get(query)
        if entry is None:
            return

        def apply() -> None:
            current = self._searches.get(query)
            if current is None:
                return
            search, arrived = current
            try:
                search.on_answer(action, obj, sender)
            except t.Refusal:
                return
            arrived.set()

        tx.after_commit(apply)

    def on_rejected(self, tx: Tx, envelope: dict, code: str, message: str) -> None:
        """A partner refused a query of ours (say, over a tally it holds open no longer): its
        part of the search is over as if it had answered ``none``, so the search need not
        wait out its time for it. A payee's node refused our ask: ``PayeeAsks.refused``."""
        obj, to, sent_by = (envelope.get(key) or {} for key in ("object", "to", "from"))
        if not isinstance(obj.get("query"), str):
            return
        if envelope.get("action") == "ask":
            self.asks.refused(tx, obj["query"], code)
            return
        if envelope.get("action") != "query":
            return
        partner = ChipAddress(agent=to["agent"], cuid=to.get("cuid"))
        here = self.runtime.own_address(sent_by.get("cuid"))
        self._answer(tx, "none", {"query": obj["query"], "goods": 0, "frontier": 0}, here,
                     partner)


def param_find(value: Any) -> ChipAddress:
    user, _, where = value.partition("@") if isinstance(value, str) else (None, "", "")
    if user is not None and (":" not in user or user.endswith(":")):
        if is_agent_id(user):  # the node, not a user on it
            raise invalid_params(f"find {value!r} is an agent id alone: name the user too, as "
                                 f"cuid:{value} (the address users.list shows on its node)")
        if ":" not in user and is_agent_id(where):  # cuid@agent
            raise invalid_params(f"find {value!r} has @ where : goes: cuid:agent "
                                 f"({user}:{where}), or cuid:agent@host:port")
        raise invalid_params(f"find {value!r} names no agent: give cuid:agent (the agent id of "
                             "the user's node, which its users.list address shows) or "
                             "cuid:agent@host:port")
    try:
        found = ChipAddress.parse(value) if isinstance(value, str) else None
    except (IdentityError, ValueError) as exc:
        raise invalid_params(f"find must be cuid:agent or a CHIP address: {exc}") from exc
    if found is None or found.cuid is None:
        raise invalid_params("find must name a user: cuid:agent or cuid:agent@host:port")
    return found


def param_timeout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            0 < value <= MAX_SEARCH_S):
        raise invalid_params(f"timeout_s must be more than 0 and at most {MAX_SEARCH_S:g} "
                             f"seconds (the search's time budget), not {shown(value)}")
    return float(value)
