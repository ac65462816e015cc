"""Lifts survive a hard crash: the originator, an intermediary, the terminus or the referee is
killed (SIGKILL) while lifts are in flight and started again. Afterwards every node holds the
same final state for every lift (all its chits good, or all void), no lift is left pending,
chains agree and balances sum to zero. Every node is an ``agentd run`` process."""

from __future__ import annotations

import functools
import signal
import subprocess

import pytest
import trio

from agentd.bench.lifts import open_tally, rpc
from agentd.errors import UserError
from agentd.localnodes import LocalNode, free_ports, peer_section, spawn, stop, write_node
from agentd.rpc import RpcError

LIFTS = 12
UNITS = 10


async def until(predicate, timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not await predicate():
            await trio.sleep(0.1)
        return
    raise AssertionError(f"not within {timeout} s: {what}")


async def answers(node: LocalNode) -> bool:
    try:
        await rpc(node, "getinfo")
    except (UserError, RpcError, OSError, ValueError):
        return False
    return True


def cluster(tmp_path) -> dict[str, LocalNode]:
    names = ("house", "a", "b", "c")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    nodes = {name: write_node(tmp_path / name, name, ports[name]) for name in names}
    house = nodes["house"]
    for name, node in nodes.items():
        peers = "".join(peer_section(other) for other in nodes.values() if other is not node)
        roles = 'roles = ["clearinghouse"]' if node is house else ""
        sections = peers if node is house else peers + (
            f'[clearinghouse]\nagent = "{house.key.agent_id}"\naddress = "{house.address}"\n')
        write_node(node.directory, name, node.port, key=node.key, node_keys=roles,
                   sections=sections)
    return nodes


@pytest.mark.e2e
@pytest.mark.parametrize("victim", ["a", "b", "c", "house"])
async def test_lifts_settle_alike_everywhere_after_a_crash(tmp_path, victim):
    nodes = cluster(tmp_path)
    processes = {name: spawn(node) for name, node in nodes.items()}
    try:
        for node in nodes.values():
            await until(functools.partial(answers, node), 20, f"{node.name} starts")
        for cuid, name in (("ann", "a"), ("bob", "b"), ("cat", "c")):
            await rpc(nodes[name], "users.add", cuid=cuid)
        ab = await open_tally(nodes["a"], "ann", nodes["b"], "bob")
        bc = await open_tally(nodes["b"], "bob", nodes["c"], "cat")
        cat = f"cat:{nodes['c'].key.agent_id}"
        started: list[str] = []
        back = trio.Event()

        async def pay() -> None:
            while len(started) < LIFTS:
                try:
                    lift = await rpc(nodes["a"], "lift.pay", cuid="ann", find=cat, units=UNITS,
                                     life_s=4)
                except (UserError, RpcError, OSError, ValueError):
                    await back.wait()  # the payor's node (or the path) is down: wait for it
                    continue
                started.append(lift["lift"])

        async def crash() -> None:
            while len(started) < LIFTS // 3:
                await trio.sleep(0.01)
            processes[victim].send_signal(signal.SIGKILL)
            processes[victim].wait()
            await trio.sleep(0.5)
            processes[victim] = spawn(nodes[victim])
            await until(functools.partial(answers, nodes[victim]), 20, f"{victim} restarts")
            back.set()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pay)
                nursery.start_soon(crash)

        participants = [nodes["a"], nodes["b"], nodes["c"]]

        async def all_decided() -> bool:
            for node in participants:
                for lift in await rpc(node, "lift.list"):
                    if lift["state"] == "pend":
                        return False
            return True

        await until(all_decided, 40, "every lift decided on every node")
        outcome: dict[str, str] = {}
        for node in participants:
            for lift in await rpc(node, "lift.list"):
                assert outcome.setdefault(lift["lift"], lift["state"]) == lift["state"], lift
                chits = {chit["state"][2:] for chit in lift["chits"]}
                assert chits <= {lift["state"]}, lift  # all good or all void
        assert set(started) <= set(outcome)
        good = sum(state == "good" for state in outcome.values())

        async def chains_agree() -> bool:
            pairs = ((nodes["a"], "ann", nodes["b"], "bob", ab),
                     (nodes["b"], "bob", nodes["c"], "cat", bc))
            for x, x_cuid, y, y_cuid, tally in pairs:
                mine = await rpc(x, "tally.show", cuid=x_cuid, tally=tally)
                theirs = await rpc(y, "tally.show", cuid=y_cuid, tally=tally)
                if not (mine["chain"]["index"] == theirs["chain"]["index"]
                        == mine["chain"]["confirmed"] == theirs["chain"]["confirmed"]
                        and mine["chain"]["hash"] == theirs["chain"]["hash"]
                        and mine["balance"] == -theirs["balance"]):
                    return False
            return True

        await until(chains_agree, 30, "both chains agree")
        paid = await rpc(nodes["a"], "tally.show", cuid="ann", tally=ab)
        got = await rpc(nodes["c"], "tally.show", cuid="cat", tally=bc)
        assert paid["balance"] == -UNITS * good and got["balance"] == UNITS * good
        assert paid["reserved"] == got["reserved"] == {"in": 0, "out": 0}
        assert good >= 1
    finally:
        stop(list(processes.values()))
        for process in processes.values():
            if process.poll() is None:
                process.kill()
            if isinstance(process, subprocess.Popen):
                process.wait()
