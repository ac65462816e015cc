"""Lifts of the simulation that go void because a concurrent lift took the room their search
saw are counted as raced (``clear_raced``, ``lifts_raced``), and fail no invariant."""

from __future__ import annotations

import json
import random

import pytest

from agentd.rpc import RpcError
from agentd.sim import load_scenario, main
from agentd.sim.lifts import _decided
from agentd.sim.report import Report
from agentd.sim.traffic import Run
from tests.test_sim import write

PATH = [{"cuid": "a"}, {"cuid": "b"}, {"cuid": "c"}, {"cuid": "a"}]


class _Nodes:
    """A backend whose lift is decided ``state``, and whose nodes show it with ``errors``
    (a node missing there never heard of the lift)."""

    def __init__(self, state: str, errors: dict[str, str | None]) -> None:
        self.state, self.errors = state, errors
        self.shown: list[str] = []

    async def call(self, name: str, method: str, params: dict) -> dict:
        if method == "lift.wait":
            return {"lift": params["lift"], "state": self.state}
        assert method == "lift.show"
        self.shown.append(name)
        if name not in self.errors:
            raise RpcError(-32011, f"no lift {params['lift']}", "UNKNOWN_LIFT")
        return {"lift": params["lift"], "state": self.state, "error": self.errors[name]}


@pytest.mark.parametrize(("state", "errors", "raced"), [
    # b sent the promise that c refused: a concurrent lift had taken c's room
    ("void", {"a": "the referee voided it: a hop could not take part and cancelled it",
              "b": "the next user on the path (c on node c) refused: OVER_LIMIT: tally 1f0e "
                   "cannot carry 300 more"}, True),
    ("void", {"a": "the referee voided it: its deadline passed before the terminus's commit "
                   "reached it (a node on the path, or the referee, down or slow; or clocks "
                   "apart)", "b": None, "c": None}, False),
    ("good", {"a": None, "b": None, "c": None}, False),
])
async def test_a_void_lift_is_raced_when_a_hop_refused_its_promise_for_room(
        tmp_path, state, errors, raced):
    scenario = load_scenario(write(tmp_path, '[nodes]\nnames = ["a", "b", "c"]\n'))
    nodes = _Nodes(state, errors)
    run = Run(nodes, scenario, {}, {}, random.Random(0), Report())
    started = {"lift": "L1", "path": PATH}
    assert await _decided(run, "a", started, 0.0, "clear") == state
    assert run.report.counts == {f"clear_{state}": 1, **({"clear_raced": 1} if raced else {})}
    assert nodes.shown == ([] if state == "good" else ["a", "b", "c"][:2 if raced else 3])


CONTENDED = """
[sim]
name = "contended clearing"
seed = 1
concurrency = 24
[nodes]
names = ["a", "b", "c", "d"]
clearinghouse = true
[topology]
kind = "full"
[[traffic]]
kind = "payments"
count = 120
units = 1000
[[traffic]]
kind = "clearing"
count = 24
"""


def test_clearing_that_races_itself_counts_its_voids_as_raced_and_holds_every_invariant(
        tmp_path, capsys):
    """Two dozen lift.clear calls at once on four nodes trading with each other: circles
    overlap, and each that starts holds a hop others need, so several go void. Every void
    one lost such a race here (no faults, no deadline near), the report says so, and every
    invariant holds."""
    report = tmp_path / "report.json"
    assert main([str(write(tmp_path, CONTENDED)), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "FAILED" not in out and "invariant lifts_atomic       ok" in out
    counts = json.loads(report.read_text())["counts"]
    assert f"  {'clear_raced':20} {counts['clear_raced']}\n" in out
    assert counts["clear_raced"] == counts["clear_void"]
    assert counts["clear_good"] + counts["clear_void"] + counts["no_cycle"] + counts[
        "clear_contended"] == counts["clearing_calls"] == 24
