"""``agentd bench sim`` runs its sizes as real ``agentd sim`` processes and reports each."""

from __future__ import annotations

import json

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
