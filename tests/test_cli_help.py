"""The CLI's front door: usage and method help come from the registry, and stay in the README."""

from __future__ import annotations

import inspect
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from agentd import cli
from agentd.bench import BENCHMARKS, verdict
from agentd.bench import usage as bench_usage
from agentd.config_files import control_socket
from agentd.errors import UserError, did_you_mean
from agentd.human import duration, render
from agentd.methods import describe, method_help, plain, registry
from tests.clihelpers import AGENTD

README = Path(__file__).resolve().parent.parent / "README.md"
README_TEXT = README.read_text(encoding="utf-8")


def _readme_rpc_methods() -> set[str]:
    """Method names in the first column of the README's RPC table (``a`` / ``.b`` rows too)."""
    text = README.read_text()
    section = text[text.index("## RPC methods"):]
    section = section[:section.index("\n## ", 1)]
    names: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split("|")[1]
        cells = re.findall(r"`([^`]+)`", first)
        for cell in cells:
            names.add(cells[0].rsplit(".", 1)[0] + cell if cell.startswith(".") else cell)
    return names


def test_every_registered_method_has_help_and_a_readme_row():
    documented = _readme_rpc_methods()
    methods = registry()
    assert len(methods) > 30
    for name, method in methods.items():
        described = describe(name, method)
        assert described["doc"], f"{name} has no docstring"
        assert "``" not in described["doc"] and ":class:" not in described["doc"]
        private = re.search(r"\b_[a-z]\w*", described["doc"])  # a name only the code knows
        assert private is None, f"{name}'s help names {private[0]}"
        assert name in documented, f"{name} is missing from the README's RPC table"
    assert documented <= set(methods), f"README documents unknown methods: " \
                                       f"{sorted(documented - set(methods))}"


def test_every_optional_param_without_a_fixed_default_is_explained():
    """agentd help shows such a param as [name=null]: its docstring must say what leaving it
    out does (users.add's name, the cuid; ch.log's payload_type, from the payload)."""
    unexplained = []
    for name, method in registry().items():
        doc = plain(inspect.cleandoc(method.__doc__ or ""))
        unexplained += [f"{name} {param['name']}" for param in describe(name, method)["params"]
                        if not param["required"] and param["default"] is None
                        and not re.search(rf"\b{param['name']}\b", doc)]
    assert unexplained == []


def test_no_method_help_names_the_code_behind_it():
    """agentd help chit.accept said "refused as rpc_pay refuses": a name of the code's, not
    one a user types."""
    for name, method in registry().items():
        doc = plain(inspect.cleandoc(method.__doc__ or ""))
        assert not re.search(r"\brpc_|:meth:|:func:|``", doc), (name, doc)
        # a module's path, or a constant's name where its value goes ("at most
        # REQUEST_TIMEOUT"): every upper-case word with an underscore is a documented code
        assert not re.search(r"\b(?:protocol|agentd|store)\.[a-z_]+\.", doc), (name, doc)
        for word in re.findall(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b", doc):
            assert f"`{word}`" in README_TEXT, (name, word)


def test_usage_names_every_method_and_benchmark(capsys):
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in registry():
        assert re.search(rf"[ ,]{re.escape(name)}(,|\n)", text), name
    assert "{" + ",".join(BENCHMARKS) + "}" in text
    bench = bench_usage()
    for name in BENCHMARKS:
        assert re.search(rf"^  {name} +\w", bench, re.MULTILINE), name
    assert "``" not in bench


def test_method_help_with_and_without_a_config(capsys, tmp_path):
    assert cli.main(["help", "peers.ping"]) == 0
    text = capsys.readouterr().out
    assert "usage: agentd -c CONFIG peers.ping agent=AGENT [count=1]" in text
    assert "count  int, default 1" in text
    config = tmp_path / "broken.toml"
    config.write_text("this is not toml")
    assert cli.main(["-c", str(config), "help", "tally.offer"]) == 0  # no node, no validation
    assert "partner_limit" in capsys.readouterr().out
    assert cli.main(["-c", str(config), "help", "method=tally.offer"]) == 0  # as the RPC's
    assert "partner_limit" in capsys.readouterr().out
    with pytest.raises(UserError, match="did you mean tally"):
        method_help("tally.acept")
    whole = method_help("tally.invite")  # every paragraph of the docstring, not the first
    assert "side is ours: stock (vendor, the default) or foil (client)" in whole


def test_help_on_help_and_on_what_help_does_not_know(capsys):
    """agentd help --help said "unknown method '--help' (did you mean help?)"; a command,
    an option or a second name each got "unknown method", or was ignored."""
    for argv in (["help", "--help"], ["help", "-h"], ["help", "help"],
                 ["-c", "any.toml", "help", "--help"]):
        assert cli.main(argv) == 0
        assert capsys.readouterr().out == cli.HELP_USAGE
    with pytest.raises(SystemExit) as exited:  # the command's own --help, from argparse
        cli.main(["help", "init"])
    assert exited.value.code == 0 and "--listen" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"^unknown option '--foo' for agentd help; usage: "
                                        r"agentd help \[METHOD \| COMMAND \| bench NAME\]$"):
        cli._main(["help", "--foo"])
    with pytest.raises(UserError, match=r"takes one METHOD or COMMAND \(or bench NAME\), not "
                                        r"'peers\.ping extra'"):
        cli._main(["help", "peers.ping", "extra"])
    with pytest.raises(SystemExit) as exited:  # a benchmark's options, as bench NAME --help
        cli.main(["help", "bench", "lifts"])
    assert exited.value.code == 0 and "--in-flight" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"'inti' is neither a method nor a command \(did you "
                                        r"mean init\?\)"):
        cli._main(["help", "inti"])


