"""Evidence logged to a mistyped ``[clearinghouse] agent`` moves to the clearing house once the
config is fixed (reload or restart), and ``receipts.verify`` says meanwhile what it waits for.

Real nodes on loopback and real SQLite: node 0 is the clearing house, bob a plain node, and
alice starts with a wrong clearing-house agent (an id no node has, or bob's).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from agentd.rpc import RpcError
from agentd.runtime.node import Node
from protocol.codec import unpack
from protocol.keys import SigningKey
from store import clearing as clearing_store
from tests.netfixture import Network, dial_failures, network, wait_for
from tests.test_clearing_service import evidence, receipts


def house_section(agent: str, address: str) -> dict:
    return {"clearinghouse": {"agent": agent, "address": address}}


async def start_alice(net: Network, sections: dict, key: SigningKey | None = None,
                      port: int = 0) -> Node:
    alice = await net.start("alice", key or SigningKey.generate(), port, sections=sections)
    net.nodes.append(alice)
    net.introduce()
    return alice


def write_config(node: Node, house: Node | None) -> None:
    """The node's config file as the operator fixes it: the same node, ``house`` (or none)."""
    text = (f'[node]\nname = "{node.config.name}"\ndata_dir = "{node.config.data_dir}"\n'
            f'listen = "{node.config.listen}"\nroles = {list(node.config.roles)!r}\n'
            .replace("'", '"'))
    if house is not None:
        text += (f'\n[clearinghouse]\nagent = "{house.agent_id}"\n'
                 f'address = "{house.listen_address}"\n')
    Path(node.config.path).write_text(text)


def outbox_to(node: Node, agent: str) -> list[tuple[str, str, str | None]]:
    return [(row["action"], row["state"], row["error"]) for row in node.db.read(
        "SELECT action, state, error FROM outbox WHERE peer = ? ORDER BY seq", (agent,))]


async def settled(node: Node, count: int) -> dict:
    """``receipts.verify chain=true`` once ``count`` valid receipts are stored."""
    await wait_for(lambda: [r["status"] for r in receipts(node)] == ["valid"] * count,
                   timeout=20)
    return await node.rpc.call("receipts.verify", {"chain": True})


async def test_evidence_to_an_unknown_agent_moves_to_the_clearing_house_on_reload(
        tmp_path, monkeypatch):
    """Logged under an agent no node has (at the house's address), evidence is never
    answered: verify names that agent, as configured and unreachable. Once the config names
    the real house and the node reloads, it is logged there — the process created with both
    partners as owners, so bob logs to it too — the wrong agent's messages are withdrawn
    (an explicit ``ch.log`` call's too), and verify is ok with nothing pending."""
    monkeypatch.setattr("agentd.services.clearing.client.REQUEST_TIMEOUT", 0.5)
    async with network(tmp_path, n=2, clearinghouse=0) as net:
        house, bob = net.nodes
        wrong = SigningKey.generate().agent_id
        alice = await start_alice(net, house_section(wrong, house.listen_address))
        dials = dial_failures(alice)
        owners = [alice.agent_id, bob.agent_id]
        await evidence(alice, 2, "tally-1", owners, "tally.open")
        with pytest.raises(RpcError):
            await alice.rpc.call("ch.log", {"pid": "mine", "payload": "by hand"})
        await wait_for(lambda: dials)
        audit = await alice.rpc.call("receipts.verify", {})
        [waits] = audit.pop("pending_detail")
        assert audit == {"ok": True, "checked": 0, "pending": 3, "failures": []}  # with ch.log
        assert waits["clearing_house"] == wrong and waits["configured"]
        assert (waits["logs"], waits["keys"]) == (3, 0) and waits["since"] > 0
        assert waits["problem"].startswith("cannot reach it: "), waits

        await wait_for(lambda: not alice.evidence.sender._move_due)  # the look at start is over
        write_config(alice, house)
        assert "clearinghouse" in (await alice.rpc.call("reload", {}))["applied"]
        audit = await settled(alice, 2)
        assert audit["ok"] and audit["checked"] == 2, audit
        assert audit["pending"] == 0 and audit["pending_detail"] == [], audit
        assert {r["kind"] for r in await alice.rpc.call("receipts.list", {})} == {"tally.open"}
        assert alice.db.read_one("SELECT count(*) FROM ch_requests")[0] == 0
        assert [(action, state) for action, state, _ in outbox_to(alice, wrong)] == [
            ("create_process", "failed"), ("log", "failed")]
        assert all(house.agent_id in error for *_, error in outbox_to(alice, wrong))

        await evidence(bob, 1, "tally-1", owners, "tally.open")  # an owner, as asked
        assert (await settled(bob, 1))["ok"]


async def test_evidence_to_a_node_that_is_no_clearing_house_moves_on_restart(tmp_path):
    """Logged under bob's agent, evidence is refused by bob with NOT_CLEARING_HOUSE: not a
    verdict on it, so it stays pending, and verify says what bob answered and what to fix.
    Restarted with the real house, the node logs it there."""
    async with network(tmp_path, n=2, clearinghouse=0) as net:
        house, bob = net.nodes
        alice = await start_alice(net, house_section(bob.agent_id, bob.listen_address))
        await evidence(alice, 3, "tally-2", [alice.agent_id, bob.agent_id], "tally.open")
        await wait_for(lambda: alice.db.read("SELECT 1 FROM ch_requests WHERE error IS NOT NULL"))
        audit = await alice.rpc.call("receipts.verify", {})
        assert audit["ok"] and audit["pending"] == 3 and audit["failures"] == [], audit
        [waits] = audit["pending_detail"]
        assert waits["clearing_house"] == bob.agent_id and waits["logs"] == 3
        assert "answered NOT_CLEARING_HOUSE" in waits["problem"]
        assert "[clearinghouse] agent in" in waits["problem"]

        await net.stop(2)
        net.nodes.pop()
        alice = await start_alice(net, house_section(house.agent_id, house.listen_address),
                                  alice.key, alice.port)
        audit = await settled(alice, 3)
        assert audit["ok"] and audit["checked"] == 3 and audit["pending_detail"] == [], audit


