"""A closing tally (``C.open``: no chit may raise its balance's magnitude) carries lifts that
bring its balance toward zero, as ``tally.show`` says it can (``capacity``): a clearing or a
payment through it is what settles it without its partner paying by hand. Routes once took
open tallies alone, so a debt cycle through a closing tally answered ``NO_CYCLE`` and a
payment ``NO_ROUTE`` (a new user found it)."""

from __future__ import annotations

from tests.netfixture import network, wait_for
from tests.test_credit_service import open_tally, refused, rpc
from tests.test_lifts import balance, line, settled_everywhere, triangle, who


def state(node, cuid: str, tally: str) -> str:
    return node.db.read_one("SELECT state FROM tallies WHERE uuid = ? AND cuid = ?",
                            (tally, cuid))[0]


async def closing(node, cuid: str, tally: str, partner, partner_cuid: str) -> None:
    await rpc(node, "tally.close", cuid=cuid, tally=tally)
    await wait_for(lambda: state(node, cuid, tally) == "C.open"
                   and state(partner, partner_cuid, tally) == "C.open")


async def test_a_debt_cycle_through_a_closing_tally_clears_and_closes_it(tmp_path):
    """bob owes ann 500, cat owes bob 300, ann owes cat 400, and ann closes her tally with
    cat: clearing the cycle (300) leaves her owing 100 on it, and clearing it again once
    bob owes cat more takes that 100 and the tally closes (fails without: NO_CYCLE). Asked
    for 150 there, lift.clear says the cycle can clear at most 100 (OVER_LIMIT, as the
    README says of units over what a cycle carries; it answered NO_CYCLE, as if none
    existed)."""
    async with network(tmp_path, n=4, clearinghouse=0) as net:
        users, _, bc, ca = await triangle(net)
        ann, bob, cat = users["ann"], users["bob"], users["cat"]
        await closing(ann, "ann", ca, cat, "cat")
        shown = await rpc(ann, "tally.show", cuid="ann", tally=ca)
        assert shown["capacity"] == {"pay": 0, "receive": 400}  # only toward zero

        cleared = await rpc(ann, "lift.clear", cuid="ann")
        assert cleared["units"] == 300
        assert [hop["cuid"] for hop in cleared["path"]] == ["ann", "bob", "cat", "ann"]
        assert (await rpc(ann, "lift.wait", lift=cleared["lift"], timeout_s=20))["state"] == \
            "good"
        await settled_everywhere([ann, bob, cat], cleared["lift"], "good")
        await wait_for(lambda: balance(ann, "ann", ca) == -100 and balance(cat, "cat", ca) == 100)
        assert state(ann, "ann", ca) == "C.open"

        await rpc(cat, "chit.pay", cuid="cat", tally=bc, units=100)  # cat owes bob 100 again
        await wait_for(lambda: balance(bob, "bob", bc) == 100)
        asked = await refused(ann, "lift.clear", cuid="ann", units=150)  # more than ca owes
        assert asked.reason == "OVER_LIMIT", asked
        assert "can clear at most 100 mCHIP now, not 150" in asked.message
        assert await rpc(ann, "lift.list", cuid="ann") == [
            await rpc(ann, "lift.show", lift=cleared["lift"])]  # nothing promised
        again = await rpc(ann, "lift.clear", cuid="ann")
        assert again["units"] == 100
        assert (await rpc(ann, "lift.wait", lift=again["lift"], timeout_s=20))["state"] == "good"
        await wait_for(lambda: state(ann, "ann", ca) == "close"
                       and state(cat, "cat", ca) == "close")
        assert balance(ann, "ann", ca) == 0 and balance(cat, "cat", ca) == 0


async def test_a_payment_crosses_a_closing_tally_only_toward_zero(tmp_path):
    """ann - bob - cat - dan; dan owes cat 300 and cat closes that tally. ann pays dan 200
    through it (dan's debt falls to 100), then 200 more is NO_ROUTE (100 is left), and dan
    paying ann would raise his debt: NO_ROUTE, nothing promised (fails without: the first
    payment is NO_ROUTE)."""
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        world = await line(net)
        u, tl = world["users"], world["tallies"]
        cd = tl["catdan"]
        await rpc(u["dan"], "chit.pay", cuid="dan", tally=cd, units=300)
        await wait_for(lambda: balance(u["cat"], "cat", cd) == 300)
        await closing(u["cat"], "cat", cd, u["dan"], "dan")

        paid = await rpc(u["ann"], "lift.pay", cuid="ann", find=who(u["dan"], "dan"),
                         units=200)
        assert (await rpc(u["ann"], "lift.wait", lift=paid["lift"], timeout_s=20))["state"] == \
            "good"
        await settled_everywhere(list(u.values()), paid["lift"], "good")
        await wait_for(lambda: balance(u["cat"], "cat", cd) == 100
                       and balance(u["dan"], "dan", cd) == -100)
        shown = await rpc(u["cat"], "tally.show", cuid="cat", tally=cd)
        assert shown["state"] == "C.open" and shown["capacity"] == {"pay": 100, "receive": 0}

        over = await refused(u["ann"], "lift.pay", cuid="ann", find=who(u["dan"], "dan"),
                             units=200)
        assert over.reason == "NO_ROUTE", over
        away = await refused(u["dan"], "lift.pay", cuid="dan", find=who(u["ann"], "ann"),
                             units=50)
        assert away.reason == "NO_ROUTE", away
        assert len(await rpc(u["dan"], "lift.list", cuid="dan")) == 1  # the payment to dan


async def test_auto_clear_finds_a_user_owed_on_a_closing_tally(tmp_path):
    """The clearing scheduler's users owed on some tally count closing tallies too."""
    async with network(tmp_path, n=3) as net:
        ann, bob = net.nodes[1], net.nodes[2]
        for cuid, node in (("ann", ann), ("bob", bob)):
            await rpc(node, "users.add", cuid=cuid)
        ab = await open_tally(ann, "ann", bob, "bob")
        await rpc(bob, "chit.pay", cuid="bob", tally=ab, units=70)
        await wait_for(lambda: balance(ann, "ann", ab) == 70)
        await closing(ann, "ann", ab, bob, "bob")
        owed = ann.db.reading(lambda conn: ann.credit.ledger.store.creditors(conn, 50))
        assert owed == ["ann"]
