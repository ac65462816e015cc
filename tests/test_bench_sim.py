"""``agentd bench sim`` runs its sizes as real ``agentd sim`` processes and reports each."""

from __future__ import annotations

import json

import pytest

from agentd.bench import sim as bench_sim


def test_bench_sim_quick_reports_every_figure(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_sim, "QUICK_SIZES", (11, 13))  # the smallest with 5 links/node
    monkeypatch.setattr(bench_sim, "PAYMENTS_PER_NODE", 2)
    out = tmp_path / "figures.json"
    assert bench_sim.main(["--quick", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    for nodes in (11, 13):
        assert figures[f"nodes_{nodes}_wall_s"] > 0
        assert figures[f"nodes_{nodes}_rss_mb"] > 10  # a Python process with 11+ nodes
        assert figures[f"nodes_{nodes}_payments_s"] > 0
    assert figures["growth"] > 0
    assert "growth (wall per node, 13 vs 11)" in capsys.readouterr().out


def test_bench_sim_judges_its_goal_as_every_benchmark_does(monkeypatch, capsys):
    """growth over 1.5 is a goal missed: said, and exit 1 unless --no-goals (it printed
    '(goal <= 1.5)' and exited 0 whatever the growth, and had no --no-goals)."""
    monkeypatch.setattr(bench_sim, "QUICK_SIZES", (10, 20))
    walls = {10: 1.0, 20: 4.0}  # twice the nodes, four times the wall: growth 2
    monkeypatch.setattr(bench_sim, "measure", lambda nodes, workdir, extra: {
        f"nodes_{nodes}_wall_s": walls[nodes], f"nodes_{nodes}_rss_mb": 1.0,
        f"nodes_{nodes}_payments_s": 1.0, f"nodes_{nodes}_tallies_s": 1.0,
        f"nodes_{nodes}_duplicates": 0})
    assert bench_sim.main(["--quick"]) == 1
    assert "goal missed: growth 2.00 (goal <= 1.5)" in capsys.readouterr().out
    assert bench_sim.main(["--quick", "--no-goals"]) == 0
    with pytest.raises(SystemExit):
        bench_sim.main(["--help"])
    assert "``" not in capsys.readouterr().out  # plain text, as the other benchmarks' help
