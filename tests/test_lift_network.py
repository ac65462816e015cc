"""A lossy network of users running route discovery, lifts and a referee (sans-IO core only).

Each user lives on its own agent; its ``Node`` is wired the way the runtime wires the modules
(route candidates from ``route.hop_capacity``, lift chits from ``chit_lift.lift_chit``, room from
``lift.check_room``, the participant table from ``lift.advance``). Messages wait in a bag
from which they are delivered in any order, lost, duplicated, or sent again from the outbox.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from protocol import chit_states as cs
from protocol import lift as lf
from protocol import route as rt
from protocol import tally as t
from protocol.chit_lift import lift_chit, lift_decided
from protocol.chit_local import LocalChit, effect
from protocol.chit_local import balance as chit_balance
from protocol.keys import ChipAddress
from protocol.messages import Send
from protocol.tally_local import LocalTally
from tests.liftdata import REFEREE, REFEREE_ADDRESS, USERS, open_tally, uuid_of
from tests.test_credit_tally import NOW, Party

PENDING, GOOD, VOID = (cs.A_LIFT, cs.L_LIFT), (cs.A_GOOD, cs.L_GOOD), (cs.A_VOID, cs.L_VOID)
PAIRS = [(0, 1), (1, 2), (2, 3), (3, 0), (1, 3), (0, 2), (2, 4), (4, 0), (1, 0)]  # tally i+1
LIFE = 1_000


def chit_class(state: str) -> str:
    return "pend" if state in PENDING else "good" if state in GOOD else "void"


class Node:
    """One user: its holdings, its lift chits and its part in each lift."""

    def __init__(self, user: Party) -> None:
        self.user = user
        self.address = user.address
        self.holdings: dict[str, LocalTally] = {}
        self.initial: dict[str, int] = {}  # the balance before any lift
        self.chits: dict[str, LocalChit] = {}  # every lift chit, by uuid
        self.lifts: dict[str, str] = {}  # participant state
        self.records: dict[str, dict[str, Any]] = {}
        self.took: set[tuple[str, int]] = set()  # (lift, hop) promises taken

    def balance(self, tally: str) -> int:
        side = self.holdings[tally].side
        good = [lc.chit for lc in self.chits.values() if lc.chit["tally"] == tally
                and lc.state in GOOD]
        return self.initial[tally] + chit_balance(good, side)

    def reserved(self, tally: str, by: str) -> int:
        return sum(lc.chit["units"] for lc in self.chits.values()
                   if lc.chit["tally"] == tally and lc.state in PENDING and lc.chit["by"] == by)

    def candidates(self, kind: str) -> list[rt.Candidate]:
        out = []
        for tally, local in self.holdings.items():
            limit = local.tally[local.partner_side]["terms"]["limit"]
            room = rt.hop_capacity(kind, balance=self.balance(tally), partner_limit=limit,
                                   lift_out=self.reserved(tally, local.side))
            out.append(rt.Candidate(tally, local.partner, room))
        return out

    def _take(self, record: dict[str, Any], hop: int) -> LocalChit:
        local = self.holdings[record["path"][hop]["tally"]]
        chit = lift_chit(record, hop, local)
        lf.check_room(record, chit, local, balance=self.balance(local.uuid),
                      reserved=self.reserved(local.uuid, chit.chit["by"]))
        return chit

    def originate(self, record: dict[str, Any]) -> list[Send]:
        chit = self._take(record, 0)
        self.lifts[record["lift"]] = lf.advance(None, "originate")
        self.records[record["lift"]] = record
        self.chits[chit.uuid] = chit
        return [lf.promise(record, 0)]

    def on_promise(self, obj: dict[str, Any], sender: ChipAddress, now: int) -> list[Send]:
        record, hop = obj["record"], obj["hop"]
        lift, state = record["lift"], self.lifts.get(record["lift"])
        if (lift, hop) in self.took or state in lf.DECISIONS:
            return []  # a copy, or late: the lift is decided
        self.took.add((lift, hop))
        self.records[lift] = record
        terminus = hop + 2 == len(record["path"])
        try:
            lf.check_promise(record, hop, now_ms=now, sender=sender, here=self.address)
            chits = [self._take(record, hop)] + ([] if terminus else [self._take(record, hop + 1)])
        except t.Refusal as why:
            self.lifts[lift] = lf.advance(state, "refuse")
            return [lf.cancel(record, why.message, from_cuid=self.address.cuid)]
        self.lifts[lift] = lf.advance(state, "promise")
        self.chits.update((chit.uuid, chit) for chit in chits)
        return [lf.commit(record) if terminus else lf.promise(record, hop + 1)]

    def on_decision(self, obj: dict[str, Any]) -> None:
        lf.check_record(obj["record"])
        decided = lf.check_decision(obj["decision"], obj["record"])
        lift = obj["record"]["lift"]
        try:
            self.lifts[lift] = lf.advance(self.lifts.get(lift), decided)
        except t.Refusal as why:
            assert why.code == "bad_state", why  # a conflict would break the protocol
            return
        self.records[lift] = obj["record"]
        for uuid, chit in self.chits.items():
            if chit.chit["ref"] == {"lift": lift} and chit.state in PENDING:
                self.chits[uuid] = lift_decided(chit, decided)


@dataclass
class Message:
    send: Send
    sender: ChipAddress  # the user (or node) it comes from


class LiftNetwork(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.nodes = [Node(user) for user in USERS[:5]]
        self.by_agent = {node.address.agent: node for node in self.nodes}
        self.now = NOW
        self.bag: list[Message] = []
        self.outbox: list[Message] = []
        self.decisions: dict[str, dict[str, Any]] = {}  # the referee's store
        self.first_seen: dict[str, str] = {}
        self.lift_count = 0

    @initialize(data=st.data())
    def network(self, data: st.DataObject) -> None:
        for n, (i, j) in enumerate(PAIRS):
            if data.draw(st.booleans()):
                i, j = j, i
            stock_limit = data.draw(st.integers(0, 3_000))
            foil_limit = data.draw(st.integers(0, 3_000))
            start = data.draw(st.integers(-foil_limit, stock_limit))  # the stock's balance
            stock, foil = self.nodes[i], self.nodes[j]
            tally = uuid_of(n + 1)
            stock.holdings[tally], foil.holdings[tally] = open_tally(
                tally, stock.user, foil.user, stock_limit=stock_limit, foil_limit=foil_limit)
            stock.initial[tally], foil.initial[tally] = start, -start

    # -- the runtime's part -------------------------------------------------------------------

    def post(self, sends: list[Send], sender: ChipAddress) -> None:
        for send in sends:
            message = Message(send, ChipAddress(agent=sender.agent, cuid=send.from_cuid))
            self.bag.append(message)
            self.outbox.append(message)

    def discover(self, payor: Node, kind: str, find: Node, units: int) -> list[dict[str, Any]]:
        """Route discovery, delivered at once and in order (its losses are not modelled):
        queries out, answers back hop by hop through each node's relay."""
        query = uuid_of(10_000 + self.lift_count)
        started = rt.start(query=query, kind=kind, payor=payor.address, find=find.address,
                           units=units, depth=5, deadline=self.now + LIFE,
                           candidates=payor.candidates(kind))
        search = rt.Search(query, units, [send.to for send in started.messages],
                           started.found)
        queue = deque((send, payor.address) for send in started.messages)
        relays: dict[Node, rt.Relay | None] = {}
        while queue:
            send, sender = queue.popleft()
            node = self.by_agent[send.to.agent]
            if send.action != "query":
                relay = relays.get(node)
                if relay is None:
                    assert node is payor
                    search.on_answer(send.action, send.object, sender)
                else:
                    queue.extend((up, node.address)
                                 for up in relay.on_answer(send.action, send.object, sender))
                continue
            if node in relays:
                out = rt.repeat(send.object, here=node.address, sender=sender)
            else:
                out = rt.forward(send.object, here=node.address, sender=sender,
                                 now_ms=self.now, candidates=node.candidates(kind))
                relays[node] = out.relay
            queue.extend((message, node.address) for message in out.messages)
        assert search.done
        return search.routes

    def deliver(self, message: Message) -> None:
        send, sender = message.send, message.sender
        if send.action in lf.EVENTS:
            kept = self.decisions.get(send.object["record"]["lift"])
            decision, sends = lf.decide(kept, send.action, send.object["record"],
                                        now_ms=self.now, key=REFEREE, asker=sender.agent)
            if decision is not None:
                self.decisions[decision["lift"]] = decision
            self.post(sends, ChipAddress(agent=REFEREE.agent_id))
            return
        node = self.by_agent[send.to.agent]
        if send.action == "promise":
            self.post(node.on_promise(send.object, sender, self.now), node.address)
        else:
            node.on_decision(send.object)

    # -- rules --------------------------------------------------------------------------------

    @rule(payor=st.integers(0, 4), find=st.integers(0, 4), circular=st.booleans(),
          units=st.integers(1, 1_500), pick=st.integers(0, 5))
    def start_lift(self, payor: int, find: int, circular: bool, units: int, pick: int) -> None:
        kind = "circular" if circular else "linear"
        if circular:
            find = payor
        elif find == payor:
            return
        origin = self.nodes[payor]
        routes = self.discover(origin, kind, self.nodes[find], units)
        if not routes:
            return
        route = routes[pick % len(routes)]
        assert route["capacity"] >= units
        self.lift_count += 1
        record = lf.make_record(
            lift_uuid=uuid_of(20_000 + self.lift_count), kind=kind, units=units,
            path=rt.lift_path(route), referee=REFEREE_ADDRESS, date_ms=self.now,
            life_ms=LIFE, memo="", key=origin.user.key)
        self.post(origin.originate(record), origin.address)

    @rule(count=st.integers(1, 30), seed=st.integers(0, 2**32))
    def deliver_some(self, count: int, seed: int) -> None:
        """Deliver ``count`` messages picked in a random order."""
        order = random.Random(seed)
        for _ in range(min(count, len(self.bag))):
            self.deliver(self.bag.pop(order.randrange(len(self.bag))))

    @rule(mishap=st.sampled_from(["lose", "duplicate", "retry"]), pick=st.integers(0, 10**6))
    def mishap(self, mishap: str, pick: int) -> None:
        """A message is lost or duplicated, or the outbox sends one again (it cannot know
        whether it was delivered)."""
        if mishap == "retry" and self.outbox:
            self.bag.append(self.outbox[pick % len(self.outbox)])
        elif self.bag:
            message = self.bag.pop(pick % len(self.bag))
            self.bag += [message, message] if mishap == "duplicate" else []

    @rule(ms=st.integers(1, LIFE // 4))
    def tick(self, ms: int) -> None:
        self.now += ms

    @rule(who=st.integers(0, 4))
    def ask_referee(self, who: int) -> None:
        node = self.nodes[who]
        for lift, state in node.lifts.items():
            if state == lf.PEND:
                self.post([lf.query(node.records[lift], from_cuid=node.address.cuid)],
                          node.address)

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def a_nodes_chits_of_one_lift_agree_with_its_state(self) -> None:
        for node in self.nodes:
            classes: dict[str, set[str]] = {}
            for chit in node.chits.values():
                classes.setdefault(chit.chit["ref"]["lift"], set()).add(chit_class(chit.state))
            for lift, seen in classes.items():
                assert len(seen) == 1, (lift, seen)
                assert seen == {node.lifts[lift]}

    @invariant()
    def decisions_never_change_and_nodes_follow_them(self) -> None:
        for lift, decision in self.decisions.items():
            assert self.first_seen.setdefault(lift, decision["state"]) == decision["state"]
        for node in self.nodes:
            for lift, state in node.lifts.items():
                if state in lf.DECISIONS:
                    assert self.decisions[lift]["state"] == state

    @invariant()
    def pending_and_good_chits_stay_within_limits(self) -> None:
        for node in self.nodes:
            for tally, local in node.holdings.items():
                balance = node.balance(tally)
                owed_to_us = balance + node.reserved(tally, local.partner_side)
                we_owe = -(balance - node.reserved(tally, local.side))
                assert owed_to_us <= max(local.tally[local.side]["terms"]["limit"],
                                         node.initial[tally])
                assert we_owe <= max(local.tally[local.partner_side]["terms"]["limit"],
                                     -node.initial[tally])

    @invariant()
    def a_chit_good_at_one_holder_is_held_by_the_other(self) -> None:
        for node in self.nodes:
            for uuid, chit in node.chits.items():
                partner = self.by_agent[node.holdings[chit.chit["tally"]].partner.agent]
                theirs = partner.chits.get(uuid)
                if chit.state in GOOD:
                    assert theirs is not None and theirs.state not in VOID
                    assert theirs.chit == chit.chit

    def teardown(self) -> None:
        """Quiescence: the network heals (no more loss), then every deadline passes and
        everyone still pending asks the referee."""
        while self.bag:
            self.deliver(self.bag.pop(0))
        self.now += 2 * LIFE
        for _ in range(10):
            for node in self.nodes:
                self.ask_referee(self.nodes.index(node))
            while self.bag:
                self.deliver(self.bag.pop(0))
            if all(state != lf.PEND for node in self.nodes for state in node.lifts.values()):
                break
        self.a_nodes_chits_of_one_lift_agree_with_its_state()
        self.decisions_never_change_and_nodes_follow_them()
        total = 0
        for node in self.nodes:
            assert lf.PEND not in node.lifts.values()
            for tally, local in node.holdings.items():
                partner = self.by_agent[local.partner.agent]
                assert node.balance(tally) == -partner.balance(tally)
                total += node.balance(tally)
                mine, theirs = ({u: ch.chit for u, ch in holder.chits.items()
                                 if ch.chit["tally"] == tally and ch.state in GOOD}
                                for holder in (node, partner))
                assert mine == theirs  # (a void chit may be held by one side only)
        assert total == 0
        self.check_each_good_lift()

    def check_each_good_lift(self) -> None:
        circular_only: dict[tuple[int, str], bool] = {}
        for lift, decision in self.decisions.items():
            if decision["state"] != lf.GOOD:
                continue
            record = next(n.records[lift] for n in self.nodes if lift in n.records)
            users = [(hop["cuid"], hop["agent"]) for hop in record["path"]]
            for at, node in enumerate(self.nodes):
                net = sum(effect(ch.chit, node.holdings[ch.chit["tally"]].side)
                          for ch in node.chits.values() if ch.chit["ref"] == {"lift": lift})
                me = (node.address.cuid, node.address.agent)
                expected = 0
                if record["kind"] == "linear" and me == users[0]:
                    expected = -record["units"]
                elif record["kind"] == "linear" and me == users[-1]:
                    expected = record["units"]
                assert net == expected, (record["kind"], at, net, expected)
                for ch in node.chits.values():
                    if ch.chit["ref"] == {"lift": lift}:
                        key = (at, ch.chit["tally"])
                        circle = record["kind"] == "circular"
                        circular_only[key] = circular_only.get(key, True) and circle
        for (at, tally), only in circular_only.items():
            if only:  # clearing alone moved this balance: toward zero, never past it
                node = self.nodes[at]
                before, after = node.initial[tally], node.balance(tally)
                assert abs(after) <= abs(before) and after * before >= 0


LiftNetwork.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestLiftNetwork = LiftNetwork.TestCase
