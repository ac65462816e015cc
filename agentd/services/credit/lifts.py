"""Lifts: credit moved along a path of tallies, all or nothing (the ``lift`` target).

``protocol.lift`` decides; this service keeps the state and moves the messages. A lift is a
referee two-phase commit (DESIGN.md §4):

1. ``lift.pay`` / ``lift.clear`` find a route (``RouteService.search``), sign the lift record
   with the payor's key and, in one transaction, record the lift, a pending lift chit on the
   first tally (holding its capacity: ``lift_out``) and ``promise`` to the next user.
2. Each hop checks the promise (record signature, deadline, that the sender is its partner on
   the incoming tally, capacity on both tallies counting every pending lift chit, the referee,
   and what promises over the incoming tally hold here already: ``_check_held``) and in one
   transaction records pending chits on its incoming and outgoing tallies and forwards
   ``promise``. A hop that cannot take part refuses the promise (an error ack that changes
   nothing); the sender, which holds a pending chit, then sends ``cancel`` to the referee.
3. The terminus (the payee, or the payor again for a circle) records its pending chit and
   sends ``commit`` to the referee.
4. The referee (``referee.Referee``, when the record names this node) decides once
   (``protocol.lift.decide``), keeps the signed decision for ever, logs it as evidence (pid =
   ``REFEREE/LIFT``, owned by every node on the path) and sends it to every node on the path;
   asking again gets the same answer.
5. A node applies a decision signed by the lift's referee to all its pending chits of the
   lift in one transaction: good ones enter the tally chains like any good chit, void ones
   release their capacity (``lift_decisions``). A node still pending after the deadline
   asks the referee (``query``), backing off, until it learns the decision
   (``lift_follow_up``). A referee proven to have signed both good and void on a lift
   (``protocol.lift_equivocation``) makes that lift good, and is refused from then on
   (``REFEREE_REFUSED``), by promises and by our own lifts.
"""

from __future__ import annotations

import contextlib
import logging
import uuid as uuidlib
from typing import TYPE_CHECKING, Any

import trio

from agentd.rpc import invalid_params
from agentd.rpc_types import shown
from agentd.runtime.context import Reject, RoutineReject, Service, Tx
from agentd.services.credit import lift_views
from agentd.services.credit.ids import lift_id
from agentd.services.credit.ledger import CreditLedger, no_tally
from agentd.services.credit.lift_decisions import LiftDecisions, log_lift
from agentd.services.credit.lift_follow_up import FollowUp
from agentd.services.credit.lift_holds import LiftHolds
from agentd.services.credit.params import param_amount, param_cuid, param_memo
from agentd.services.credit.referee import Referee
from agentd.services.credit.routes import LIFT_SEARCH_S, RouteService, param_find
from protocol import lift as lf
from protocol import route
from protocol.chit_lift import lift_chit, lift_chit_uuid
from protocol.envelope import Envelope
from protocol.errors import Refusal
from protocol.keys import ChipAddress, IdentityError, agent_id_to_public
from store import lifts

if TYPE_CHECKING:
    from agentd.runtime.context import Runtime
    from store.credit import Holding

log = logging.getLogger("agentd.lift")
WAIT_S = 30.0
MAX_WAIT_S = 600.0
CLEAR_TRIES = 3  # searches lift.clear makes when concurrent lifts take the cycle it found
CLEAR_AFTER_S = 5.0  # the most a clearing waits for this node's last one to be decided
REFEREE_DIAL_S = 5.0  # the most a lift waits for a channel to its referee before it starts


