"""A lift's evidence cannot be blocked by a hop: the referee logs its decision under a process
in its own namespace at the clearing house (``REFEREE/LIFT``, ``protocol.lift.evidence_pid``),
which nobody else may create (``protocol.clearing``), so a hop that learns the lift's uuid from
its promise cannot create the process first, as its sole owner, and have the referee's create
and logs refused. Real nodes and a real clearing house."""

from __future__ import annotations

import dataclasses

import pytest

from agentd.rpc import RpcError
from tests.netfixture import network, wait_for
from tests.test_credit_service import rpc
from tests.test_lifts import line, who


@pytest.mark.parametrize("referee", ["clearing house", "peer"])
async def test_a_hop_cannot_keep_the_referees_decision_out_of_the_evidence(tmp_path, referee):
    """bob, a hop, holds back the promise it forwards until it has created, at the clearing
    house, with itself as sole owner, every process the lift's evidence could go to; the
    decision is logged all the same (by the clearing house itself as referee, or by a referee
    that sends it there) and every node on the path reads it."""
    async with network(tmp_path, n=6, clearinghouse=0) as net:
        world = await line(net)
        u = world["users"]
        ann, bob, dan = u["ann"], u["bob"], u["dan"]
        judge = net.nodes[0] if referee == "clearing house" else net.nodes[5]
        ann.config = dataclasses.replace(ann.config, lift=dataclasses.replace(
            ann.config.lift, referee=judge.agent_id))
        held, add = [], bob.pump.add

        def holding(message_id, peer, address, envelope, *args, **kwargs):
            if (envelope.get("target"), envelope.get("action")) == ("lift", "promise"):
                held.append((message_id, peer, address, envelope, args, kwargs))
                return None
            return add(message_id, peer, address, envelope, *args, **kwargs)

        bob.pump.add = holding
        started = await rpc(ann, "lift.pay", cuid="ann", find=who(dan, "dan"), units=5)
        lift = started["lift"]
        await wait_for(lambda: held)
        squatted = {}
        for pid in (lift, f"{judge.agent_id}/{lift}"):  # the uuid, or under the referee's
            try:
                squatted[pid] = await rpc(bob, "ch.create_process", pid=pid, owners=[])
            except RpcError as exc:
                squatted[pid] = exc.reason
        bob.pump.add = add
        for message_id, peer, address, envelope, args, kwargs in held:
            add(message_id, peer, address, envelope, *args, **kwargs)
        assert (await rpc(ann, "lift.wait", lift=lift, timeout_s=20))["state"] == "good"

        def logged():
            return judge.db.read_one("SELECT pid, status FROM receipts WHERE kind ="
                                     " 'lift.decision' AND ref = ?", (lift,))

        def refused():
            return judge.db.read_one("SELECT error FROM ch_requests WHERE ref = ? AND error IS"
                                     " NOT NULL", (lift,))

        await wait_for(lambda: refused() is not None or (  # its keys come first
            logged() is not None and logged()[1] != "unchecked"), timeout=15)
        assert refused() is None, refused()[0]
        pid, status = logged()
        assert (pid, status) == (f"{judge.agent_id}/{lift}", "valid")
        assert squatted[pid] == "NOT_AUTHORIZED"  # it was not bob's to create
        for node in u.values():
            entries = (await rpc(node, "ch.query", pid=pid))["entries"]
            assert [entry["header"]["kind"] for entry in entries] == ["lift.decision"]
