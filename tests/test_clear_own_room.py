"""``lift.clear`` without ``units`` clears what the cycle's route answer says it carries, but
no more than the originator's own first and last hops carry: a partner that inflates the
capacity it answers (with one down the path that promises on regardless) cannot make the
circle fail at our own terminus check, holding our first hop until its referee voids it."""

from __future__ import annotations

from typing import Any

from protocol.chit_lift import lift_chit
from protocol.messages import Send
from protocol.route_fields import path_entry
from tests.netfixture import network, wait_for
from tests.test_credit_service import open_tally, refused, rpc
from tests.test_lifts import balance, settled_everywhere

CLAIMED = 500  # what bob says the cycle carries; ann's own last hop carries 400


def answering_inflated(bob, cat, ann, bc: str, ca: str) -> None:
    """bob answers ann's cycle query at once with the route through cat back to ann, every
    hop said to carry CLAIMED (a good's sender makes up its rest of the path)."""
    routes = bob.credit.routes
    handle = routes.handle

    def answering(tx, envelope):
        if envelope.action != "query":
            return handle(tx, envelope)
        obj = envelope.object
        path = [*obj["path"], path_entry(bob.own_address("bob"), bc, CLAIMED),
                path_entry(cat.own_address("cat"), ca, CLAIMED),
                path_entry(ann.own_address("ann"), None, None)]
        tx.send(Send(envelope.from_, "route", "good", {
            "query": obj["query"], "path": path, "capacity": CLAIMED, "goods": 1,
            "frontier": 0}, "bob"))

    routes.handle = answering


def promising_regardless(node) -> None:
    """``node`` promises on over more than its own hop carries, as a hostile node can."""
    lifts = node.credit.lifts

    def unchecked(tx, record, hop, cuid, *, outgoing, holding=None):
        if holding is None:
            holding = lifts.ledger.holding(tx.conn, record["path"][hop]["tally"], cuid)
        units = record["units"]
        lifts.ledger.commit(tx, holding, fresh=[lift_chit(record, hop, holding.local)],
                            lift_delta=(0, units) if outgoing else (units, 0))

    lifts._hold = unchecked


async def test_a_clear_takes_no_more_than_our_own_hops_carry(tmp_path):
    """bob owes ann 500, cat owes bob 500, ann owes cat 400: the cycle carries 400, bob says
    500. ann clears 400 and the circle is good (without the cap: 500, void at ann's own last
    hop, which carries 400)."""
    async with network(tmp_path, n=4, clearinghouse=0) as net:
        users = {"ann": net.nodes[1], "bob": net.nodes[2], "cat": net.nodes[3]}
        for cuid, node in users.items():
            await rpc(node, "users.add", cuid=cuid)
        ann, bob, cat = users.values()
        ab = await open_tally(ann, "ann", bob, "bob")
        bc = await open_tally(bob, "bob", cat, "cat")
        ca = await open_tally(cat, "cat", ann, "ann")
        await rpc(bob, "chit.pay", cuid="bob", tally=ab, units=500)
        await rpc(cat, "chit.pay", cuid="cat", tally=bc, units=500)
        await rpc(ann, "chit.pay", cuid="ann", tally=ca, units=400)
        await wait_for(lambda: balance(ann, "ann", ab) == 500 and balance(bob, "bob", bc) == 500
                       and balance(cat, "cat", ca) == 400 and balance(ann, "ann", ca) == -400)
        answering_inflated(bob, cat, ann, bc, ca)
        promising_regardless(cat)

        asked = await refused(ann, "lift.clear", cuid="ann", units=450)  # more than ours carry
        assert asked.reason == "OVER_LIMIT" and "can carry 400 mCHIP now" in asked.message
        assert await rpc(ann, "lift.list", cuid="ann") == []  # nothing promised, nothing held

        cleared: dict[str, Any] = await rpc(ann, "lift.clear", cuid="ann")
        assert cleared["units"] == 400
        done = await rpc(ann, "lift.wait", lift=cleared["lift"], timeout_s=20)
        assert done["state"] == "good", done
        await settled_everywhere(list(users.values()), cleared["lift"], "good")
        await wait_for(lambda: balance(ann, "ann", ab) == 100 and balance(ann, "ann", ca) == 0)
