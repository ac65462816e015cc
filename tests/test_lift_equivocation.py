"""A lift referee that equivocates, between real nodes (loopback, Noise, SQLite) and a real
clearing house: the referee (a node whose referee role is silenced, its agent key signing by
hand) signs both good and void on one lift and sends void to cat, good to everyone else, so
cat's partners on both its tallies hold the lift chit good (in their chains) and cat holds it
void. Every tally must still converge, on good (``protocol.lift_equivocation``); each node
keeps the proof, logs it as evidence, counts it and refuses that referee from then on."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from agentd.rpc import RpcError
from protocol import lift as lf
from protocol.codec import digest, unpack
from protocol.keys import ChipAddress, SigningKey, b64u
from tests.netfixture import network, wait_for
from tests.test_credit_service import agreed, processed, refusal_of, rpc, send_raw
from tests.test_lift_holds import lift_record
from tests.test_lifts import balance, line, reserved, settled_everywhere, who

UNITS = 70


async def hostile_lift(net, payor: str, payee: str, *, life_s: float = 600
                       ) -> tuple[dict, Any, dict[str, Any]]:
    """A lift of ``UNITS`` from ``payor`` to ``payee`` along the line, refereed by node 5,
    whose referee role takes commits and questions and answers none: every node on the path
    holds its pending chits. Returns (world, the referee node, the record)."""
    world = await line(net)
    u = world["users"]
    judge = net.nodes[5]
    payor_node = u[payor]
    payor_node.config = dataclasses.replace(payor_node.config, lift=dataclasses.replace(
        payor_node.config.lift, referee=judge.agent_id))
    asked: list[str] = []
    judge.credit.lifts.referee_role.handle = lambda tx, envelope: asked.append(envelope.action)
    started = await rpc(payor_node, "lift.pay", cuid=payor, find=who(u[payee], payee),
                        units=UNITS, life_s=life_s)
    await wait_for(lambda: "commit" in asked, timeout=20)
    row = payor_node.db.read_one("SELECT record FROM lifts WHERE lift = ?", (started["lift"],))
    return world, judge, unpack(row[0])


async def equivocate(judge, record: dict[str, Any], told: dict[Any, str]) -> dict[str, dict]:
    """The referee signs both decisions and sends each node the one ``told`` names."""
    decisions = {}
    for state, event in (("good", "commit"), ("void", "cancel")):
        decisions[state], _ = lf.decide(None, event, record, now_ms=judge.clock.now_ms(),
                                        key=judge.key, asker=record["path"][-1]["agent"])
    for node, state in told.items():
        await send_raw(judge, node, None, "lift", "decision",
                       {"record": record, "decision": decisions[state]}, None)
    return decisions


@pytest.mark.parametrize("payor,payee", [("ann", "dan"), ("dan", "ann")],
                         ids=["the stock pays", "the foil pays"])
async def test_every_tally_converges_on_good_when_the_referee_signs_both(tmp_path, payor,
                                                                         payee):
    """Each tally's inviter holds its stock side: ann pays dan over hops the stock pays on,
    dan pays ann over hops the foil pays on. Either way cat's two tallies are split (bob and
    dan good, cat void), a chain disagreement that lasted for ever before: now all four
    nodes end good, each tally with one block both holders confirmed and opposite balances."""
    relay = {"relay": {"access": [{"principal": "*", "resource": "lift:*"}]}}
    async with network(tmp_path, n=6, clearinghouse=0, sections=relay) as net:
        world, judge, record = await hostile_lift(net, payor, payee)
        u, tl, lift = world["users"], world["tallies"], record["lift"]
        cat = u["cat"]
        decisions = await equivocate(judge, record, {
            node: "void" if cuid == "cat" else "good" for cuid, node in u.items()})
        await settled_everywhere(list(u.values()), lift, "good")
        hops = {"annbob": ("ann", "bob"), "bobcat": ("bob", "cat"), "catdan": ("cat", "dan")}
        for name, (a, b) in hops.items():
            await wait_for(lambda t=tl[name], a=a, b=b: agreed(u[a], a, u[b], b, t, 1),
                           timeout=30)
            payer, paid = (a, b) if payor == "ann" else (b, a)
            assert (balance(u[payer], payer, tl[name]), balance(u[paid], paid, tl[name])) == (
                -UNITS, UNITS)
            assert reserved(u[a], a, tl[name]) == reserved(u[b], b, tl[name]) == (0, 0)
        # every node holds the proof, shows it, counts it and logged it at the clearing house
        for cuid, node in u.items():
            await wait_for(lambda node=node: node.counters.lift_equivocations == 1)
            shown = await rpc(node, "lift.show", lift=lift)
            assert shown["decision"]["state"] == "good", cuid
            assert shown["equivocation"]["state"] == "void", cuid
            assert shown["equivocation"]["sign"] == b64u(decisions["void"]["sign"])
            assert [chit["state"][2:] for chit in shown["chits"]] in (["good"], ["good"] * 2)
            pid = f"{node.agent_id}/{lift}/equivocation"
            await wait_for(lambda node=node, pid=pid: [tuple(row) for row in node.db.read(
                "SELECT status FROM receipts WHERE pid = ? AND kind = 'lift.equivocation'",
                (pid,))] == [("valid",)], timeout=15)
        shown = await rpc(cat, "lift.show", lift=lift)
        assert shown["error"].startswith(f"its referee {judge.agent_id} signed both good and "
                                         "void (it equivocated): it was void here and is good")
        # the proof is in cat's signed view of the lift, for anyone it lets read it
        asked = await rpc(u["ann"], "relay.query", address=f"{cat.agent_id}/agentd/lift:{lift}")
        view = (await rpc(u["ann"], "relay.wait", request_id=asked["request_id"]))["view"]
        assert view["payload"]["decision"]["state"] == "good"
        assert view["payload"]["equivocation"]["sign"] == b64u(decisions["void"]["sign"])
        logged = await rpc(u["ann"], "ch.query", pid=f"{cat.agent_id}/{lift}/equivocation")
        assert [entry["header"]["kind"] for entry in logged["entries"]] == ["lift.equivocation"]
        # the referee is refused: by a payor that names it, and by a hop a promise names it to
        with pytest.raises(RpcError) as caught:
            await rpc(u[payor], "lift.pay", cuid=payor, find=who(u[payee], payee), units=5)
        assert caught.value.reason == "REFEREE_REFUSED"
        assert caught.value.message.startswith(
            f"REFEREE_REFUSED: the lift referee {judge.agent_id} signed both good and void on "
            f"lift {lift} (it equivocated): this node takes no lift it referees (until "
            f"`lift.forgive referee={judge.agent_id}` on this node); name another in [lift] "
            "referee")
        promise = lift_record(u["bob"], "bob", cat, "cat", tl["bobcat"],
                              ChipAddress(agent=judge.agent_id))
        refused = await refusal_of(u["bob"], await send_raw(
            u["bob"], cat, "cat", "lift", "promise", {"record": promise, "hop": 0}, "bob"))
        assert refused.startswith(f"REFEREE_REFUSED: the lift referee {judge.agent_id} signed"
                                  f" both good and void on lift {lift}")
        assert cat.db.read_one("SELECT 1 FROM lifts WHERE lift = ?", (promise["lift"],)) is None
        # the tallies carry lifts as before, under the clearing house's refereeing
        payor_node = u[payor]
        payor_node.config = dataclasses.replace(payor_node.config, lift=dataclasses.replace(
            payor_node.config.lift, referee=None))
        again = await rpc(payor_node, "lift.pay", cuid=payor, find=who(u[payee], payee),
                          units=5)
        assert (await rpc(payor_node, "lift.wait", lift=again["lift"],
                          timeout_s=20))["state"] == "good"
        for name, (a, b) in hops.items():
            await wait_for(lambda t=tl[name], a=a, b=b: agreed(u[a], a, u[b], b, t, 2),
                           timeout=30)
        # the operator forgives the referee (once only): its lifts are taken again
        assert await rpc(cat, "lift.forgive", referee=judge.agent_id) == {
            "referee": judge.agent_id, "lift": lift, "forgiven": True}
        with pytest.raises(RpcError) as caught:
            await rpc(cat, "lift.forgive", referee=judge.agent_id)
        assert caught.value.message == (
            f"lift.forgive: referee {judge.agent_id} is not refused here: this node holds no "
            "proof that it signed both good and void on a lift")
        with pytest.raises(RpcError) as caught:
            await rpc(cat, "lift.forgive", referee="judge")
        assert caught.value.message.startswith("lift.forgive: referee must be an agent id: ")
        await processed(u["bob"], await send_raw(
            u["bob"], cat, "cat", "lift", "promise", {"record": promise, "hop": 0}, "bob"))
        assert cat.db.read_one("SELECT 1 FROM lifts WHERE lift = ?", (promise["lift"],))
        shown = await rpc(cat, "lift.show", lift=lift)  # the proof stays with its lift
        assert shown["equivocation"]["state"] == "void"


async def test_a_decision_withheld_from_one_partner_reaches_it_from_the_other(tmp_path):
    """The referee tells cat nothing, and everyone else good: cat leaves its partners' chain
    messages that carry the lift chit unacked until the lift's deadline (its decision may be
    on its way), then refuses them, so their chain repair goes on and shows it the decision:
    cat does not wait for ever on a referee that will never answer it. Not an equivocation:
    nobody counts one."""
    async with network(tmp_path, n=6, clearinghouse=0) as net:
        world, judge, record = await hostile_lift(net, "ann", "dan", life_s=4)
        u, tl = world["users"], world["tallies"]
        await equivocate(judge, record, {
            node: "good" for cuid, node in u.items() if cuid != "cat"})
        await settled_everywhere(list(u.values()), record["lift"], "good")
        for name, (a, b) in {"bobcat": ("bob", "cat"), "catdan": ("cat", "dan")}.items():
            await wait_for(lambda t=tl[name], a=a, b=b: agreed(u[a], a, u[b], b, t, 1),
                           timeout=30)
        for node in u.values():
            assert node.counters.lift_equivocations == 0
            assert (await rpc(node, "lift.show", lift=record["lift"]))["equivocation"] is None


async def test_what_is_no_proof_changes_nothing(tmp_path):
    """A decision message whose ``other`` is not the referee's contradicting decision on the
    record is refused, naming what is wrong, and leaves the lift as it was: the same state,
    a forged signature, another record with the lift's uuid, or no decision at all."""
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        world = await line(net)
        u, house = world["users"], net.nodes[0]
        bob, cat = u["bob"], u["cat"]
        paid = await rpc(u["ann"], "lift.pay", cuid="ann", find=who(u["dan"], "dan"), units=5)
        lift = paid["lift"]
        await settled_everywhere(list(u.values()), lift, "good")
        row = bob.db.read_one("SELECT record, decision FROM lifts WHERE lift = ?", (lift,))
        record, good = unpack(row[0]), unpack(row[1])
        unsigned = {**good, "state": "void"}
        del unsigned["sign"]
        forged = {**unsigned, "sign": cat.key.sign(digest(unsigned))}
        payor = SigningKey.generate()  # a record made up with the lift's uuid
        other_record = {**record, "units": 6, "public": payor.public}
        other_record["sign"] = payor.sign(lf.record_digest(other_record))
        elsewhere, _ = lf.decide(None, "cancel", other_record, now_ms=house.clock.now_ms(),
                                 key=house.key, asker=bob.agent_id)
        for other, refusal in (
                (good, "BAD_FIELD: decision and other on lift "),
                (forged, "BAD_SIGNATURE: the decision on lift "),
                (elsewhere, "OTHER_RECORD: the decision is on another record of lift "),
                (5, "BAD_FIELD: a decision has exactly the fields ")):
            sent = await send_raw(cat, bob, None, "lift", "decision",
                                  {"record": record, "decision": good, "other": other}, None)
            assert (await refusal_of(cat, sent)).startswith(refusal), refusal
        shown = await rpc(bob, "lift.show", lift=lift)
        assert (shown["state"], shown["equivocation"], shown["error"]) == ("good", None, None)
        assert bob.counters.lift_equivocations == 0
        assert bob.db.read_one("SELECT count(*) FROM equivocators")[0] == 0
