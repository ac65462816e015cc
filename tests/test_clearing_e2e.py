"""End to end: a clearing house and three clients as `agentd run` processes, through the CLI."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import pytest

from tests.clihelpers import cli, init, running


def rpc(config: str, method: str, *params: str) -> dict | list:
    return json.loads(cli("-c", config, method, *params).stdout)


@pytest.fixture
def evidence_network(tmp_path):
    infos = {name: init(tmp_path, name) for name in ("house", "alice", "bob", "carol")}
    house = Path(infos["house"]["config"])
    house.write_text(house.read_text().replace("roles = []", 'roles = ["clearinghouse"]'))
    for name in ("alice", "bob", "carol"):
        with open(infos[name]["config"], "a") as handle:
            handle.write(f'\n[clearinghouse]\nagent = "{infos["house"]["agent"]}"\n'
                         f'address = "127.0.0.1:{infos["house"]["port"]}"\n')
    with running(infos) as processes:
        yield infos, processes


def test_shared_process_refusal_and_offline_receipt_audit(evidence_network):
    infos, processes = evidence_network
    alice, bob, carol = (infos[n]["config"] for n in ("alice", "bob", "carol"))
    owners = json.dumps([infos["bob"]["agent"]])
    created = rpc(alice, "ch.create_process", "pid=deal-7", f"owners={owners}")
    assert created["owners"] == sorted([infos["alice"]["agent"], infos["bob"]["agent"]])
    first = rpc(alice, "ch.log", "pid=deal-7", "payload=contract signed")
    second = rpc(bob, "ch.log", "pid=deal-7", 'payload={"delivered": 3}', "mode=header")
    assert (first["seq"], second["seq"]) == (1, 2)

    refused = cli("-c", carol, "ch.log", "pid=deal-7", "payload=mine", check=False)
    assert refused.returncode == 1
    error = json.loads(refused.stderr)
    assert error["code"] == -32010 and error["reason"] == "NOT_AUTHORIZED"
    assert error["message"].startswith("NOT_AUTHORIZED: ")

    # one entry refused: exit 1 for a script to tell, the whole result still on stdout
    partly = cli("-c", carol, "ch.log_many", 'entries=[{"pid": "deal-7", "payload": "mine"},'
                 ' {"pid": "carols", "payload": "a"}, {"pid": "carols", "payload": "b"}]',
                 check=False)
    assert partly.returncode == 1 and partly.stderr == ""
    many = json.loads(partly.stdout)
    assert many[0]["error"]["code"] == "NOT_AUTHORIZED"
    assert [(r["pid"], r["seq"]) for r in many[1:]] == [("carols", 1), ("carols", 2)]
    shown = cli("-H", "-c", carol, "ch.log_many", 'entries=[{"pid": "deal-7", "payload": 1}]',
                check=False)
    assert shown.returncode == 1 and "NOT_AUTHORIZED: " in shown.stdout
    every = rpc(carol, "ch.log_many", 'entries=[{"pid": "carols", "payload": "c"}]')  # exit 0
    assert every[0]["seq"] == 3 and "error" not in every[0]

    page = rpc(bob, "ch.query", "pid=deal-7", "sort=asc")
    assert [e["seq"] for e in page["entries"]] == [1, 2] and page["total"] == 2
    assert page["entries"][0]["payload_text"] == "contract signed"
    assert page["entries"][1]["payload"] is None  # mode=header: the hash only
    entry = rpc(alice, "ch.get", "pid=deal-7", f"id={second['document_id']}")
    assert entry["prev_hash"] == first["document_id"]

    processes["house"].send_signal(signal.SIGTERM)  # the audit below is offline
    assert processes["house"].wait(timeout=5) == 0
    assert rpc(alice, "receipts.verify") == {"ok": True, "checked": 1, "pending": 0,
                                             "pending_detail": [], "failures": []}
    [listed] = rpc(bob, "receipts.list")
    assert listed["seq"] == 2 and listed["status"] == "valid"

    db = Path(infos["alice"]["config"]).parent / "data" / "agentd.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE receipts SET token = replace(token, '~', 'x~')")
    audit = cli("-c", alice, "receipts.verify", check=False)
    assert audit.returncode == 1
    result = json.loads(audit.stdout)
    assert result["ok"] is False
    [failure] = result["failures"]
    assert failure["seq"] == 1 and failure["fault"] == "malformed"
    assert "signature" in failure["message"]


def test_bench_ch_runs_end_to_end_and_reports_its_figures(tmp_path):
    out = tmp_path / "ch.json"
    result = cli("bench", "ch", "--quick", "--clients", "1", "--seconds", "1", "--batch", "20",
                 "--no-goals", "--json", str(out))  # too short a run to judge its goal
    assert "ratio" in result.stdout and "one entry per ch.log call" in result.stdout
    figures = json.loads(out.read_text())
    assert figures["receipts"] > 0 and figures["receipts_s"] > 0 and figures["jwt_sign_s"] > 0
    assert figures["ratio"] == pytest.approx(figures["receipts_s"] / figures["jwt_sign_s"])
    assert figures["receipts"] % 20 == 0  # whole calls only: every entry got its receipt
    assert figures["single_receipts_s"] > 0 and figures["p99_ms"] >= figures["p50_ms"] > 0
