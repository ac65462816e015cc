"""A node restored from a backup takes back a lift whose path enters it from two partners'
nodes (real nodes: loopback, Noise, SQLite; the clearing house referees). README:
Restoring a node from a backup."""

from __future__ import annotations

import logging

from tests.netfixture import network, wait_for
from tests.test_credit_service import agreed, chain_of, open_tally, rpc
from tests.test_lifts import settled_everywhere
from tests.test_restore import back_up, restore

UNITS = 60


async def test_a_circle_that_enters_the_node_twice_is_taken_back_a_run_at_a_time(tmp_path,
                                                                                  caplog):
    """xia and xu on one node (n1), ann on n2 and bob on n3; ann clears the circle ann ->
    xia -> bob -> xu -> ann, which enters n1 from ann's node (paying xia, who pays bob) and
    from bob's (paying xu, who pays ann). n1 restored from a backup made before it lost the
    lift; each partner vouches for the run it pays into and for nothing else, so no one
    partner's word let n1 take it back, and it never did (each tally with it refused for
    ever: LIFT_UNDECIDED). Now it takes each run on the word of the partner that pays into
    it, its error saying what it waits for meanwhile, and holds the lift good with its four
    chits, as ann's and bob's nodes do."""
    async with network(tmp_path, n=4, clearinghouse=0) as net:
        n1, n2, n3 = net.nodes[1:]
        for node, cuid in ((n1, "xia"), (n1, "xu"), (n2, "ann"), (n3, "bob")):
            await rpc(node, "users.add", cuid=cuid)
        hops = {("ann", "xia"): await open_tally(n2, "ann", n1, "xia"),
                ("xia", "bob"): await open_tally(n1, "xia", n3, "bob"),
                ("bob", "xu"): await open_tally(n3, "bob", n1, "xu"),
                ("xu", "ann"): await open_tally(n1, "xu", n2, "ann")}
        where = {"xia": n1, "xu": n1, "ann": n2, "bob": n3}
        for (_, payee), tally in hops.items():  # each payee owes its payer: a cycle
            await rpc(where[payee], "chit.pay", cuid=payee, tally=tally, units=100)
        for (x, y), tally in hops.items():
            await wait_for(lambda x=x, y=y, t=tally: agreed(where[x], x, where[y], y, t, 1))
        await net.stop(1)
        copy = tmp_path / "n1.db"
        back_up(net.nodes[1], copy)
        await net.restart(1)
        where["xia"] = where["xu"] = net.nodes[1]
        cleared = await rpc(n2, "lift.clear", cuid="ann", units=UNITS)
        assert [step["cuid"] for step in cleared["path"]] == ["ann", "xia", "bob", "xu", "ann"]
        done = await rpc(n2, "lift.wait", lift=cleared["lift"], timeout_s=20)
        assert done["state"] == "good"
        await settled_everywhere(net.nodes[1:], cleared["lift"], "good")
        for (x, y), tally in hops.items():
            await wait_for(lambda x=x, y=y, t=tally: agreed(where[x], x, where[y], y, t, 2))

        caplog.set_level(logging.INFO, logger="agentd.lift")
        n1 = await restore(net, 1, copy)
        where["xia"] = where["xu"] = n1
        for (x, y), tally in hops.items():
            await wait_for(lambda x=x, y=y, t=tally: agreed(where[x], x, where[y], y, t, 2),
                           timeout=30)
        shown = await rpc(n1, "lift.show", lift=cleared["lift"])
        assert (shown["state"], shown["error"]) == ("good", None)
        assert sorted((chit["cuid"], chit["state"]) for chit in shown["chits"]) == [
            ("xia", "A.good"), ("xia", "L.good"), ("xu", "A.good"), ("xu", "L.good")]
        taken = [record.getMessage() for record in caplog.records
                 if record.getMessage().startswith(f"lift {cleared['lift']}: good, as partner")]
        first, second = (n2, n3) if taken[0].startswith(
            f"lift {cleared['lift']}: good, as partner {n2.agent_id[:8]} ") else (n3, n2)
        assert taken == [
            f"lift {cleared['lift']}: good, as partner {first.agent_id[:8]} showed its decision"
            f" (2 of its chits here, 2 wait for {second.agent_id[:8]}); this node held nothing"
            " of it (restored from a backup made before it?)",
            f"lift {cleared['lift']}: good, as partner {second.agent_id[:8]} showed its "
            "decision (2 of its chits here); this node held part of it (restored from a backup"
            " made before it?)"]
        for (x, _), tally in hops.items():  # each payee's debt to its payer, less the lift
            node = where[x]
            assert chain_of(node, x, tally)[3] == 100 - UNITS