def test_control_socket_is_found_without_validating_the_config(tmp_path):
    config = tmp_path / "n.toml"
    config.write_text('[node]\ndata_dir = "d"\nbogus = 1\n')
    assert control_socket(config) == tmp_path / "d" / "agentd.sock"
    config.write_text('[node]\ndata_dir = "d2"\nlisten = \n')  # not TOML at all
    assert control_socket(config) == tmp_path / "d2" / "agentd.sock"
    config.write_text("[node]\n")
    with pytest.raises(UserError, match=r"n\.toml: node\.data_dir is required"):
        control_socket(config)
    config.write_text("# agentd\nA README, not a config\n")
    with pytest.raises(UserError, match=r"n\.toml: is not a TOML config \(.*\), and "
                                        r"node\.data_dir is required"):
        control_socket(config)
    # an edit saved as Latin-1: the node can still be told to reload (it names the problem)
    config.write_bytes(b'[node]\ndata_dir = "d3"\nname = "caf\xe9"\n')
    assert control_socket(config) == tmp_path / "d3" / "agentd.sock"
    config.write_text('[sim]\nname = "x"\n[nodes]\ncount = 2\n')  # a scenario, not a config
    with pytest.raises(UserError, match=r"n\.toml: a simulation scenario \(\[sim\]\), not a "
                                        r"node config: agentd sim .*n\.toml runs it$"):
        control_socket(config)


