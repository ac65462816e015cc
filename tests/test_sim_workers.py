"""``agentd sim --workers N``: the nodes sharded across worker processes, linked by real TCP,
driven and faulted from the parent as if they were in its own process."""

from __future__ import annotations

import json
import random

import pytest
import trio

from agentd.rpc import RpcError
from agentd.sim import main
from agentd.sim.workers import Workers

RING = [("a", "b"), ("b", "c"), ("c", "d"), ("d", "a")]


def test_nodes_in_two_workers_talk_crash_restart_and_stop(tmp_path):
    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            backend = Workers(nursery, tmp_path, 2)
            agents = await backend.start(["a", "b", "c", "d"], RING)
            try:
                pids = {worker.process.pid for worker in backend._workers}
                assert len(pids) == 2  # a and c in one process, b and d in the other
                assert {n: backend._where[n].index for n in agents} == {
                    "a": 0, "b": 1, "c": 0, "d": 1}
                pong = await backend.call("a", "peers.ping", {"agent": agents["b"]})
                assert len(pong["rtt_ms"]) == 1  # across processes, over TCP and Noise
                await backend.crash("b")
                with trio.move_on_after(0.2):  # a call to a crashed node waits for it
                    await backend.call("b", "getinfo", {})
                    raise AssertionError("answered while crashed")
                await backend.restart("b")
                assert (await backend.call("b", "getinfo", {}))["agent"] == agents["b"]
                pong = await backend.call("b", "peers.ping", {"agent": agents["c"]})
                assert len(pong["rtt_ms"]) == 1
                assert await backend.cut(random.Random(1)) in {"a - b", "b - a", "b - c",
                                                               "c - b", "a - d", "d - a",
                                                               "c - d", "d - c"}
                with pytest.raises(RpcError) as caught:  # an RPC error keeps its reason
                    await backend.call("a", "peers.ping", {"agent": "nobody"})
                assert caught.value.code and "agent" in caught.value.message
            finally:
                await backend.stop()
            assert all(w.process.returncode == 0 for w in backend._workers)
            assert backend.rss_kib > 0

    trio.run(scenario)


CRASHES = """
[sim]
seed = 5
concurrency = 8
[nodes]
names = ["a", "b", "c", "d", "e"]
[topology]
kind = "ring"
[[traffic]]
kind = "payments"
count = 150
units = 100
[[faults]]
kind = "crash"
count = 2
down_s = 0.3
[invariants]
check = ["all_delivered", "outbox_drained", "chains_agree", "balances_zero_sum"]
"""


def test_a_crash_in_a_worker_then_every_invariant_holds(tmp_path, capsys):
    path, report = tmp_path / "crashes.toml", tmp_path / "report.json"
    path.write_text(CRASHES)
    assert main([str(path), "--workers", "2", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "5 nodes, 5 links, 2 worker processes" in out and "FAILED" not in out
    written = json.loads(report.read_text())
    assert [f["kind"] for f in written["faults"]] == ["crash"]
    assert written["counts"]["chits"] == 150 and written["counts"]["balance_sum"] == 0
    assert all(written["checks"].values()) and len(written["checks"]) == 4


@pytest.mark.parametrize("value", ["0", "two"])
def test_a_bad_worker_count_is_refused(tmp_path, capsys, value):
    path = tmp_path / "crashes.toml"
    path.write_text(CRASHES)
    with pytest.raises(SystemExit):
        main([str(path), "--workers", value])
    assert f"{value!r} is not a count of processes" in capsys.readouterr().err
