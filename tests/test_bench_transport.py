"""``agentd bench transport --quick`` runs end to end and writes its figures (no figure is
asserted against a goal here: speed belongs to the benchmark, not to tests)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.clihelpers import cli


def test_bench_transport_quick_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "transport.json"
    result = cli("bench", "transport", "--quick", "--json", str(out), "--no-goals")
    assert "(c) Noise + outbox/inbox/ack, durable" in result.stdout
    figures = json.loads(out.read_text())
    for key in ("plain_small_msgs_s", "noise_small_msgs_s", "plain_large_mb_s",
                "noise_large_mb_s", "handshakes_s", "durable_small_msgs_s"):
        assert figures[key] > 0, key