@pytest.mark.parametrize("argv", [["--help"], ["sim", "ring"]], ids=["usage", "sim"])
def test_a_closed_stdout_ends_quietly(tmp_path, argv):
    """agentd sim ring | head: the sim's first print raised inside its nursery, a traceback
    of 40 lines, where anything else ends quietly."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to stdout now fails with EPIPE
    try:
        result = subprocess.run([*AGENTD, *argv], stdout=write_end, stderr=subprocess.PIPE,
                                text=True, timeout=60, cwd=tmp_path)
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == 141


def test_bench_goals_decide_the_exit_status(capsys):
    assert verdict([("a 0.49x (goal >= 0.5x)", False), ("b", True)], no_goals=False) == 1
    assert capsys.readouterr().out == "goal missed: a 0.49x (goal >= 0.5x)\n"
    assert verdict([("a", False)], no_goals=True) == 0
    assert "goal missed: a" in capsys.readouterr().out
    assert verdict([("a", True)], no_goals=False) == 0


def test_human_output():
    info = render("getinfo", {"name": "alice", "uptime_s": 3725.2, "roles": [],
                              "counters": {"frames_in": 3, "rejected": {}}})
    assert info == "name: alice\nuptime_s: 1 h 2 min\nroles: -\ncounters:\n  frames_in: 3\n" \
                   "  rejected: -\n"
    assert [duration(s) for s in (0, 45, 60, 125, 7980, 86_400 * 3 + 4 * 3600 + 59)] == [
        "0 s", "45 s", "1 min", "2 min 5 s", "2 h 13 min", "3 d 4 h"]
    bob = {"name": "bob", "agent": "B", "address": "127.0.0.1:7102", "source": "config",
           "connected": False, "last_seen": 1_700_000_000_000, "clock_ahead_ms": None}
    stranger = {"name": None, "agent": "Ë", "address": None, "source": "learned",
                "connected": False, "last_seen": None, "clock_ahead_ms": None}
    later = 1_700_000_000_000 + 7_980_000
    assert render("peers.list", [bob, stranger], later).splitlines() == [  # no offset yet
        "NAME  AGENT  ADDRESS         SOURCE   LAST_SEEN",
        "bob   B      127.0.0.1:7102  config   2 h 13 min ago",
        "-     Ë      -               learned  never"]
    assert render("peers.list", [{**bob, "clock_ahead_ms": 5200, "connected": True},
                                 stranger], later).splitlines() == [
        "NAME  AGENT  ADDRESS         SOURCE   LAST_SEEN  CLOCK_AHEAD_MS",
        "bob   B      127.0.0.1:7102  config   connected  5200",
        "-     Ë      -               learned  never      -"]
    tallies = render("tally.list", [
        {"tally": "T", "state": "open", "partner": f"bob:{'B' * 43}@127.0.0.1:7102",
         "balance": -300, "capacity": {"pay": 700, "receive": 1300}, "chain": {"index": 2}}])
    assert tallies.splitlines()[0].split() == [
        "TALLY", "CUID", "SIDE", "STATE", "PARTNER", "BALANCE", "CAN_PAY", "CAN_RECEIVE",
        "CHAIN"]
    assert tallies.splitlines()[1].split() == [
        "T", "-", "-", "open", "bob@BBBBBBBB", "-300", "700", "1300", "2/-"]
    assert render("tally.list", []) == "(none)\n"
    routes = render("route.find", [{"path": [{"cuid": "ann", "agent": "A" * 43},
                                             {"cuid": "cyd", "agent": "C" * 43}],
                                    "capacity": 700}])
    assert routes.splitlines() == ["CAPACITY  PATH", "700       ann@AAAAAAAA -> cyd@CCCCCCCC"]


AGENTS = {"alice": "wKIbDc-V_mRGqnY-o0zYiOBvUq5Iu6orALZXJk9tJzU",
          "bob": "ZHL-dKJEj0V-_sc9KZmj7iXgD6dxyx97RrHQGuGUZpc",
          "carol": "AQv6yDgevR6dddWOPKi5Z1em2g9Igv_sJIpqj0aYOuY",
          "clearinghouse": "JiNcmgMw1uZsTQwpdxZZ-xlO0-olyRUz--NuzoEZmRE"}


def test_human_peers_and_tallies_fit_100_columns():
    """A node of a small network with addresses by name: 43-character agent ids and 36-character
    tally ids in full made peers.list and tally.list 120-135 columns wide. The tables cut
    them (their start, as a path's users show) and merge what repeats; the JSON keeps them."""
    now = 1_765_040_435_000

    def peer(name: str | None, agent: str, address: str | None, seen_s: int | None,
             clock: int | None) -> dict:
        return {"name": name, "agent": agent, "address": address, "source":
                "config" if name else "learned", "connected": seen_s == 0,
                "last_seen": None if seen_s is None else now - seen_s * 1000,
                "clock_ahead_ms": clock}

    peers = render("peers.list", [
        peer("bob", AGENTS["bob"], "bob.chips.example.org:7102", 0, -1),
        peer("carol", AGENTS["carol"], "carol.chips.example.org:7103", 86_400 * 12 + 3_600 * 23,
             -12_345),
        peer("clearinghouse", AGENTS["clearinghouse"], "clearing.example.org:7104", 0, 5200),
        peer(None, "Zm9yZ290dGVuLXN0cmFuZ2VyLWtleS0wMTIzNDU2Nzg", "[2001:db8::17]:7105", None,
             None)], now)
    lines = peers.splitlines()
    assert max(len(line) for line in lines) <= 100, peers
    assert [re.split(r"\s{2,}", line.strip()) for line in lines] == [
        ["NAME", "AGENT", "ADDRESS", "SOURCE", "LAST_SEEN", "CLOCK_AHEAD_MS"],
        ["bob", "ZHL-dKJE…", "bob.chips.example.org:7102", "config", "connected", "-1"],
        ["carol", "AQv6yDge…", "carol.chips.example.org:7103", "config", "12 d 23 h ago",
         "-12345"],
        ["clearinghouse", "JiNcmgMw…", "clearing.example.org:7104", "config", "connected",
         "5200"],
        ["-", "Zm9yZ290…", "[2001:db8::17]:7105", "learned", "never", "-"]]

    def tally(uuid: str, side: str, state: str, partner: str, balance: int,
              capacity: tuple[int, int], chain: tuple[int, int]) -> dict:
        return {"tally": uuid, "cuid": "alice", "side": side, "state": state,
                "partner": f"{partner}:{AGENTS[partner]}@{partner}.chips.example.org:7103",
                "balance": balance, "limit": 1_000_000, "partner_limit": 1_000_000,
                "capacity": dict(zip(("pay", "receive"), capacity, strict=True)),
                "chain": {"index": chain[0], "confirmed": chain[1], "hash": "h" * 43,
                          "pending": 0}}

    tallies = render("tally.list", [
        tally("cdfd881a-71f8-5139-848e-b616e9171ed1", "stock", "open", "bob", 1750,
              (1_001_750, 998_250), (1204, 1203)),
        tally("8ef03e63-25fb-5c8b-b388-fb54ef5a0ce9", "foil", "offer.open", "carol", 0,
              (0, 0), (0, 0)),
        tally("48923de2-f9ac-548f-883a-10678c2ed3b3", "foil", "C.open", "bob", -250_000,
              (250_000, 0), (31, 31))])
    lines = tallies.splitlines()
    assert max(len(line) for line in lines) <= 100, tallies
    assert [re.split(r"\s{2,}", line.strip()) for line in lines] == [
        ["TALLY", "CUID", "SIDE", "STATE", "PARTNER", "BALANCE", "CAN_PAY", "CAN_RECEIVE",
         "CHAIN"],
        ["cdfd881a…", "alice", "stock", "open", "bob@ZHL-dKJE", "1750", "1001750", "998250",
         "1204/1203"],
        ["8ef03e63…", "alice", "foil", "offer.open", "carol@AQv6yDge", "0", "0", "0", "0/0"],
        ["48923de2…", "alice", "foil", "C.open", "bob@ZHL-dKJE", "-250000", "250000", "0",
         "31/31"]]




def test_human_tally_chain_says_how_many_blocks_it_lacks():
    """A chain that lacks blocks its partner confirmed (restored from a backup) showed as
    ``0/0``, what the README calls settled; it says how many it lacks."""
    row = {"tally": "cdfd881a-71f8-5139-848e-b616e9171ed1", "cuid": "alice", "side": "stock",
           "state": "open", "partner": f"bob:{AGENTS['bob']}@bob.chips.example.org:7102",
           "balance": 0, "capacity": {"pay": 10, "receive": 10},
           "chain": {"index": 0, "confirmed": 0, "hash": "h" * 43, "pending": 0, "missing": 3}}
    (_, line) = render("tally.list", [row]).splitlines()
    assert line.rstrip().endswith("  0/0 (3 missing)")
    row["chain"]["missing"] = 0
    assert render("tally.list", [row]).splitlines()[1].rstrip().endswith("  0/0")

def test_human_peers_with_a_full_ipv6_address_fit_100_columns():
    """A peer at a full IPv6 address (46 characters with its port) took peers.list to 110
    columns: a long address shows its first and last groups either side of "…", and its port
    whole (a name as long, its first label and its domain); the JSON keeps it whole."""
    now = 1_765_040_435_000
    rows = [{"name": "clearinghouse", "agent": AGENTS["clearinghouse"],
             "address": "[2001:db8:1234:5678:9abc:def0:1234:5678]:9735", "source": "config",
             "connected": False, "last_seen": now - (86_400 * 12 + 3_600 * 23) * 1000,
             "clock_ahead_ms": -12_345},
            {"name": "bob", "agent": AGENTS["bob"],
             "address": "node-17.eu-west-3.chips.example.org:7102", "source": "config",
             "connected": True, "last_seen": now, "clock_ahead_ms": 5200},
            {"name": "carol", "agent": AGENTS["carol"], "address": "[::1]:7103",
             "source": "learned", "connected": False, "last_seen": None,
             "clock_ahead_ms": None}]
    lines = render("peers.list", rows, now).splitlines()
    assert max(len(line) for line in lines) <= 100, lines
    assert [re.split(r"\s{2,}", line.strip()) for line in lines] == [
        ["NAME", "AGENT", "ADDRESS", "SOURCE", "LAST_SEEN", "CLOCK_AHEAD_MS"],
        ["clearinghouse", "JiNcmgMw…", "[2001:db8…1234:5678]:9735", "config", "12 d 23 h ago",
         "-12345"],
        ["bob", "ZHL-dKJE…", "node-17…example.org:7102", "config", "connected", "5200"],
        ["carol", "AQv6yDge…", "[::1]:7103", "learned", "never", "-"]]

def test_human_lifts_fit_100_columns():
    """lift.list showed each lift's uuid whole and its path as cuid@agent hops: 155 columns
    for a circle of three. The table cuts the uuid as it does a tally's and shows the path's
    users alone (lift.show's table and the JSON have each hop's node), and a long path its start,
    "…", its end and how many hops it has."""
    def lift(uuid: str, kind: str, state: str, units: int, users: list[str]) -> dict:
        return {"lift": uuid, "kind": kind, "state": state, "units": units,
                "path": [{"cuid": user, "agent": AGENTS.get(user, "Q" * 43), "tally": None}
                         for user in users],
                "referee": AGENTS["clearinghouse"], "deadline": 1_765_040_555_000,
                "date": 1_765_040_435_000, "memo": "", "payor": users[0], "decision": None,
                "equivocation": None, "error": None, "chits": []}

    long_way = ["alice", *(f"hop{i}" for i in range(1, 12)), "carol"]
    text = render("lift.list", [
        lift("5b0e1f7c-2a8d-4f0e-9c61-3d2b7a9e4f10", "linear", "good", 2500,
             ["alice", "bob", "carol"]),
        lift("c3a1d9e2-7b44-4e1a-8f25-6e0d4c2b1a97", "circular", "void", 1_000_000,
             ["alice", "bob", "carol", "alice"]),
        lift("0f9e8d7c-6b5a-4c3d-2e1f-0a9b8c7d6e5f", "linear", "pend", 75, long_way)])
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100, text
    assert [re.split(r"\s{2,}", line.strip()) for line in lines] == [
        ["LIFT", "KIND", "STATE", "UNITS", "DEADLINE", "PATH"],
        ["5b0e1f7c…", "linear", "good", "2500", "2025-12-06 17:02:35 UTC",
         "alice -> bob -> carol"],
        ["c3a1d9e2…", "circular", "void", "1000000", "2025-12-06 17:02:35 UTC",
         "alice -> bob -> carol -> alice"],
        ["0f9e8d7c…", "linear", "pend", "75", "2025-12-06 17:02:35 UTC",
         "alice -> … -> carol (12 hops)"]]
    shown = render("lift.show", lift("5b0e1f7c-2a8d-4f0e-9c61-3d2b7a9e4f10", "linear", "good",
                                     2500, ["alice", "bob"]))  # its uuid whole, hops' nodes
    assert "lift: 5b0e1f7c-2a8d-4f0e-9c61-3d2b7a9e4f10\n" in shown
    assert ("path:\n  CUID   AGENT      TALLY\n  alice  wKIbDc-V…  -\n  bob    ZHL-dKJE…  -\n"
            in shown)


def test_human_clearing_house_entries_fit_a_terminal():
    """ch.query entries carry three 64-digit hashes, an agent id and a payload: a row of
    each in full was ~400 columns. The table cuts them short; the JSON keeps them whole."""
    def entry(seq: int, text: str | None) -> dict:
        return {"pid": "8e0c5a4e-0a49-5b38-9ad6-1d4b5e1c7f60", "seq": seq,
                "prev_hash": "0" * 64, "timestamp": 1_700_000_000_000, "client_id": "Z" * 43,
                "header": {"kind": "tally.open" if text is None else None, "ref": "x" * 36},
                "payload_sha256": "a" * 64, "payload_type": "application/msgpack",
                "payload": "i" * 600, "entry_hash": f"{seq:x}" * 64,
                "document_id": f"{seq:x}" * 64, "payload_text": text}

    text = render("ch.query", {"entries": [entry(12, None), entry(11, "offer: 10 widgets, "
                                                                         "delivered by Friday")],
                               "total": 2, "page": 1, "size": 100, "has_more": False})
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100, text
    cells = [re.split(r"\s{2,}", line.strip()) for line in lines[1:4]]
    assert cells == [
        ["SEQ", "TIMESTAMP", "CLIENT_ID", "KIND", "DOCUMENT_ID", "TEXT"],
        ["12", "2023-11-14 22:13:20 UTC", "ZZZZZZZZ…", "tally.open", "cccccccccccc…", "-"],
        ["11", "2023-11-14 22:13:20 UTC", "ZZZZZZZZ…", "-", "bbbbbbbbbbbb…",
         "offer: 10 widgets, deliv…"]]
    assert lines[4:] == ["total: 2", "page: 1", "size: 100", "has_more: no"]


def test_human_receipts_show_the_uuid_of_a_namespaced_pid():
    """A tally's evidence is under AGENT/TALLY (80 characters): the table cuts the agent id
    short, as it does a partner's, and keeps the uuid that tells one tally from another."""
    tally = "8e0c5a4e-0a49-5b38-9ad6-1d4b5e1c7f60"
    rows = [{"pid": f"{'A' * 43}/{tally}", "seq": 3, "kind": "chit.good", "status": "valid",
             "document_id": "c" * 64},
            {"pid": "deal-1", "seq": 1, "kind": "ch.log", "status": "valid",
             "document_id": "d" * 64}]
    lines = render("receipts.list", rows).splitlines()
    assert [re.split(r"\s{2,}", line.strip()) for line in lines[1:]] == [
        [f"AAAAAAAA…/{tally}", "3", "chit.good", "valid", "cccccccccccc…"],
        ["deal-1", "1", "ch.log", "valid", "dddddddddddd…"]]
    assert max(len(line) for line in lines) <= 100


def test_human_times_are_dates_wherever_they_are():
    """-H shows a time in ms since the epoch as a date: receipts.verify's pending_detail
    ``since`` and getinfo's ``last_db_error_at`` were shown as 1700000000000."""
    pending = {"ok": True, "checked": 3, "pending": 2, "pending_detail": [
        {"clearing_house": AGENTS["clearinghouse"], "configured": True, "logs": 2, "keys": 0,
         "since": 1_700_000_000_000, "problem": None}], "failures": []}
    lines = render("receipts.verify", pending).splitlines()
    assert [re.split(r"\s{2,}", line.strip()) for line in lines[4:6]] == [
        ["CLEARING_HOUSE", "CONFIGURED", "LOGS", "KEYS", "SINCE", "PROBLEM"],
        ["JiNcmgMw…", "yes", "2", "0", "2023-11-14 22:13:20 UTC", "-"]]
    info = render("getinfo", {"last_db_error": "disk I/O error",
                              "last_db_error_at": 1_700_000_000_000})
    assert info.splitlines()[1] == "last_db_error_at: 2023-11-14 22:13:20 UTC"


def test_a_mistyped_name_gets_the_names_it_is_close_to():
    known = ["help", "init", "run", "peers.ping", "peers.add", "lift.pay", "lift.wait"]
    assert did_you_mean("halp", known) == " (did you mean help?)"
    assert did_you_mean("peers.pnig", known) == " (did you mean peers.ping, peers.add?)"
    assert did_you_mean("lift", known) == " (did you mean one of lift.pay, lift.wait?)"
    assert did_you_mean("peers", known) == " (did you mean one of peers.add, peers.ping?)"
    assert did_you_mean("zzz", known) == ""
    assert did_you_mean("Lift.Pay", known) == " (did you mean lift.pay?)"  # not lift.wait too
    with pytest.raises(UserError, match=r"'halp' is not a command \(did you mean help\?\)"):
        cli._main(["halp"])


def test_a_config_without_a_method_says_a_method_is_missing(capsys):
    with pytest.raises(UserError, match=r"no METHOD to call: agentd -c CONFIG METHOD"):
        cli._main(["-c", "any.toml"])
    assert cli._main(["-c", "any.toml", "--help"]) == 0  # asked for: the usage
    assert "agentd -c CONFIG METHOD" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"^no METHOD to call: agentd --socket PATH METHOD"):
        cli._main(["--socket", "any.sock"])  # it printed the whole usage


