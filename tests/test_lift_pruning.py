"""A void lift is kept 30 days, then the hourly maintenance forgets it with its void lift
chits: a partner whose promises keep failing cannot make a node keep rows for good. Good lifts
are history and stay, as does every decision the referee made (its void ones go a month on
its own clock: test_referee_bounds)."""

from __future__ import annotations

from agentd.runtime.clock import Clock
from agentd.runtime.context import Reject
from tests.netfixture import network
from tests.test_credit_service import refused, rpc
from tests.test_lifts import line, settled_everywhere, who

MONTH_MS = 31 * 24 * 3600 * 1000


class AMonthLater(Clock):
    def now_ms(self) -> int:
        return super().now_ms() + MONTH_MS


async def test_void_lifts_are_forgotten_after_30_days_good_ones_and_decisions_kept(tmp_path):
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        world = await line(net)
        u, tl = world["users"], world["tallies"]
        ann, bob, cat, dan = (u[name] for name in ("ann", "bob", "cat", "dan"))
        good = await rpc(ann, "lift.pay", cuid="ann", find=who(dan, "dan"), units=100)
        await settled_everywhere(list(u.values()), good["lift"], "good")

        def no_room(tx, envelope):
            raise Reject("OVER_LIMIT", "no room (a test)")

        cat.credit.lifts._on_promise = no_room  # cat refuses: ann and bob hold void chits
        void = await rpc(ann, "lift.pay", cuid="ann", find=who(dan, "dan"), units=100)
        await settled_everywhere([ann, bob], void["lift"], "void")

        def void_chits(node, cuid):
            return [tally for tally in tl.values() for chit in node.db.read(
                "SELECT lift FROM chits WHERE tally = ? AND cuid = ?", (tally, cuid))
                if chit["lift"] == void["lift"]]

        assert len(void_chits(bob, "bob")) == 2 and len(void_chits(ann, "ann")) == 1
        await net.nodes[0]._maintenance()  # now: nothing is old enough
        for node in (ann, bob):
            node.clock = AMonthLater()
            await node._maintenance()
        for node, cuid in ((ann, "ann"), (bob, "bob")):
            assert (await refused(node, "lift.show", lift=void["lift"])).reason == \
                "UNKNOWN_LIFT"
            assert void_chits(node, cuid) == []
            assert (await rpc(node, "lift.show", lift=good["lift"]))["state"] == "good"
            assert [lift["lift"] for lift in await rpc(node, "lift.list", cuid=cuid)] == [
                good["lift"]]
        decided = {row["lift"]: row["state"] for row in net.nodes[0].db.read(
            "SELECT lift, state FROM lift_decisions")}
        assert decided == {good["lift"]: "good", void["lift"]: "void"}
        chits = await rpc(bob, "chit.list", cuid="bob", tally=tl["bobcat"])
        assert [(chit["type"], chit["state"]) for chit in chits] == [("lift", "L.good")]
