"""A node clears one circle at a time: two ``lift.clear`` calls at once whose cycles share a
hop no longer both start on the debt their searches both saw, so that the hop's holder
cancels the second (void, moving nothing); the second searches once the first is decided."""

from __future__ import annotations

import trio

from agentd.rpc import RpcError
from tests.netfixture import network, wait_for
from tests.test_lifts import balance, open_tally, rpc, triangle


async def test_two_clearings_at_once_over_a_shared_hop_do_not_void_each_other(tmp_path):
    """ann and dan, both on n1, each sit on a debt cycle through bob's tally with cat, which
    can clear 300: ann->bob->cat->ann and dan->bob->cat->dan. Both call lift.clear at once:
    one circle clears the 300, and the other finds no cycle left, rather than a circle that
    a hop voids."""
    async with network(tmp_path, n=4, clearinghouse=0) as net:
        users, _, bc, _ = await triangle(net)
        ann_node, bob, cat = users["ann"], users["bob"], users["cat"]
        await rpc(ann_node, "users.add", cuid="dan")
        db = await open_tally(ann_node, "dan", bob, "bob")
        cd = await open_tally(cat, "cat", ann_node, "dan")
        await rpc(bob, "chit.pay", cuid="bob", tally=db, units=500)  # bob owes dan
        await rpc(ann_node, "chit.pay", cuid="dan", tally=cd, units=400)  # dan owes cat
        await wait_for(lambda: balance(ann_node, "dan", db) == 500
                       and balance(cat, "cat", cd) == 400)
        outcomes: dict[str, object] = {}

        async def clear(cuid: str) -> None:
            try:
                outcomes[cuid] = await rpc(ann_node, "lift.clear", cuid=cuid)
            except RpcError as exc:
                outcomes[cuid] = exc

        async with trio.open_nursery() as nursery:
            for cuid in ("ann", "dan"):
                nursery.start_soon(clear, cuid)
        started = [shown for shown in outcomes.values() if isinstance(shown, dict)]
        assert len(started) == 1, outcomes
        (other,) = [error for error in outcomes.values() if not isinstance(error, dict)]
        assert other.reason == "NO_CYCLE", other
        assert started[0]["units"] == 300
        done = await rpc(ann_node, "lift.wait", lift=started[0]["lift"], timeout_s=20)
        assert done["state"] == "good", done
        await wait_for(lambda: balance(bob, "bob", bc) == 0 == balance(cat, "cat", bc))
        for node in (ann_node, bob, cat):
            assert [lift["state"] for lift in await rpc(node, "lift.list")] == ["good"]