def test_a_config_or_socket_given_to_a_command_that_takes_none_is_refused(capsys, tmp_path):
    """``agentd -c CONFIG up`` said only "unrecognized arguments: -c", ``agentd -c CONFIG sim
    ring`` took the config for the scenario, and ``agentd --socket PATH up`` started
    configs/local: each now says what to type instead, before the command runs."""
    with pytest.raises(UserError, match=r"^agentd up takes the config as its argument: agentd "
                                        r"up configs/local/alice\.toml$"):
        cli._main(["-c", "configs/local/alice.toml", "up"])
    with pytest.raises(UserError, match=r"^-c CONFIG is for agentd run and method calls; "
                                        r"agentd sim does not take it$"):
        cli._main(["-c", "configs/local/alice.toml", "sim", "ring"])
    with pytest.raises(UserError, match=r"^--socket names the control socket of a node to call "
                                        r"a method on; agentd up does not take it$"):
        cli._main(["--socket", "alice.sock", "up", str(tmp_path)])  # (nothing to start there)
    assert capsys.readouterr().out == ""  # nothing ran


def test_a_config_and_a_socket_together_are_refused(tmp_path):
    """``agentd -c CONFIG --socket PATH METHOD`` called the node at PATH and ignored the
    config (and, with no node there, told how to start the config's): which node was meant
    is not for the CLI to guess."""
    both = "^-c CONFIG and --socket PATH both name the node to call: give one of them "
    for argv in (["getinfo"], ["stop"], []):
        with pytest.raises(UserError, match=both):
            cli._main(["-c", "configs/local/alice.toml", "--socket", str(tmp_path / "x.sock"),
                       *argv])
    with pytest.raises(UserError, match=both):  # in either order
        cli._main(["--socket", str(tmp_path / "x.sock"), "-c", "alice.toml", "getinfo"])


