"""A tally partner killed hard (SIGKILL) in the middle of a two-way chit stream: after it
restarts, both holders hold the identical chain, and every chit either user was told had
succeeded is in it."""

from __future__ import annotations

import functools
import signal

import trio

from agentd.errors import UserError
from agentd.localnodes import free_ports, spawn, write_node
from agentd.rpc import RpcError, call
from tests.netfixture import network, wait_for

STREAM = 150  # payments from each side


async def test_a_partner_killed_mid_stream_loses_no_confirmed_chit(tmp_path):
    bob_node = write_node(tmp_path / "bob", "bob", free_ports(1)[0])
    bob_key, port, socket_path = bob_node.key, bob_node.port, bob_node.socket
    process = spawn(bob_node)

    async def bob(method: str, **params) -> dict:
        return await trio.to_thread.run_sync(
            functools.partial(call, socket_path, method, params, 10))

    try:
        await wait_for(socket_path.exists)
        async with network(tmp_path, n=1) as net:
            (alice,) = net.nodes
            alice.learn_peer(bob_key.agent_id, f"127.0.0.1:{port}", "bob")
            await alice.rpc.call("users.add", {"cuid": "alice"})
            await bob("users.add", cuid="bob")
            invited = await alice.rpc.call("tally.invite", {"cuid": "alice", "limit": 10**9})
            tally = invited["tally"]
            await bob("tally.request", cuid="bob", ticket=invited["ticket"])
            await alice.rpc.call("tally.offer", {"cuid": "alice", "tally": tally})
            with trio.fail_after(10):
                while (await bob("tally.show", cuid="bob", tally=tally))["state"] != "P.offer":
                    await trio.sleep(0.02)  # until the offer is in
            await bob("tally.accept", cuid="bob", tally=tally)
            await wait_for(lambda: alice.db.read_one(
                "SELECT state FROM tallies WHERE uuid = ?", (tally,))[0] == "open")
            with trio.fail_after(10):  # and bob's, once his acceptance is known delivered
                while (await bob("tally.show", cuid="bob", tally=tally))["state"] != "open":
                    await trio.sleep(0.02)

            told: set[str] = set()  # chits a user was told had succeeded
            restarted = trio.Event()

            async def alice_pays() -> None:
                for _ in range(STREAM):
                    paid = await alice.rpc.call("chit.pay", {"cuid": "alice", "tally": tally,
                                                             "units": 2})
                    told.add(paid["chit"])
                    await trio.sleep(0.002)

            async def bob_pays() -> None:
                made = 0
                while made < STREAM:
                    try:
                        paid = await bob("chit.pay", cuid="bob", tally=tally, units=3)
                    except (UserError, RpcError, OSError, ValueError):
                        await restarted.wait()  # killed: try again once it is back
                        continue
                    told.add(paid["chit"])
                    made += 1

            async def crash() -> None:
                nonlocal process
                await wait_for(lambda: len(told) >= STREAM // 2, timeout=20)
                process.send_signal(signal.SIGKILL)  # mid-stream, no clean shutdown
                process.wait()
                await trio.sleep(0.3)  # alice keeps paying into her outbox meanwhile
                process = spawn(bob_node)
                await wait_for(socket_path.exists, timeout=20)
                with trio.fail_after(20):
                    while True:
                        try:
                            await bob("getinfo")
                            break
                        except (UserError, OSError):
                            await trio.sleep(0.05)
                restarted.set()

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(alice_pays)
                    for _ in range(3):
                        nursery.start_soon(bob_pays)
                    nursery.start_soon(crash)

            async def chains() -> tuple[dict, dict]:
                mine = await alice.rpc.call("tally.show", {"cuid": "alice", "tally": tally})
                theirs = await bob("tally.show", cuid="bob", tally=tally)
                return mine, theirs

            with trio.fail_after(30):
                while True:
                    mine, theirs = await chains()
                    if (mine["chain"]["index"] == mine["chain"]["confirmed"]
                            == theirs["chain"]["index"] == theirs["chain"]["confirmed"]
                            and mine["chain"]["hash"] == theirs["chain"]["hash"]
                            and mine["chain"]["pending"] == theirs["chain"]["pending"] == 0):
                        break
                    await trio.sleep(0.1)
            assert mine["balance"] == -theirs["balance"]
            alice_chits = await alice.rpc.call("chit.list", {"cuid": "alice", "tally": tally})
            bob_chits = await bob("chit.list", cuid="bob", tally=tally)
            assert [(x["chit"], x["index"], x["hash"]) for x in alice_chits] == [
                (x["chit"], x["index"], x["hash"]) for x in bob_chits]
            assert told <= {x["chit"] for x in alice_chits}
            assert len(alice_chits) >= 4 * STREAM  # three bob streams, one alice stream
    finally:
        process.kill()
        process.wait()
