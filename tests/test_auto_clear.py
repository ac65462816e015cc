"""``[lift] auto_clear`` on a dense net: rounds spread at random round ``interval_s``, one lift
at a time, each waited for until decided, and a lift a hop cancelled (it lost a race for a
hop's room) tried again after a random, growing wait — so that clearing on every node at once
wastes few lifts on void circles, and keeps every invariant."""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace
from typing import Any

import trio

from agentd.config import LiftConfig
from agentd.runtime.context import Reject
from agentd.services.credit import lift_follow_up
from agentd.services.credit.lift_follow_up import RACE_TRIES, FollowUp
from tests.clearing_net import dense_clearing

LIFE_S = 120
TOOK_S = 1.0  # how long each stub lift takes to be decided


class Lifts:
    """Auto clearing's side of a node: its ``creditors``, and lifts through each that end as
    ``endings`` say, one after the other (``good``; ``cancelled``, void before the deadline;
    ``late``, void at it; ``pend``, undecided; ``none``, NO_CYCLE), each decided ``TOOK_S``
    after it starts. ``events`` logs what was done when."""

    def __init__(self, creditors: list[str], endings: dict[str, list[str]]) -> None:
        self.creditors, self.endings = creditors, endings
        self.events: list[tuple[float, str, str]] = []
        self.rounds: list[float] = []  # when each round read the creditors
        self.started: dict[str, str] = {}  # lift -> how it ends
        lift = LiftConfig(auto_clear=True, minimum=5, interval_s=60.0, life_s=LIFE_S)
        runtime = SimpleNamespace(config=SimpleNamespace(lift=lift), db=self,
                                  clock=SimpleNamespace(now_ms=self.now_ms))
        ledger = SimpleNamespace(store=SimpleNamespace(creditors=self.read_creditors))
        self.follow_up = FollowUp(runtime, ledger, self.clear, self.decided)

    @staticmethod
    def now_ms() -> int:
        return round(trio.current_time() * 1000)

    async def write(self, work: Any) -> Any:
        return work(None)

    def read_creditors(self, conn: None, minimum: int) -> list[str]:
        assert minimum == 5
        self.rounds.append(trio.current_time())
        return list(self.creditors)

    async def clear(self, cuid: str, least: int, *, exact: bool, memo: str) -> dict:
        assert (least, exact, memo) == (5, False, "auto clear")
        ending = self.endings[cuid].pop(0)
        self.events.append((trio.current_time(), "start", cuid))
        if ending == "none":
            raise Reject("NO_CYCLE", f"no debt cycle through {cuid}")
        lift = f"{cuid}{len(self.started)}"
        self.started[lift] = ending
        return {"lift": lift, "units": 10, "deadline": self.now_ms() + LIFE_S * 1000}

    async def decided(self, lift: str, timeout_s: float) -> dict:
        began, ending = self.now_ms(), self.started[lift]
        deadline = began + LIFE_S * 1000
        if ending == "pend":
            assert timeout_s >= LIFE_S
            await trio.sleep(timeout_s)
            return {"lift": lift, "state": "pend", "deadline": deadline, "decision": None}
        await trio.sleep(TOOK_S)
        self.events.append((trio.current_time(), "decided", lift))
        date = deadline if ending == "late" else self.now_ms()
        return {"lift": lift, "state": "good" if ending == "good" else "void",
                "deadline": deadline, "decision": {"state": "void", "date": date}}

    def starts(self) -> list[tuple[float, str]]:
        return [(when, cuid) for when, what, cuid in self.events if what == "start"]


async def test_a_round_starts_one_lift_at_a_time_each_once_the_last_is_decided(autojump_clock):
    node = Lifts(["ann", "bob", "cat", "dan"],
                 {"ann": ["good"], "bob": ["none"], "cat": ["good"], "dan": ["late"]})
    await node.follow_up._clear_creditors()
    assert [(what, who) for _, what, who in node.events] == [
        ("start", "ann"), ("decided", "ann0"), ("start", "bob"), ("start", "cat"),
        ("decided", "cat1"), ("start", "dan"), ("decided", "dan2")]  # a late void: not again


async def test_a_lift_a_hop_cancelled_is_tried_again_after_a_random_growing_wait(
        autojump_clock, monkeypatch):
    monkeypatch.setattr(lift_follow_up, "_RANDOM", SimpleNamespace(uniform=max))  # the longest
    node = Lifts(["ann", "bob"], {"ann": ["cancelled"] * RACE_TRIES, "bob": ["cancelled", "good"]})
    await node.follow_up._clear_creditors()
    starts = node.starts()
    assert [cuid for _, cuid in starts] == ["ann"] * RACE_TRIES + ["bob"] * 2
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(starts)]
    # up to 4, then 8 times what the cancelled lift took; none after the last try
    assert RACE_TRIES == 3 and gaps == [TOOK_S * 5, TOOK_S * 9, TOOK_S, TOOK_S * 5]


async def test_a_lift_still_pending_past_its_deadline_ends_the_round(autojump_clock):
    node = Lifts(["ann", "bob"], {"ann": ["pend"], "bob": ["good"]})
    await node.follow_up._clear_creditors()
    assert node.starts() == [(0, "ann")]  # its referee does not decide: bob waits for a round
    assert trio.current_time() == LIFE_S + lift_follow_up.DECIDED_GRACE_S


async def test_rounds_come_at_random_between_half_and_one_and_a_half_intervals(
        autojump_clock, monkeypatch):
    monkeypatch.setattr(lift_follow_up, "_RANDOM", random.Random(4))
    node = Lifts([], {})
    with trio.move_on_after(3000):
        await node.follow_up.auto_clear()
    gaps = [later - earlier for earlier, later in itertools.pairwise([0.0, *node.rounds])]
    assert len(gaps) > 30 and all(30 <= gap <= 90 for gap in gaps)
    assert len(set(gaps)) == len(gaps)  # nodes started together drift apart at once


async def test_clearing_on_every_node_of_a_dense_net_at_once_keeps_every_invariant(tmp_path):
    """Six nodes of three users each and about fifty tallies, every debt cycle cleared by
    ``auto_clear`` on every node turned on at once: each lift ended the same everywhere, each
    node's chits of it agree, chains agree and balances are opposite (``dense_clearing``
    asserts it), no debt cycle is left, and the good circles took off the debt exactly what
    it fell by."""
    counts = await dense_clearing(tmp_path, seed=3)
    assert counts["cycles_before"] and counts["good"] >= 1 and counts["pend"] == 0
    assert counts["debt_before"] - counts["debt_after"] == counts["cleared"] > 0
    assert counts["void"] == counts["raced"]  # nothing went void but for a lost race