def test_stopping_a_node_that_is_not_running_does_not_say_to_start_it(tmp_path):
    """``agentd -c CONFIG stop`` with no node there said "start it with 'agentd up ...'"."""
    config = tmp_path / "agentd.toml"
    config.write_text('[node]\ndata_dir = "data"\n')
    with pytest.raises(UserError, match=r"^no agentd is running here \(no control socket at "
                                        r".*/data/agentd\.sock\); nothing to stop$"):
        cli._main(["-c", str(config), "stop"])
    with pytest.raises(UserError, match=r"; start it with 'agentd up .*agentd\.toml'"):
        cli._main(["-c", str(config), "getinfo"])


def test_a_killed_nodes_socket_file_is_told_apart_from_no_socket(tmp_path):
    from agentd.rpc import call

    path = tmp_path / "agentd.sock"
    with pytest.raises(UserError, match="no control socket at"):
        call(path, "getinfo", {})
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # bound, never listening, then gone: what a SIGKILL leaves
    stale.close()
    with pytest.raises(UserError, match=r"nothing answers at .*: the node stopped without "
                                        r"removing it"):
        call(path, "getinfo", {})
    config = tmp_path / "agentd.toml"  # --socket given the config: no node is said to be down
    config.write_text('[node]\ndata_dir = "data"\n')
    for wrong in (config, tmp_path):
        with pytest.raises(UserError, match=rf"^{re.escape(str(wrong))} is not a control socket:"
                                            r" --socket takes the agentd\.sock in a node's "
                                            r"data_dir; a node's config goes with -c CONFIG$"):
            cli._main(["--socket", str(wrong), "getinfo"])