async def test_without_a_clearing_house_evidence_stays_pending_and_says_why(tmp_path):
    """A reload that drops ``[clearinghouse]`` moves nothing: the evidence waits, bound to
    the agent it went to, and verify says no clearing house is configured. Configured again,
    it goes there."""
    async with network(tmp_path, n=1, clearinghouse=0) as net:
        [house] = net.nodes
        wrong = SigningKey.generate().agent_id
        alice = await start_alice(net, house_section(wrong, house.listen_address))
        await evidence(alice, 1, "tally-3", [alice.agent_id], "tally.open")
        write_config(alice, None)
        await alice.rpc.call("reload", {})
        await trio.sleep(1.5)  # the sender's linger: it would have moved by now
        [waits] = (await alice.rpc.call("receipts.verify", {}))["pending_detail"]
        assert waits["clearing_house"] == wrong and not waits["configured"]
        assert "no [clearinghouse] is configured in" in waits["problem"]
        write_config(alice, house)
        await alice.rpc.call("reload", {})
        assert (await settled(alice, 1))["pending"] == 0


async def test_receipts_of_a_former_clearing_house_stay_and_still_verify(tmp_path):
    """Moving to another clearing house leaves the receipts of the first one as they are:
    they still verify against its JWKS; only what it never answered goes to the new one."""
    async with network(tmp_path, n=1, clearinghouse=0) as net:
        [first] = net.nodes
        second = await net.start("second", SigningKey.generate(), roles=["clearinghouse"])
        net.nodes.append(second)
        alice = await start_alice(net, house_section(first.agent_id, first.listen_address))
        await evidence(alice, 1, "tally-4", [alice.agent_id], "tally.open")
        await settled(alice, 1)
        await net.stop(0)  # the first house goes down with a log unanswered
        await evidence(alice, 1, "tally-4", [alice.agent_id], "chit.good")
        await wait_for(lambda: alice.db.read("SELECT 1 FROM ch_requests WHERE state = 'sent'"))
        write_config(alice, second)
        await alice.rpc.call("reload", {})
        await settled(alice, 2)
        audit = await alice.rpc.call("receipts.verify", {})
        assert audit["ok"] and audit["checked"] == 2 and audit["pending"] == 0, audit
        houses = {r["kind"]: r["clearing_house"]
                  for r in await alice.rpc.call("receipts.list", {})}
        assert houses == {"tally.open": first.agent_id, "chit.good": second.agent_id}
        assert [(action, state) for action, state, _ in outbox_to(alice, first.agent_id)] == [
            ("log", "failed")]  # withdrawn: the first house is not dialled for it any more


async def test_evidence_of_a_clearing_house_that_moves_to_itself_is_appended_directly(tmp_path):
    """A clearing house whose own evidence went to another agent (a mistyped [clearinghouse])
    is reconfigured to name itself: its unanswered evidence is appended to its own log in the
    move's transaction, as its own evidence always is, with the owners first asked for and
    the receipts stored at once: no create_process, log, keys or answer goes through its
    outbox and inbox to itself. Evidence logged after the move takes the same path."""
    async with network(tmp_path, n=1) as net:
        [bob] = net.nodes
        wrong = SigningKey.generate().agent_id
        carl = await net.start("carl", SigningKey.generate(), roles=["clearinghouse"],
                               sections=house_section(wrong, bob.listen_address))
        net.nodes.append(carl)
        net.introduce()
        owners = [carl.agent_id, bob.agent_id]
        await evidence(carl, 2, "tally-5", owners, "tally.open")
        await wait_for(lambda: not carl.evidence.sender._move_due)  # the look at start is over
        assert [action for action, *_ in outbox_to(carl, wrong)] == ["create_process"]
        write_config(carl, carl)
        assert "clearinghouse" in (await carl.rpc.call("reload", {}))["applied"]
        await wait_for(lambda: [r["status"] for r in receipts(carl)] == ["valid"] * 2)
        await evidence(carl, 1, "tally-5", owners, "chit.good")  # appended at once
        assert [r["status"] for r in receipts(carl)] == ["valid"] * 3
        assert carl.db.read_one("SELECT count(*) FROM ch_requests")[0] == 0
        assert [(action, state) for action, state, _ in outbox_to(carl, wrong)] == [
            ("create_process", "failed")]  # withdrawn; the logs waited for its answer
        assert outbox_to(carl, carl.agent_id) == []
        assert carl.db.read_one("SELECT count(*) FROM inbox")[0] == 0  # nothing sent to itself
        chain = carl.db.read("SELECT header FROM ch_entries WHERE pid = 'tally-5' ORDER BY seq")
        assert [unpack(row["header"])["ref"] for row in chain] == [
            "tally.open-0", "tally.open-1", "chit.good-0"]  # in the order they were logged
        assert carl.db.reading(lambda conn: clearing_store.owners(conn, "tally-5")) == sorted(
            owners)  # as first asked for: bob may log to it too
        audit = await carl.rpc.call("receipts.verify", {"chain": True})
        assert audit["ok"] and audit["checked"] == 3 and audit["pending_detail"] == [], audit
        assert {(r["kind"], r["clearing_house"]) for r in
                await carl.rpc.call("receipts.list", {})} == {
            ("tally.open", carl.agent_id), ("chit.good", carl.agent_id)}
