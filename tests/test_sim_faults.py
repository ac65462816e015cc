"""Faults on demand: checked like the rest of a scenario, run beside the traffic, healed, and
every invariant still holds afterwards."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import pytest

from agentd.errors import UserError
from agentd.rpc import RpcError
from agentd.runtime.links import Rule
from agentd.runtime.peers import PeerUnreachable
from agentd.sim import load_scenario, main
from agentd.sim import node as simnode
from agentd.sim.faults import Healing, run_faults
from agentd.sim.report import Report
from agentd.sim.scenario import Scenario
from tests.netfixture import network

BASE = '[nodes]\nnames = ["a", "b", "c", "d"]\n[topology]\nkind = "ring"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "faults.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("fault, complaint", [
    ('kind = "flood"', "faults[0].kind must be one of cut, partition, crash, delay, loss"),
    ('kind = "cut"\nrate = 0', "faults[0].rate must be a number of seconds, more than 0"),
    ('kind = "cut"\ncount = 2', "faults[0].count is not a known key"),
    ('kind = "crash"\nnodes = ["a", "zed"]', "faults[0].nodes names 'zed', which is not a node"),
    ('kind = "crash"\ncount = 9', "faults[0].count must be an integer from 1 to 4"),
    ('kind = "partition"\ngroups = [["a", "b"], ["c", "x"]]',
     "faults[0].groups names 'x', which is not a node"),
    ('kind = "partition"\ngroups = [["a", "b"], ["b", "c"]]', "more than one group"),
    ('kind = "partition"\ngroups = [["a", "b"]]', "two or more non-empty lists"),
    ('kind = "partition"\nfor_s = 5\nevery_s = 2', "shorter than the fault lasts"),
    ('kind = "crash"\nat_s = -1', "faults[0].at_s must be a number of seconds, 0 or more"),
    ('kind = "delay"', "faults[0].ms is missing: a delay needs the milliseconds"),
    ('kind = "delay"\nms = 0', "faults[0].ms must be a number of milliseconds, more than 0"),
    ('kind = "delay"\nms = 5\njitter_ms = -1', "faults[0].jitter_ms must be a number of "
     "milliseconds, 0 or more"),
    ('kind = "delay"\nms = 5\nlinks = 5', "faults[0].links is 5, but the topology has 4 links"),
    ('kind = "delay"\nms = 5\nlinks = 1.5', "faults[0].links must be a fraction of the links"),
    ('kind = "delay"\nms = 5\nrate = 0.1', "faults[0].rate is not a known key"),
    ('kind = "loss"', "faults[0].rate is missing: a loss needs the fraction of frames dropped"),
    ('kind = "loss"\nrate = 1.5', "faults[0].rate must be the fraction of frames dropped, more "
     "than 0 and at most 1"),
])
def test_bad_faults_name_the_key_and_the_file(tmp_path, fault, complaint):
    with pytest.raises(UserError, match=r"faults\.toml") as caught:
        load_scenario(write(tmp_path, BASE + "[[faults]]\n" + fault + "\n"))
    assert complaint in str(caught.value)




ONE_OF_EACH = BASE + """
[sim]
seed = 9
concurrency = 8
[[traffic]]
kind = "payments"
count = 200
units = 100
[[faults]]
kind = "cut"
rate = 50
for_s = 0.5
[[faults]]
kind = "partition"
groups = [["a", "b"], ["c", "d"]]
for_s = 0.3
[[faults]]
kind = "crash"
nodes = ["c"]
down_s = 0.3
"""
# on their own: a frame lost after cuts had bumped its message's tries waits a longer ack
# timeout (up to tens of seconds), which would make this test slow, not wrong. They last
# until the traffic ends (and heal then), so frames cross them even while a crash holds the
# traffic up; the loss is light enough that the delay's ping, should its link lose frames
# too, is not lost three times running (its pong comes within the ping's 10 s)
LINK_FAULTS = """
[[faults]]
kind = "delay"
ms = 30
jitter_ms = 10
links = 2
for_s = 60
[[faults]]
kind = "loss"
rate = 0.05
links = 0.5
for_s = 60
"""


@pytest.mark.parametrize("workers", ["1", "2"], ids=["one process", "two workers"])
def test_one_of_each_fault_then_every_invariant_holds(tmp_path, capsys, workers):
    report = tmp_path / "report.json"
    late = '[[faults]]\nkind = "loss"\nrate = 0.5\nat_s = 600\nfor_s = 1\n'  # never starts
    assert main([str(write(tmp_path, ONE_OF_EACH + late)), "--json", str(report), "--workers",
                 workers]) == 0
    out = capsys.readouterr().out
    assert "FAILED" not in out and "invariant chains_agree       ok" in out
    written = json.loads(report.read_text())
    faults = {f["kind"]: f for f in written["faults"]}  # all at 0 s: in any order
    assert sorted(faults) == ["crash", "cut", "loss", "partition"]
    assert faults["loss"]["what"] == "not started: the traffic was over first"
    assert faults["loss"]["for_s"] == 1  # as planned (it said 0 s)
    assert faults["partition"]["what"] == "a,b | c,d" and faults["crash"]["what"] == "c"
    assert faults["partition"]["groups"] == [["a", "b"], ["c", "d"]]
    assert faults["crash"]["nodes"] == ["c"]
    assert "fault at" in out and "crash" in out
    assert written["counts"]["chits"] == 200 and written["counts"]["balance_sum"] == 0


@pytest.mark.parametrize("workers", ["1", "2"], ids=["one process", "two workers"])
def test_delay_and_loss_then_every_invariant_holds(tmp_path, workers):
    text = ONE_OF_EACH.split("[[faults]]")[0] + LINK_FAULTS
    report = tmp_path / "report.json"
    assert main([str(write(tmp_path, text)), "--json", str(report), "--workers",
                 workers]) == 0
    written = json.loads(report.read_text())
    faults = {f["kind"]: f for f in written["faults"]}
    assert faults["delay"]["what"].startswith("2 of 4 links: 30 + up to 10 ms each way")
    assert faults["loss"]["what"] == "2 of 4 links: 5% of frames dropped"
    assert len(faults["loss"]["links"]) == 2  # which, whole: the seed's to replay
    assert written["counts"]["chits"] == 200 and written["counts"]["balance_sum"] == 0
    _link_faults_acted(written)


def _link_faults_acted(written: dict) -> None:
    """Loss dropped frames (and the retries recovered them: the invariants held), and the
    ping across a delayed link took at least the delay, which is added each way."""
    faults = {f["kind"]: f for f in written["faults"]}
    counts = written["counts"]
    assert counts["frames_dropped"] > 0 and counts["frames_delayed"] > 0
    assert faults["delay"]["rtt_ms"] >= 2 * 30
    assert counts["probe_pings"] == 1


def test_cut_partition_and_crash_with_processes_then_every_invariant_holds(tmp_path, capsys):
    """Each node its own ``agentd.sim.node`` process: the sim asks them to close channels
    and to refuse to dial across the partition (a node killed meanwhile is told again as it
    restarts), then heals, and every invariant holds."""
    report = tmp_path / "report.json"
    assert main([str(write(tmp_path, ONE_OF_EACH)), "--processes", "--json", str(report)]) == 0
    assert "FAILED" not in capsys.readouterr().out
    written = json.loads(report.read_text())
    faults = {f["kind"]: f for f in written["faults"]}
    assert sorted(faults) == ["crash", "cut", "partition"]
    assert faults["cut"]["what"].endswith("connections closed")
    assert faults["partition"]["what"] == "a,b | c,d" and faults["crash"]["what"] == "c"
    assert written["counts"]["chits"] == 200 and written["counts"]["balance_sum"] == 0


async def test_the_sim_node_methods_refuse_bad_params_and_partition_its_dials(tmp_path):
    async with network(tmp_path, n=2) as net:
        a, b = net.nodes
        simnode.install(a)
        with pytest.raises(RpcError, match="seed must be an integer"):
            await a.rpc.call(simnode.CUT, {"seed": "x"})
        with pytest.raises(RpcError, match="agents must be a list of text or null"):
            await a.rpc.call(simnode.PARTITION, {"agents": "everyone"})
        assert (await a.rpc.call("peers.ping", {"agent": b.agent_id}))["rtt_ms"]
        assert await a.rpc.call(simnode.CUT, {"seed": 1}) == b.agent_id
        assert await a.rpc.call(simnode.PARTITION, {"agents": [b.agent_id]}) == {"apart": 1}
        with pytest.raises(PeerUnreachable, match="partitioned"):
            await a.peers.connect(b.agent_id, b.listen_address)
        assert await a.rpc.call(simnode.PARTITION, {}) == {"apart": 0}  # healed
        assert (await a.peers.connect(b.agent_id, b.listen_address)).alive


def test_a_killed_process_restarts_and_every_invariant_holds(tmp_path, capsys):
    text = ONE_OF_EACH.split("[[faults]]")[0] + '[[faults]]\nkind = "crash"\ncount = 1\n' \
        'down_s = 0.3\n' + LINK_FAULTS
    report = tmp_path / "report.json"
    assert main([str(write(tmp_path, text)), "--processes", "--json", str(report)]) == 0
    written = json.loads(report.read_text())
    assert sorted(f["kind"] for f in written["faults"]) == ["crash", "delay", "loss"]
    assert written["counts"]["chits"] == 200
    _link_faults_acted(written)


class _Stub:
    """A backend that does each fault at once and nothing else, with ``live`` connections
    for a cut to choose among (none: a cut draws nothing from the randomness it is given)."""

    def __init__(self, live: int) -> None:
        self.live = [f"c{i}" for i in range(live)]

    async def cut(self, rng: random.Random) -> str | None:
        return rng.choice(self.live) if self.live else None

    async def partition(self, groups: list[list[str]]) -> None:
        pass

    async def heal(self) -> None:
        pass

    async def crash(self, name: str) -> None:
        pass

    async def restart(self, name: str) -> None:
        pass

    async def shape(self, name: str, peer: str, fault: str, rule: Rule | None) -> None:
        pass

    async def call(self, name: str, method: str, params: dict) -> Any:
        return {"agent": name, "rtt_ms": [1.0]}


async def _hit(scenario: Scenario, live: int) -> dict[str, tuple[str, list]]:
    """What each fault but the cut hit: the nodes crashed, the partition, the links shaped."""
    report = Report()
    await run_faults(_Stub(live), scenario, report, Healing())
    return {fault["kind"]: (fault["what"], fault.get("nodes") or fault.get("groups")
                            or fault.get("links"))  # the --json report names them whole
            for fault in report.faults if fault["kind"] != "cut"}


# faults.toml's faults, each on nodes or links it draws, none repeating (every_s): the
# scenario's own here, so that a change to the shipped one cannot make the test wait forever
DRAWN = """
[sim]
seed = 11
[nodes]
count = 12
[topology]
kind = "random"
degree = 2
[[traffic]]
kind = "payments"
count = 10
[[faults]]
kind = "cut"
at_s = 0.5
for_s = 3
rate = 10
[[faults]]
kind = "partition"
at_s = 2
for_s = 2
[[faults]]
kind = "crash"
at_s = 1.5
down_s = 1.5
count = 2
[[faults]]
kind = "delay"
at_s = 1
for_s = 3
links = 0.3
ms = 50
[[faults]]
kind = "loss"
at_s = 2.5
for_s = 2
links = 0.25
rate = 0.1
"""


async def test_the_seed_alone_decides_what_the_faults_hit(tmp_path, autojump_clock):
    """Once per seed: the same seed crashes the same nodes, splits and slows the same,
    however many draws the cut made meanwhile (the faults shared one stream, so each took
    what the others left: not replayable); another seed hits others."""
    scenario = load_scenario(write(tmp_path, DRAWN))
    hit = await _hit(scenario, live=0)
    assert sorted(hit) == ["crash", "delay", "loss", "partition"]
    assert await _hit(scenario, live=0) == hit
    assert await _hit(scenario, live=30) == hit  # the cut drew, each time it closed one
    other = await _hit(dataclasses.replace(scenario, seed=scenario.seed + 1), live=0)
    assert other["crash"] != hit["crash"] and other["partition"] != hit["partition"]