def test_the_node_may_be_named_after_the_method_and_a_spaced_method_is_told(capsys, tmp_path):
    """``agentd tally.show cuid=alice -c CONFIG`` said "'tally.show' is not a command ... give
    its config" (it was given), ``agentd help tally.show -c CONFIG`` was refused, and
    ``agentd -c CONFIG tally list`` said only "expected key=value, got 'list'"."""
    config = tmp_path / "agentd.toml"
    config.write_text('[node]\ndata_dir = "data"\n')
    not_running = rf"^no agentd is running here \(no control socket at {re.escape(str(tmp_path))}"
    for argv in (["getinfo", "-c", str(config)], ["getinfo", f"--config={config}"],
                 ["tally.show", "cuid=alice", "--config", str(config), "tally=x"],
                 ["getinfo", "--socket", str(tmp_path / "data" / "agentd.sock")]):
        with pytest.raises(UserError, match=not_running):
            cli._main(argv)
    for argv in (["help", "tally.show", "-c", str(config)], ["help", "-c", str(config),
                                                             "tally.show"]):
        assert cli._main(argv) == 0
        assert capsys.readouterr().out.startswith("usage: agentd -c CONFIG tally.show ")
    with pytest.raises(UserError, match=r"^-c needs a value: agentd -c CONFIG METHOD"):
        cli._main(["getinfo", "-c"])
    with pytest.raises(UserError, match=r"^-c is given twice \(a\.toml and b\.toml\)"):
        cli._main(["-c", "a.toml", "getinfo", "-c", "b.toml"])
    spaced = r" \(did you mean tally\.list\? a method's name is one word\)"
    with pytest.raises(UserError, match=rf"^expected key=value, got 'list'{spaced}$"):
        cli._main(["-c", str(config), "tally", "list"])
    with pytest.raises(UserError, match=rf"^'tally' is not a command{spaced}; to call"):
        cli._main(["tally", "list"])
    assert did_you_mean("GETINFO", ["getinfo", "peers.list"]) == " (did you mean getinfo?)"


