"""A peer whose clock is set wrong is named: its offset from the send times on its messages
(``agentd.runtime.clocks``), in ``peers.list``, in one warning, and in the reason a lift its
referee voided late gives."""

from __future__ import annotations

import logging
import re

from agentd.runtime import clocks
from agentd.runtime.clock import Clock
from agentd.runtime.clocks import WARN_MS, WINDOW_MS, PeerClocks
from tests.netfixture import network, wait_for
from tests.test_credit_service import rpc
from tests.test_lifts import line, settled_everywhere, who

AHEAD_MS = 600_000


class Ahead(Clock):
    """A wall clock ten minutes fast."""

    def now_ms(self) -> int:
        return super().now_ms() + AHEAD_MS


def test_the_estimate_is_the_largest_recent_sample_and_follows_a_clock_put_right(caplog):
    caplog.set_level(logging.WARNING, logger="agentd.runtime.clocks")
    peer = PeerClocks()
    now = 1_000_000
    assert peer.ahead_ms("a") is None
    peer.sample("a", now + 7_000 - 40, now)  # 7 s ahead, 40 ms in transit
    peer.sample("a", now + 7_000 - 900, now + 10)  # held up: looks less ahead
    assert peer.ahead_ms("a") == 6_960
    assert [r.getMessage() for r in caplog.records] == [
        "the clock of agent a is 7.0 s ahead of ours (the send times on its messages): lifts "
        "it decides, or deadlines it sets, expire that much early; check the time (NTP) on "
        "both hosts"]
    peer.sample("a", now + 7_000, now + 20)  # once is enough (and 20 ms later: 6,980)
    assert len(caplog.records) == 1
    # the peer's clock is put right: the old samples age out within a window
    later = now + WINDOW_MS // 2
    peer.sample("a", later - 5, later)
    assert peer.ahead_ms("a") == 6_980  # the previous half window still counts
    peer.sample("a", later + WINDOW_MS // 2 - 3, later + WINDOW_MS // 2)
    assert peer.ahead_ms("a") == -3
    assert caplog.records[-1].getMessage() == "the clock of agent a agrees with ours again"
    # a long silence forgets both halves
    peer.sample("b", now + 9_000, now)
    peer.sample("b", now + 2 * WINDOW_MS - 1, now + 2 * WINDOW_MS)
    assert peer.ahead_ms("b") == -1


def test_behind_is_never_warned_of_and_the_table_is_bounded(caplog, monkeypatch):
    caplog.set_level(logging.WARNING, logger="agentd.runtime.clocks")
    monkeypatch.setattr(clocks, "MAX_PEERS", 3)
    peer = PeerClocks()
    peer.sample("slow", 0, 10 * WARN_MS)  # behind, or a slow path: it cannot tell which
    assert peer.ahead_ms("slow") == -10 * WARN_MS and caplog.records == []
    for agent in ("a", "b", "c"):
        peer.sample(agent, 5, 5)
    assert peer.ahead_ms("slow") is None and peer.ahead_ms("c") == 0


def test_a_strangers_clock_is_told_at_debug_only(caplog):
    """200 fresh identities, each with a clock a minute ahead, wrote 200 warnings telling the
    operator to check NTP: a stranger's clock is not the node's to fix. It is still kept
    (peers.list shows it while the stranger is connected)."""
    caplog.set_level(logging.DEBUG, logger="agentd.runtime.clocks")
    peer = PeerClocks()
    for agent in ("s1", "s2"):
        peer.sample(agent, 60_000, 0, known=False)
    assert peer.ahead_ms("s1") == 60_000
    assert [r.levelno for r in caplog.records] == [logging.DEBUG, logging.DEBUG]


async def test_peers_list_shows_a_peers_clock_and_the_one_behind_warns(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="agentd.runtime.clocks")
    async with network(tmp_path, n=2) as net:
        slow, fast = net.nodes
        fast.clock = Ahead()
        await rpc(fast, "peers.ping", agent=slow.agent_id)
        await rpc(slow, "peers.ping", agent=fast.agent_id)

        seen = {p["agent"]: p for p in await rpc(slow, "peers.list")}
        assert AHEAD_MS - 1_000 < seen[fast.agent_id]["clock_ahead_ms"] <= AHEAD_MS
        seen = {p["agent"]: p for p in await rpc(fast, "peers.list")}
        assert -AHEAD_MS - 1_000 < seen[slow.agent_id]["clock_ahead_ms"] <= -AHEAD_MS + 1_000
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1, warnings
        assert re.fullmatch(rf"the clock of n1 \(agent {fast.agent_id[:8]}\) is "
                            r"(599\.\d|600\.0) s ahead of ours .*", warnings[0])


async def test_a_lift_voided_by_a_referee_whose_clock_is_fast_says_so(tmp_path):
    """The referee's clock is ten minutes fast: the terminus's commit reaches it after the
    lift's deadline by its clock, and it voids the lift. Each participant's reason names the
    referee's clock, as its messages showed it."""
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        world = await line(net)
        u = world["users"]
        ann, dan = u["ann"], u["dan"]
        net.nodes[0].clock = Ahead()
        started = await rpc(ann, "lift.pay", cuid="ann", find=who(dan, "dan"), units=100)
        await settled_everywhere(list(u.values()), started["lift"], "void")
        for node in u.values():
            await wait_for(lambda node=node: node.clocks.ahead_ms(net.nodes[0].agent_id)
                           is not None)
            shown = await rpc(node, "lift.show", lift=started["lift"])
            assert re.fullmatch(
                r"the referee voided it: its deadline passed before the terminus's commit "
                r"reached it \(a node on the path, or the referee, down or slow; or clocks "
                r"apart: the referee's is \+(599\.\d|600\.0) s from this node's\)",
                shown["error"]), shown["error"]
