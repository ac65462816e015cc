"""``agentd bench abuse --quick`` runs end to end and writes its figures (no figure is
asserted against a goal here: speed belongs to the benchmark, not to tests)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.clihelpers import cli


def test_bench_abuse_quick_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "abuse.json"
    result = cli("bench", "abuse", "--quick", "--seconds", "1", "--half-open", "50",
                 "--flood", "500", "--tricklers", "5", "--wait", "0", "--json", str(out),
                 "--no-goals")
    assert "legit ping p50 / p99" in result.stdout
    figures = json.loads(out.read_text())
    assert figures["quick"] is True and figures["flood_sent"] == 500
    assert figures["legit_pings"] > 0 and figures["legit_ping_p99_ms"] > 0
    assert figures["half_open_opened"] >= 50 and figures["tricklers"] == 5
    assert "outbox_after_60s" not in figures  # a short wait is reported as what it is
    assert {"rss_growth_mb", "outbox_after_wait", "outbox_wait_s"} <= set(figures)