def test_each_commands_help_names_its_arguments_as_the_usage_does(capsys):
    """`agentd --help` writes `agentd init DIR --name NAME --listen HOST:PORT` and the README
    too, but `agentd init --help` said `--listen LISTEN ... dir` (argparse's names), and
    `agentd sim --help` `scenario`: each command's own help names its arguments as the usage
    lines do."""
    assert cli.main(["--help"]) == 0
    lines = re.findall(r"^  agentd (init|run|sim|up|down|demo|completion) (.*?)(?:  |$)",
                       capsys.readouterr().out, re.MULTILINE)
    assert {command for command, _ in lines} >= {"init", "run", "sim", "up", "down"}
    for command, rest in lines:
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        usage = capsys.readouterr().out.split("\n\n")[0]
        for name in re.findall(r"--?[a-z-]+(?: [A-Z][A-Z:|]*)?|\b[A-Z][A-Z:|]+\b", rest):
            assert name in usage, (command, name, usage)


def test_relay_query_help_says_what_an_address_is():
    """agentd help relay.query said "the source named in address" and nothing of what an
    address is: a new user had to find the README's Relay views. It says the form, each view
    and an example."""
    text = method_help("relay.query")
    assert "address is RELAY/NETWORK/VIEW" in text
    for view in ("node:info", "user:<cuid>:balance", "tally:<uuid>", "tally:<uuid>:chits",
                 "lift:<uuid>", "127.0.0.1:7102/local/node:info"):
        assert view in text, view