class LiftService(Service):
    """The ``lift`` target, the referee role and the ``lift.*`` RPC methods."""

    target = "lift"
    actions = frozenset({"promise", "commit", "cancel", "query", "decision"})
    # lifts in flight at once race for the same capacity: the loser's promise is refused
    # and the lift is voided (on_rejected), which is no cause for a warning
    routine_refusals = frozenset({("promise", "OVER_LIMIT")})

    def __init__(self, node: Runtime, ledger: CreditLedger, routes: RouteService) -> None:
        super().__init__(node)
        self.ledger = ledger
        self.routes = routes
        self._settled: dict[str, trio.Event] = {}  # lift -> set when it is decided here
        self._clearing = trio.Lock()  # one clearing search here at a time (clear)
        self._last_clear: str | None = None  # the circle this node started last
        self.referee_role = Referee(node, ledger)  # lifts others name this node to decide
        self.decisions = LiftDecisions(node, ledger, routes, self._wake)
        self.follow_up = FollowUp(node, ledger, self.clear, self.decided)
        self.holds = LiftHolds(node.answered)  # what promises over a tally may make us hold
        for name in ("pay", "clear", "wait", "show", "list", "forgive"):
            node.register_method(f"lift.{name}", getattr(self, f"rpc_{name}"))

    # -- RPC -----------------------------------------------------------------------------

    async def rpc_pay(self, cuid: str, find: str, units: int, memo: str = "",
                      life_s: float | None = None) -> dict:
        """Pay ``units`` mCHIP to ``find`` (``cuid:agent`` or a full CHIP address) along a route of
        tallies: returns at once with the lift pending; ``lift.wait`` tells how it ended.
        ``NO_ROUTE`` when no path can carry ``units`` (checked before anything is promised;
        it says the most a route found can carry), ``UNKNOWN_PAYEE`` when ``find``'s node
        hosts no such user.
        ``life_s``: seconds the lift may take (1 to 86400; null: ``[lift] life_s``, 120)."""
        cuid, target = self.ledger.known_user(param_cuid(cuid)), param_find(find)
        units, memo, life_ms = param_amount(units, "units"), param_memo(memo), self._life(life_s)
        if (target.agent, target.cuid) == (self.runtime.agent_id, cuid):
            raise invalid_params("find is the payor itself: use lift.clear for a circle")
        referee = await self._reach_referee()
        began = trio.current_time()
        found, exhausted = await self.routes.search_near_first(cuid, target, units, "linear",
                                                               first=True)
        if not found:
            raise await self.routes.no_route(cuid, target, units, exhausted=exhausted)
        record = await self._start(cuid, "linear", units, found[0], memo, life_ms,
                                   referee=referee, took_s=trio.current_time() - began)
        return lift_views.started(record)

    async def rpc_clear(self, cuid: str, units: int | None = None, memo: str = "",
                        life_s: float | None = None) -> dict:
        """Clear debt round a cycle through our user: the largest amount the first cycle found
        can carry (by its route, and by our user's own tallies on it), or ``units`` mCHIP
        (``OVER_LIMIT`` over what those carry). Every balance on the cycle moves toward zero
        and nobody's net position changes. ``NO_CYCLE`` when no debt cycle passes through the
        user. ``life_s`` as for ``lift.pay``."""
        cuid, memo = self.ledger.known_user(param_cuid(cuid)), param_memo(memo)
        life_ms = self._life(life_s)
        least = 1 if units is None else param_amount(units, "units")
        return await self.clear(cuid, least, exact=units is not None, memo=memo,
                                life_ms=life_ms)

    async def clear(self, cuid: str, least: int, *, exact: bool, memo: str = "",
                    life_ms: int | None = None) -> dict:
        """Start a circular lift through ``cuid`` of ``least`` (``exact``) or of all the cycle
        can carry, if that is at least ``least``. The cycle is the first the search finds: it
        looks nearest first, and waiting for a whole round to pick the best one cost seconds
        under load at 1,000 nodes (most calls ended ``NO_CYCLE`` at the time budget).

        A node clears one circle at a time: each search waits until the circle this node
        started last is decided (at most ``CLEAR_AFTER_S``), so it sees the debt that one
        took. Searches at once find the same debt, and the circles they start each hold a
        hop another needs, so a hop cancels them: 24 calls at once on four nodes that all
        trade with each other left 0 or 1 circle good and 4 to 10 void."""
        life_ms = self._life(None) if life_ms is None else life_ms
        referee = await self._reach_referee()
        async with self._clearing:
            if self._last_clear is not None:
                with contextlib.suppress(Refusal):  # UNKNOWN_LIFT: pruned since
                    await self.decided(self._last_clear, CLEAR_AFTER_S)
            started = await self._clear_now(cuid, least, exact, memo, life_ms, referee)
            self._last_clear = started["lift"]
        return started

    async def _clear_now(self, cuid: str, least: int, exact: bool, memo: str, life_ms: int,
                         referee: ChipAddress) -> dict:
        for attempt in range(CLEAR_TRIES):
            began = trio.current_time()
            found, exhausted = await self.routes.search_near_first(
                cuid, self.runtime.own_address(cuid), least, "circular", first=True)
            if not found and not exhausted:
                raise Reject("NO_CYCLE", f"no debt cycle through {cuid} was found within "
                             f"{LIFT_SEARCH_S:g} s, and the search was cut short there (a busy "
                             "network): try again")
            if not found:
                raise await self._no_cycle(cuid, least, exact=exact)
            best = found[0]
            amount = least if exact else best["capacity"]
            try:
                record = await self._start(cuid, "circular", amount, best, memo, life_ms,
                                           referee=referee, took_s=trio.current_time() - began,
                                           least=least)
                break
            except Refusal as exc:  # another lift took our own hops meanwhile: look again
                if exc.code != "over_limit" or attempt == CLEAR_TRIES - 1:
                    raise
        return {**lift_views.started(record), "units": record["units"]}

    async def _no_cycle(self, cuid: str, least: int, *, exact: bool) -> Reject:
        """``NO_CYCLE`` for a clearing whose whole search found no cycle carrying ``least``; for
        ``units`` asked (``exact``), a second search, for any amount, tells a cycle carrying
        less (``OVER_LIMIT``, naming the most the one it found can clear) from none at all."""
        none = Reject("NO_CYCLE", f"no debt cycle through {cuid} (a circle of tallies on which "
                      "each user owes the one before)")
        if least == 1:  # any cycle at all was looked for
            return none
        if not exact:
            return Reject("NO_CYCLE", f"no debt cycle through {cuid} can clear {least} mCHIP")
        found, _ = await self.routes.search_near_first(
            cuid, self.runtime.own_address(cuid), 1, "circular", first=True)
        if not found:
            return none
        if found[0]["capacity"] >= least:  # the debt moved between the two searches
            return Reject("NO_CYCLE", f"no debt cycle through {cuid} could clear {least} mCHIP "
                          "as it looked, and the debt changed while it did: try again")
        return Reject("OVER_LIMIT", f"the debt cycle found through {cuid} can clear at most "
                      f"{found[0]['capacity']} mCHIP now, not {least} (without units, "
                      "lift.clear clears the most the first cycle it finds can; a search "
                      "reaches each user once, by its first way in, so a cycle with more room "
                      "may go unseen)")

    async def rpc_wait(self, lift: str, timeout_s: float = WAIT_S) -> dict:
        """The lift once it is good or void here, or as it is when ``timeout_s`` (0 to 600)
        passes. ``lift``: its id, or the first 8 or more characters of it."""
        lift = lift_id(self.runtime.db, lift)
        if not 0 <= timeout_s <= MAX_WAIT_S:  # its type: agentd.rpc_types
            raise invalid_params(f"timeout_s must be seconds from 0 (look now) to "
                                 f"{MAX_WAIT_S:g}, not {shown(timeout_s)}")
        return await self.decided(lift, timeout_s)

    async def decided(self, lift: str, timeout_s: float) -> dict:
        """``lift`` as ``lift.show`` shows it once it is good or void here, or as it is when
        ``timeout_s`` passes. Callers waiting on one lift share its event. A read shows the
        decision once it is committed, which is before the dispatcher runs its hooks (the
        wake-up among them): a caller that sees it decided wakes the others itself, since
        the event may be theirs (dropping it unset left them asleep for their timeout)."""
        event = self._settled.setdefault(lift, trio.Event())  # before we look: no race
        try:
            shown = await self.rpc_show(lift)
        except Refusal:
            self._settled.pop(lift, None)
            raise
        if shown["state"] != lf.PEND:
            self._wake(lift)
            return shown
        with trio.move_on_after(timeout_s):
            await event.wait()
        return await self.rpc_show(lift)

    async def rpc_show(self, lift: str) -> dict:
        """One lift as this node sees it: record, state, decision and its chits here (read
        from the last commit, without waiting for the writer: ``lift.wait`` answers as soon
        as the decision is applied). ``lift``: its id, or the first 8 or more characters of
        it."""
        lift = lift_id(self.runtime.db, lift)
        return self.runtime.db.reading(
            lambda conn: lift_views.shown(conn, lift))

    async def rpc_list(self, cuid: str | None = None, limit: int | None = None) -> list[dict]:
        """Lifts this node takes part in (of one user; without ``cuid`` also those it only
        referees), newest first: the newest ``limit`` of them (default all; a node keeps every
        lift it took part in or decided). Read from the last commit, as lift.show is."""
        who = None if cuid is None else self.ledger.known_user(param_cuid(cuid))
        if limit is not None and not 1 <= limit < 2**63:  # its type: agentd.rpc_types
            raise invalid_params(f"limit must be a number of lifts from 1 to {2**63 - 1}, "
                                 f"not {limit}")

        return self.runtime.db.reading(  # one snapshot: each lift's state as its chits show it
            lambda conn: lift_views.listed(conn, who, limit))

    async def rpc_forgive(self, referee: str) -> dict:
        """Take ``referee`` off the referees this node refuses for having signed both good and
        void on a lift it took part in: the operator's call, once the cause is known (a
        referee restored from a backup decides again, and may decide otherwise)."""
        try:
            agent_id_to_public(referee)
        except IdentityError as exc:
            raise invalid_params(f"referee must be an agent id: {exc}") from None
        lift = await self.runtime.db.write(lambda conn: lifts.forgive(conn, referee))
        if lift is None:
            raise invalid_params(f"referee {referee} is not refused here: this node holds no "
                                 "proof that it signed both good and void on a lift")
        log.warning("lift referee %s forgiven: it signed both good and void on lift %s, and "
                    "this node takes the lifts it referees again", referee, lift)
        return {"referee": referee, "lift": lift, "forgiven": True}

    def _life(self, life_s: float | None) -> int:
        if life_s is None:
            return round(self.runtime.config.lift.life_s * 1000)
        longest = lf.MAX_LIFE_MS // 1000
        if not 1 <= life_s <= longest:
            raise invalid_params(f"life_s must be seconds from 1 to {longest}, "
                                 f"not {shown(life_s)}")
        return round(life_s * 1000)

    # -- starting a lift -----------------------------------------------------------------

    async def _start(self, cuid: str, kind: str, units: int, found: dict, memo: str,
                     life_ms: int, *, referee: ChipAddress, took_s: float,
                     least: int | None = None) -> dict[str, Any]:
        """Record and promise a lift along ``found`` (its search took ``took_s``), to be
        decided by ``referee``. ``least``: a circle, whose ``units`` are cut to what our
        user's own first and last hops carry, ``over_limit`` when that is under ``least``."""
        path = route.lift_path(found)

        def work(tx: Tx) -> dict[str, Any]:
            nonlocal units
            if least is not None:  # the partners' word (route answers) says it carries
                room = self.ledger.lift_room(tx.conn, cuid, path[0]["tally"], path[-2]["tally"])
                if room < least:  # units: the first hop and our terminus check are ours
                    raise Refusal("over_limit", f"{cuid}'s own first and last tallies of the "
                                  f"cycle can carry {room} mCHIP now, not {least}")
                units = min(units, room)
            user = self.ledger.user(tx.conn, cuid)
            record = lf.make_record(
                lift_uuid=str(uuidlib.uuid4()), kind=kind, units=units, path=path,
                referee=referee, date_ms=tx.now_ms, life_ms=life_ms, memo=memo, key=user.key)
            lifts.add(tx.conn, record, payor=cuid, now_ms=tx.now_ms)
            log_lift(tx, record["lift"], lf.PEND, kind=kind, units=units, cuid=cuid)
            self._hold(tx, record, 0, cuid, outgoing=True)
            self.ledger.emit(tx, [lf.promise(record, 0)])
            self._ask_referee(tx, record, cuid)
            tx.after_commit(lambda: self.follow_up.due_at(record["deadline"]))
            tx.after_commit(lambda: self.routes.known.started(record, took_s))
            return record

        return await self.ledger.transact(work)

    async def _reach_referee(self) -> ChipAddress:
        """Our lifts' referee; ``NO_REFEREE`` when it has never answered us and does not now: a
        lift its referee cannot decide would hold room on every hop's tallies until it can,
        for ever if its agent id or address is mistyped. One that answered before but is
        down now may decide later: its lifts start, and end good or void as it comes back.
        ``REFEREE_REFUSED`` when it equivocated on a lift this node took part in."""
        runtime, referee = self.runtime, self.referee()
        refused = runtime.db.reading(lambda conn: self.decisions.refusal(conn, referee.agent))
        if refused is not None:
            raise Reject("REFEREE_REFUSED", f"{refused}; name another in [lift] referee (or "
                         "[clearinghouse], which referees without one)")
        if runtime.seen_before(referee.agent):
            return referee
        why = await runtime.reach(referee.agent, REFEREE_DIAL_S)
        if why is not None:
            raise Reject("NO_REFEREE", f"the lift referee {referee.agent} (at {referee.host}:"
                         f"{referee.port}) has never answered this node and cannot be reached "
                         f"now: {why}; check [lift] referee, else [clearinghouse] agent and "
                         "address")
        return referee

    def referee(self) -> ChipAddress:
        """Who decides our lifts: ``[lift] referee``, else our clearing house, else us."""
        node, config = self.runtime, self.runtime.config
        agent = config.referee
        if agent is None or agent == node.agent_id:
            return node.own_address()
        where = node.address_of(agent)
        if where is None:
            raise Reject("NO_REFEREE", f"no address known for the lift referee {agent}: add it "
                         "to [[peers]] or [clearinghouse]")
        return ChipAddress.parse(f"{agent}@{where}")

    def _learn(self, record: dict[str, Any]) -> None:
        """Remember where the lift's referee listens: queries and cancels go there, not only
        to tally partners. (The referee reaches path nodes at the addresses the route found,
        which the signed record names; Noise authenticates whoever answers there.) Only for a
        promise we took, once it is committed: its record is signed by the payor's user on a
        tally we hold, and its pending chits hold capacity, so nobody can make us learn
        referees faster than our limits allow."""
        self.runtime.learn_address(ChipAddress.from_map(record["referee"]))

    def _hold(self, tx: Tx, record: dict[str, Any], hop: int, cuid: str, *,
              outgoing: bool, holding: Holding | None = None) -> None:
        """Record the pending chit of hop ``hop`` on our user's tally (``holding``, when the
        caller has loaded it), after checking the tally takes chits and can carry the lift
        counting every pending lift chit. Our user pays on an ``outgoing`` hop: not while
        its chain lacks blocks the partner confirmed (``CHAIN_BEHIND``, as ``chit.pay``),
        since the balance that room is counted from may leave them out."""
        if holding is None:
            holding = self.ledger.holding(tx.conn, record["path"][hop]["tally"], cuid)
        if outgoing:
            self.ledger.check_caught_up(holding)
        pending = lift_chit(record, hop, holding.local)
        units = record["units"]
        lf.check_room(record, pending, holding.local, balance=holding.balance,
                      reserved=holding.lift_out if outgoing else holding.lift_in)
        delta = (0, units) if outgoing else (units, 0)
        self.ledger.commit(tx, holding, fresh=[pending], lift_delta=delta)

    # -- messages (writer thread) --------------------------------------------------------

    def handle(self, tx: Tx, envelope: Envelope) -> None:
        action = envelope.action
        if action == "promise":
            self._on_promise(tx, envelope)
        elif action in ("commit", "cancel", "query"):
            self.referee_role.handle(tx, envelope)
        elif action == "decision":
            self.decisions.handle(tx, envelope)
        else:
            raise Reject("UNKNOWN_ACTION", f"lift has no action {action!r}")

    def _on_promise(self, tx: Tx, envelope: Envelope) -> None:
        obj, here = envelope.object, envelope.to
        record, hop = obj.get("record"), obj.get("hop")
        if here.cuid is None or not self.ledger.known(tx.conn, here.cuid):
            raise Reject("UNKNOWN_USER", f"no user {here.cuid!r} on this node")
        lf.check_promise(record, hop, now_ms=tx.now_ms, sender=envelope.from_, here=here)
        allowed = self.runtime.config.lift.referees
        if allowed and record["referee"]["agent"] not in allowed:
            raise Reject("REFEREE_REFUSED", f"this node accepts lifts refereed by "
                         f"{', '.join(allowed)} only")
        incoming = self.ledger.holding(tx.conn, record["path"][hop]["tally"], here.cuid)
        self.ledger.check_partner(incoming, envelope)
        known = lifts.get(tx.conn, record["lift"])
        if known is not None and lf.record_digest(lifts.record_of(known)) != lf.record_digest(
                record):  # one lift, one record: a decision settles every chit of its uuid
            raise Reject("CONFLICT", f"lift {record['lift']} is here already with another "
                         "record")
        if self.ledger.store.get_chit(tx.conn, incoming.local.uuid, here.cuid,
                                      lift_chit_uuid(record["lift"], hop)):
            return  # this hop's chit is here already: a resent promise
        if known is not None and known["state"] != lf.PEND:
            raise Reject("BAD_STATE", f"lift {record['lift']} is {known['state']} here already")
        if (record["lift"], lf.record_digest(record)) in self.decisions.heard_void:
            raise Reject("BAD_STATE", f"lift {record['lift']} is void: its referee said so")
        if known is None:
            refused = self.decisions.refusal(tx.conn, record["referee"]["agent"])
            if refused is not None:
                raise Reject("REFEREE_REFUSED", refused)
            via = (incoming.local.uuid, here.cuid)
            self._check_held(tx, record, *via)
            lifts.add(tx.conn, record, payor=None, now_ms=tx.now_ms, via=via)
        log_lift(tx, record["lift"], lf.PEND, kind=record["kind"], units=record["units"],
                 cuid=here.cuid)
        self._hold(tx, record, hop, here.cuid, outgoing=False, holding=incoming)
        last = hop + 1 == len(record["path"]) - 1
        if last:
            self.ledger.emit(tx, [lf.commit(record)])
        else:
            self._hold_onward(tx, record, hop + 1, here.cuid)
            self.ledger.emit(tx, [lf.promise(record, hop + 1)])
            self._ask_referee(tx, record, here.cuid)
        tx.after_commit(lambda: self._learn(record))  # a refused promise teaches nothing
        tx.after_commit(lambda: self.follow_up.due_at(record["deadline"]))

    def _hold_onward(self, tx: Tx, record: dict[str, Any], hop: int, cuid: str) -> None:
        """Our user's pending chit on the tally a promise names onward. A tally of our user's
        with someone else than the next user on the path is refused as one it does not hold
        (``UNKNOWN_TALLY``, the same words), or a partner could learn by promises which
        tally uuids our user holds."""
        try:
            self._hold(tx, record, hop, cuid, outgoing=True)
        except Refusal as exc:
            if exc.code != "not_party":
                raise
            raise Reject("UNKNOWN_TALLY", no_tally(cuid, record["path"][hop]["tally"])) from None

    def _check_held(self, tx: Tx, record: dict[str, Any], tally: str, cuid: str) -> None:
        """Bound what promises over one incoming tally can make us hold (``LiftHolds``). A
        partner can run into these bounds as often as it likes (naming a new referee each
        time): each refusal is counted, and logged once a while per tally."""
        try:
            self.holds.check(tx.conn, record, tally, cuid, tx.now_ms)
        except Refusal as exc:
            raise RoutineReject(exc.code, exc.message, f"over tally {tally}") from None

    def on_rejected(self, tx: Tx, envelope: dict, code: str, message: str) -> None:
        """The next hop refused our promise for good: the lift cannot complete, so tell the
        referee (our pending chit stays until its void decision comes)."""
        obj = envelope.get("object") or {}
        if envelope.get("action") != "promise" or not isinstance(obj.get("record"), dict):
            return
        record = obj["record"]
        row = lifts.get(tx.conn, record.get("lift"))
        if row is None or row["state"] != lf.PEND:
            return
        reason = f"{lift_views.promised_to(record, obj.get('hop'))} refused: {code}: {message}"
        log.info("lift %s: %s", row["lift"], reason)
        lifts.set_error(tx.conn, row["lift"], reason, tx.now_ms)
        sender = (envelope.get("from") or {}).get("cuid")
        self.ledger.emit(tx, [lf.cancel(lifts.record_of(row), reason, from_cuid=sender)])

    def refusal_key(self, envelope: dict) -> str | None:
        """A partner refuses our promises over one tally as often as we send them (every lift
        that crosses it while it is past a bound, or short of room), and the decisions we
        show it as often as its chain messages make us (``LiftDecisions.on_undecided``:
        each repair of a chain carrying a lift chit it will not take), on any lift it likes:
        logged once a while per tally, and per agent."""
        obj = envelope.get("object") or {}
        if envelope.get("action") == "decision":
            return f"of the lift decisions we send {(envelope.get('to') or {}).get('agent')}"
        if envelope.get("action") != "promise" or not isinstance(obj.get("record"), dict):
            return None
        return f"of our promises over tally {obj['record']['path'][obj['hop']]['tally']}"

    def _ask_referee(self, tx: Tx, record: dict[str, Any], cuid: str) -> None:
        """We take part in a lift while no channel joins us to its referee, which pushes its
        decision only on one (or to nodes it knows): ask now, so the question opens the
        channel, or is answered with the decision if it came first."""
        referee = record["referee"]["agent"]
        if referee != self.runtime.agent_id and not self.runtime.connected(referee):
            self.ledger.emit(tx, [lf.query(record, from_cuid=cuid)])

    def _wake(self, lift: str) -> None:
        waiting = self._settled.pop(lift, None)
        if waiting is not None:
            waiting.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Ask referees about lifts pending here past their deadline, and clear debt cycles
        on a schedule when ``[lift] auto_clear`` is set (``lift_follow_up``), until
        cancelled."""
        await self.follow_up.run(task_status=task_status)