def test_run_help_says_how_to_stop_and_reload_a_node(capsys):
    """agentd run --help said "Run a node in the foreground." and nothing of the signals the
    README tells an operator to use: it names them, and agentd up for the background."""
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("SIGINT or SIGTERM stops it cleanly", "SIGHUP re-reads its config",
                  "'agentd up' starts nodes in the background"):
        assert words in text, words


@pytest.mark.parametrize(("argv", "complaint"), [
    (["chits", "--count", "-5"], "argument --count: must be from 2 to 10,000,000, not -5"),
    (["chits", "--count", "0"], "argument --count: must be from 2 to 10,000,000, not 0"),
    (["chits", "--batch", "0"], "argument --batch: must be from 1 to 1,000, not 0"),
    (["lifts", "--ring", "3"], "argument --ring: must be from 6 to 64, not 3"),
    (["lifts", "--in-flight", "many"], "argument --in-flight: 'many' is not a whole number"),
    (["abuse", "--seconds", "nan"], "argument --seconds: must be from 1 to 3,600, not nan"),
    (["ch", "--batch", "300"], "argument --batch: must be from 1 to 256, not 300"),
])
def test_a_benchmarks_counts_and_seconds_are_checked_before_it_runs(capsys, argv, complaint):
    """bench chits --count -5 ran into a traceback and --count 0 silently took the default:
    every count and length is a usage error out of its range, before anything starts."""
    with pytest.raises(SystemExit) as stopped:
        cli.main(["bench", *argv])
    assert stopped.value.code == 2 and complaint in capsys.readouterr().err
