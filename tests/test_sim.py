"""The simulation runner: scenarios parse strictly, run on real nodes, and fail loudly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from agentd.bench import main as bench_main
from agentd.cli import main as cli_main
from agentd.config import load_config
from agentd.configs_dir import configs_dir, scenario_path
from agentd.errors import UserError
from agentd.sim import limits, load_scenario, main
from agentd.sim.lifts import lifts_atomic
from agentd.sim.report import Report
from agentd.sim.traffic import run_calls

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return path


def test_shipped_scenarios_parse():
    for path in (REPO / "configs" / "sims").glob("*.toml"):
        scenario = load_scenario(path)
        assert scenario.nodes and scenario.edges and scenario.traffic


def test_a_missing_scenario_lists_the_shipped_ones(tmp_path):
    with pytest.raises(UserError, match=r"scenario file not found \(shipped scenarios, by "
                       r"name: credit-ring, evidence, faults, lifts, mixed, random, ring, "):
        load_scenario(tmp_path / "nosuch.toml")


def test_a_scenario_that_is_no_text_file_is_one_line(tmp_path):
    """A directory (agentd sim configs/sims) or a file that is not UTF-8 was a traceback."""
    with pytest.raises(UserError, match=rf"^{tmp_path}: cannot read the scenario: Is a "
                                        r"directory$"):
        load_scenario(tmp_path)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[sim]\nname = "\xe9"\n')
    with pytest.raises(UserError, match=rf"^{latin}: not a scenario: not UTF-8 text \(byte 0xe9 "
                                        r"at offset 14; TOML files are UTF-8\)$"):
        load_scenario(latin)


def test_a_shipped_scenario_by_name_but_not_by_another_path(tmp_path, monkeypatch):
    """agentd sim /no/such/dir/faults.toml ran the shipped faults.toml, saying nothing: a
    mistyped path to an edited copy ran the stock scenario."""
    monkeypatch.chdir(tmp_path)
    shipped = configs_dir() / "sims" / "ring.toml"
    for name in ("ring", "ring.toml", "configs/sims/ring.toml"):
        assert scenario_path(name) == shipped
    typo = tmp_path / "no" / "ring.toml"
    assert scenario_path(str(typo)) == typo
    with pytest.raises(UserError, match=rf"^{typo}: scenario file not found"):
        main([str(typo)])


def test_a_node_config_and_a_scenario_are_told_apart(tmp_path):
    """agentd sim CONFIG said 'node is not a known key (did you mean nodes?)' and agentd up
    on a folder of scenarios the reverse: each now says what the file is and what runs it."""
    shipped = configs_dir() / "sims" / "ring.toml"
    with pytest.raises(UserError, match=rf"^{shipped}: a simulation scenario \(\[sim\]\), not "
                                        rf"a node config: agentd sim {shipped} runs it$"):
        load_config(shipped)
    config = configs_dir() / "local" / "alice.toml"
    with pytest.raises(UserError, match=rf"^{config}: a node's config \(\[node\]\), not a "
                                        r"simulation scenario: agentd run -c "):
        load_scenario(config)


def test_sim_help_names_the_shipped_scenarios(capsys):
    """agentd sim ring works from anywhere: --help says so, naming each shipped scenario."""
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "scenario TOML file, or a shipped one by name:" in text
    for path in (REPO / "configs" / "sims").glob("*.toml"):
        assert path.stem in text, path.stem


def test_a_shipped_scenario_is_found_by_name_whatever_options_come_first(tmp_path, capsys,
                                                                         monkeypatch):
    """agentd sim --workers 1 ring, away from the repository: the name is the scenario (an
    option's value before it was taken for the scenario, which then was not found, while the
    error listed ring among the shipped ones)."""
    monkeypatch.chdir(tmp_path)
    assert cli_main(["sim", "--workers", "1", "--json", "ring.json", "ring"]) == 0
    assert "sim 'ring of ten': 10 nodes" in capsys.readouterr().out
    assert json.loads((tmp_path / "ring.json").read_text())["checks"]["exactly_once"]


def test_an_output_that_cannot_be_written_is_refused_before_the_run(tmp_path, capsys):
    """--json FILE and --report DIR are tried as the command line is read: a mistyped path
    is refused at once, not after the run (minutes, for scale-1000) with a traceback."""
    scenario = str(write(tmp_path, SMALL))
    (tmp_path / "taken").write_text("a file")
    for option, path, why in (("--json", "nodir/report.json", "cannot write "),
                              ("--report", "taken", "is a file, not a directory"),
                              ("--report", "taken/sub", "cannot make the directory ")):
        with pytest.raises(SystemExit) as refused:
            main([scenario, option, str(tmp_path / path)])
        assert refused.value.code == 2
        said = capsys.readouterr()
        assert f"argument {option}: " in said.err and why in said.err, said.err
        assert "invariant" not in said.out  # nothing ran
    with pytest.raises(SystemExit) as refused:  # the benchmarks' --json too
        bench_main(["transport", "--json", str(tmp_path / "nodir" / "figures.json")])
    assert refused.value.code == 2 and "argument --json: cannot write " in capsys.readouterr().err


@pytest.mark.parametrize("json_first", [False, True], ids=["--report first", "--json first"])
def test_a_json_file_in_a_new_report_directory_is_written(tmp_path, capsys, json_first):
    """--report DIR --json DIR/out.json with no DIR yet: --json was tried as it was read,
    before --report made DIR, and refused (no such directory) whatever the order."""
    out = tmp_path / "run"
    report, written = ["--report", str(out)], ["--json", str(out / "out.json")]
    options = written + report if json_first else report + written
    assert main([str(write(tmp_path, SMALL)), "--workers", "1", *options]) == 0
    assert json.loads((out / "out.json").read_text())["checks"]["exactly_once"]
    assert (out / "index.html").is_file()


def test_a_json_file_elsewhere_without_its_directory_is_refused_with_report(tmp_path, capsys):
    """Only --report's own directory is made before --json is tried: any other missing
    directory (a sub-directory of it too) is refused before the run, and the --report
    directory is then not left behind."""
    scenario = str(write(tmp_path, SMALL))
    for path in ("nodir/out.json", "run/sub/out.json"):
        with pytest.raises(SystemExit) as refused:
            main([scenario, "--report", str(tmp_path / "run"), "--json", str(tmp_path / path)])
        assert refused.value.code == 2
        said = capsys.readouterr()
        assert f"argument --json: cannot write {tmp_path / path}: no such file or directory" \
            in said.err, said.err
        assert "invariant" not in said.out  # nothing ran
        assert not (tmp_path / "run").exists()


def test_workers_and_processes_are_not_given_together(tmp_path, capsys):
    """--workers shards the nodes over N processes, --processes gives each its own: the two
    at once ran a process per node and said nothing of the --workers given."""
    with pytest.raises(SystemExit) as refused:
        main([str(write(tmp_path, SMALL)), "--processes", "--workers", "3"])
    assert refused.value.code == 2
    assert "--processes runs a process per node: give one of them" in capsys.readouterr().err


def test_durable_is_not_taken_with_processes_whose_nodes_are_durable_already(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        main([str(write(tmp_path, SMALL)), "--processes", "--durable"])
    assert refused.value.code == 2
    assert "--durable is for the nodes the sim runs in its own processes" in \
        capsys.readouterr().err


def test_ring_and_random_topologies(tmp_path):
    ring = load_scenario(write(tmp_path, '[nodes]\ncount = 5\n[topology]\nkind = "ring"\n'))
    assert len(ring.edges) == 5
    assert all(sum(name in edge for edge in ring.edges) == 2 for name in ring.nodes)
    text = '[sim]\nseed = 3\n[nodes]\ncount = 8\n[topology]\nkind = "random"\ndegree = 2\n'
    first = load_scenario(write(tmp_path, text)).edges
    assert first == load_scenario(write(tmp_path, text)).edges  # seeded: reproducible
    assert len(first) >= 7  # the backbone keeps every node reachable


@pytest.mark.parametrize("text, complaint", [
    ("[nodes]\ncount = 0\n", "nodes.count"),
    ('[nodes]\ncount = 2\n[topology]\nkind = "star"\n', "topology.kind"),
    ('[nodes]\ncount = 2\n[[traffic]]\nkind = "dance"\n', "traffic[0].kind"),
    ('[nodes]\ncount = 2\n[invariants]\ncheck = ["happy"]\n', "unknown invariant 'happy'"),
    ("[nodez]\ncount = 2\n", "nodez"),
    ('[nodes]\ncount = 2\n[[traffic]]\nkind = "payments"\nunits = 0\n', "traffic[0].units"),
    ('[nodes]\ncount = 2\n[[traffic]]\nkind = "payments"\n[invariants]\n'
     'check = ["exactly_once"]\n', "exactly_once counts ping messages"),
    ('[nodes]\ncount = 2\n[[traffic]]\nkind = "evidence"\n', "needs a clearing house"),
    ('[nodes]\ncount = 2\n[invariants]\ncheck = ["receipts_verify"]\n',
     "receipts_verify, which needs a clearing house"),
    ('[nodes]\ncount = 2\nclearinghouse = "yes"\n', "nodes.clearinghouse"),
    ('[nodes]\ncount = 2\n[[traffic]]\nkind = "relay"\nconfidential = 1\n',
     "traffic[0].confidential"),
    ('[nodes]\ncount = 2\n[[traffic]]\nkind = "relay"\n[invariants]\n'
     'check = ["exactly_once"]\n', "exactly_once counts ping messages"),
    ('[nodes]\nnames = ["a", "clearinghouse"]\nclearinghouse = true\n',
     "the clearing house's name"),
    ('[nodes]\nnames = ["a", "b\\nc"]\n', "nodes.names has a name that must be 1 to 64 "
     "printable characters (no line breaks, tabs or other control characters), not 'b\\nc'"),
    # a node's user is named as the node: such a name took the run to a traceback (users.add)
    ('[nodes]\nnames = ["a", "say hi"]\n[[traffic]]\nkind = "payments"\n',
     "nodes.names has 'say hi', which cannot be a user id (1 to 64 ASCII letters, digits, "
     "'_', '-' or '.'): each node's user is named as the node, and payments traffic needs "
     "users"),
    ("[sim]\nconcurency = 4\n[nodes]\ncount = 2\n",
     "sim.concurency is not a known key (did you mean concurrency?)"),
    ('[nodes]\ncount = 2\n[[traffic]]\nkind = "ping"\ncout = 5\n',
     "traffic[0].cout is not a known key (did you mean count?)"),
    ('[nodes]\ncount = 2\n[[traffic]]\nkind = "ping"\nunits = 5\n',
     "traffic[0].units is not a known key"),
    ("[sim]\nconcurrency = 0\n[nodes]\ncount = 2\n",
     "sim.concurrency must be an integer from 1 to 10000, not 0"),
    ('[nodes]\ncount = 2\n[[traffic]]\nkind = "payments"\nunits = 0\n',
     "traffic[0].units must be an integer of 1 or more, not 0"),
    ('[sim]\nseed = "x"\n[nodes]\ncount = 2\n',
     "sim.seed must be an integer from 0 to 9223372036854775807, not 'x'"),
    ("[nodes]\ncount = true\n", "nodes.count must be an integer"),
    ('[nodes]\ncount = 2\nnames = ["a", "b"]\n', "gives both count and names"),
    ('[nodes]\nnames = ["a", "b", "a", "c", "c"]\n', "nodes.names names 'a', 'c' more than once"),
    ('[nodes]\ncount = 4\n[topology]\nkind = "random"\ndegree = 4\n',
     "topology.degree is 4, but with 4 nodes a node can have at most 3 links"),
    ('[nodes]\ncount = 4\n[topology]\nkind = "random"\nlinks = 7\n',
     "topology.links is 7, more than the 6 pairs 4 nodes can form"),
    ('[nodes]\ncount = 4\n[topology]\nkind = "ring"\ndegree = 2\n',
     "topology.degree does not apply"),
    ('[nodes]\nnames = ["a", "b"]\n[topology]\nkind = "explicit"\nedges = [["a", "z"]]\n',
     "topology.edges[0] names 'z', which is not a node"),
    ('sim = 3\n[nodes]\ncount = 2\n', "sim must be a table"),
    ('[nodes]\ncount = 2\n[[traffic]]\nkind = "lifts"\nconcurrency = 0\n',
     "traffic[0].concurrency must be an integer"),
    # found only once the nodes had run, and then as a failure of all_delivered
    ('[nodes]\ncount = 2\n[[traffic]]\nkind = "lifts"\n',
     "traffic[0] has lifts, between users 2 or more tallies apart, and the topology has no "
     "such two users"),
    ('[nodes]\ncount = 5\n[topology]\nkind = "full"\n[[traffic]]\nkind = "ping"\n'
     '[[traffic]]\nkind = "lifts"\n', "traffic[1] has lifts"),
])
def test_bad_scenarios_name_the_key(tmp_path, text, complaint):
    with pytest.raises(UserError, match=r"scenario\.toml") as caught:
        load_scenario(write(tmp_path, text))
    assert complaint in str(caught.value)


def test_every_error_is_reported_at_once(tmp_path):
    text = ('[sim]\nconcurency = 4\n[nodes]\ncount = 3\n[topology]\nkind = "random"\n'
            'degree = 5\n[[traffic]]\nkind = "ping"\ncout = 1\n')
    with pytest.raises(UserError) as caught:
        load_scenario(write(tmp_path, text))
    lines = str(caught.value).splitlines()
    assert len(lines) == 3 and all(line.startswith(f"{tmp_path}/scenario.toml: ")
                                   for line in lines)
    assert {line.split(": ")[1].split()[0] for line in lines} == {
        "sim.concurency", "topology.degree", "traffic[0].cout"}


def test_lifts_are_taken_on_any_topology_with_two_users_two_tallies_apart(tmp_path):
    for topology in ('kind = "ring"', 'kind = "random"\nlinks = 4',
                     'kind = "explicit"\nedges = [["n0", "n1"], ["n1", "n2"], ["n3", "n4"]]'):
        text = f'[nodes]\ncount = 5\n[topology]\n{topology}\n[[traffic]]\nkind = "lifts"\n'
        assert load_scenario(write(tmp_path, text)).traffic[0]["kind"] == "lifts"
    two_cliques = ('[nodes]\ncount = 4\n[topology]\nkind = "explicit"\n'
                   'edges = [["n0", "n1"], ["n2", "n3"]]\n[[traffic]]\nkind = "lifts"\n')
    with pytest.raises(UserError, match="has no such two users"):
        load_scenario(write(tmp_path, two_cliques))


@pytest.mark.parametrize("kind", ["ping", "payments", "invoices", "relay", "lifts", "clearing"])
def test_traffic_between_linked_nodes_is_refused_on_a_topology_with_no_link(tmp_path, kind):
    """It started, and failed its run: 'ping traffic needs at least one edge'."""
    text = f'[nodes]\ncount = 1\n[topology]\nkind = "ring"\n[[traffic]]\nkind = "{kind}"\n'
    with pytest.raises(UserError, match=f"traffic\\[0\\] has {kind}, which goes between "
                       "linked nodes, and the topology links none"):
        load_scenario(write(tmp_path, text))


def test_a_bad_topology_is_not_also_blamed_for_what_traffic_needs_of_it(tmp_path):
    text = '[nodes]\ncount = 4\n[topology]\nkind = "star"\n[[traffic]]\nkind = "lifts"\n'
    with pytest.raises(UserError) as caught:
        load_scenario(write(tmp_path, text))
    assert str(caught.value).splitlines() == [
        f"{tmp_path}/scenario.toml: topology.kind must be one of ring, random, explicit, full, "
        "not 'star'"]


def test_random_links_gives_exactly_that_many_connected_links(tmp_path):
    text = '[nodes]\ncount = 30\n[topology]\nkind = "random"\nlinks = 100\n'
    scenario = load_scenario(write(tmp_path, text))
    assert len(scenario.edges) == len(set(scenario.edges)) == 100
    assert all(a != b for a, b in scenario.edges)
    assert len(load_scenario(write(tmp_path, text.replace("100", "435"))).edges) == 435


def test_a_count_beyond_the_open_file_limit_is_refused_before_anything_starts(
        tmp_path, monkeypatch):
    monkeypatch.setattr(limits.resource, "getrlimit", lambda _which: (1024, 1024))
    monkeypatch.setattr(limits, "available_mib", lambda: None)  # memory is not the question
    path = write(tmp_path, '[nodes]\ncount = 500\n[topology]\nkind = "ring"\n')
    started = []
    monkeypatch.setattr("agentd.sim.run_scenario", lambda *a: started.append(a))
    with pytest.raises(UserError) as caught:
        main([str(path)])
    message = str(caught.value)
    assert str(path) in message and "open files" in message and "1,024" in message
    assert "ulimit -Hn" in message and not started
    assert limits.files_needed(load_scenario(path), processes=True) < 1024
    limits.check_capacity(load_scenario(path), processes=True)  # one process a node fits


def test_a_count_beyond_the_memory_is_refused_with_the_figure(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "available_mib", lambda: 300.0)
    scenario = load_scenario(write(tmp_path, "[nodes]\ncount = 100\n[topology]\n"
                                             'kind = "ring"\n'))
    with pytest.raises(UserError, match=r"scenario\.toml: nodes: 100 nodes need about "
                       r"[\d,]+ MiB of memory, but only 300 MiB is available"):
        limits.check_capacity(scenario, processes=False)


def test_the_soft_file_limit_is_raised_when_the_hard_one_allows(tmp_path, monkeypatch):
    raised = []
    monkeypatch.setattr(limits.resource, "getrlimit", lambda _which: (256, 100_000))
    monkeypatch.setattr(limits.resource, "setrlimit", lambda _which, pair: raised.append(pair))
    scenario = load_scenario(write(tmp_path, '[nodes]\ncount = 300\n[topology]\n'
                                             'kind = "ring"\n'))
    limits.check_capacity(scenario, processes=False)
    assert raised == [(limits.files_needed(scenario, False), 100_000)]


SMALL = """
[sim]
name = "small"
seed = 5
[nodes]
names = ["a", "b", "c"]
[topology]
kind = "ring"
[[traffic]]
kind = "ping"
count = 12
"""


def test_in_process_run_passes_its_invariants(tmp_path, capsys):
    report = tmp_path / "report.json"
    assert main([str(write(tmp_path, SMALL)), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "invariant exactly_once" in out and "FAILED" not in out
    assert '"messages_processed": 24' in report.read_text()


def test_processes_run_passes_its_invariants(tmp_path, capsys):
    assert main([str(write(tmp_path, SMALL)), "--processes"]) == 0
    assert "one process per node" in capsys.readouterr().out


def test_a_failed_invariant_exits_non_zero(tmp_path, capsys, monkeypatch):
    from agentd.rpc import RpcError
    from agentd.services.ping import PingService

    async def unreachable(self, agent: str, count: int = 1) -> dict:
        raise RpcError(-32000, f"peer {agent} unreachable")  # every ping fails

    monkeypatch.setattr(PingService, "rpc_ping", unreachable)
    assert main([str(write(tmp_path, SMALL)), "--workers", "1"]) == 1  # patched here
    out = capsys.readouterr().out
    assert "invariant all_delivered      FAILED" in out


PAYMENTS = """
[sim]
name = "small credit"
seed = 3
concurrency = 8
[nodes]
names = ["a", "b", "c"]
[topology]
kind = "ring"
[[traffic]]
kind = "payments"
count = 60
units = 100
"""


def test_payments_keep_every_chain_agreed_and_the_balances_zero_sum(tmp_path, capsys):
    report = tmp_path / "report.json"
    assert main([str(write(tmp_path, PAYMENTS)), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "invariant chains_agree       ok" in out
    assert "invariant balances_zero_sum  ok" in out and "exactly_once" not in out
    counts = json.loads(report.read_text())["counts"]
    assert (counts["payments"], counts["chits"], counts["tallies"]) == (60, 60, 3)
    assert counts["balance_sum"] == 0


EVIDENCE = """
[sim]
name = "small evidence"
seed = 4
concurrency = 4
[nodes]
names = ["a", "b", "c"]
clearinghouse = true
[topology]
kind = "ring"
[[traffic]]
kind = "payments"
count = 20
units = 100
[[traffic]]
kind = "evidence"
count = 130
"""


@pytest.mark.parametrize("processes", [False, True], ids=["one process", "processes"])
def test_evidence_is_logged_and_every_receipt_verifies(tmp_path, capsys, processes):
    report = tmp_path / "report.json"
    args = [str(write(tmp_path, EVIDENCE)), "--json", str(report)]
    assert main(args + (["--processes"] if processes else [])) == 0
    out = capsys.readouterr().out
    assert "3 nodes and a clearing house" in out
    assert "invariant receipts_verify    ok" in out and "FAILED" not in out
    counts = json.loads(report.read_text())["counts"]
    # the hand-logged entries, plus each side's evidence of 3 tally openings and 20 good
    # chits, a tally's chits that gathered in one batch under one receipt
    assert counts["evidence"] == 130
    assert 130 + 2 * (3 + 1) <= counts["receipts"] <= 130 + 2 * (3 + 20)


def test_receipts_that_do_not_verify_fail_the_invariant(tmp_path, capsys, monkeypatch):
    from protocol import receipts

    real = receipts.Keyring.sign

    def forged(self, entries):  # the clearing house's signatures come out wrong
        signed, parts = real(self, entries)
        head, body, _ = signed.split(".")
        return f"{head}.{body}.{'A' * 86}", parts

    monkeypatch.setattr(receipts.Keyring, "sign", forged)
    text = EVIDENCE.replace("count = 20\nunits = 100", "count = 2\nunits = 100")
    assert main([str(write(tmp_path, text)), "--workers", "1"]) == 1  # the patch is here
    out = capsys.readouterr().out
    assert "invariant receipts_verify    FAILED" in out and "bad_signature" in out


INVOICES_AND_RELAY = """
[sim]
name = "invoices and relay"
seed = 6
concurrency = 8
[nodes]
names = ["a", "b", "c"]
[topology]
kind = "ring"
[[traffic]]
kind = "invoices"
count = 30
units = 100
[[traffic]]
kind = "relay"
count = 20
[[traffic]]
kind = "relay"
count = 10
confidential = true
"""


def test_invoices_and_relay_queries_complete_and_keep_the_chains_agreed(tmp_path, capsys):
    report = tmp_path / "report.json"
    assert main([str(write(tmp_path, INVOICES_AND_RELAY)), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "invariant chains_agree       ok" in out and "FAILED" not in out
    counts = json.loads(report.read_text())["counts"]
    assert (counts["invoices"], counts["chits"], counts["relay_queries"]) == (30, 30, 30)


def test_a_refused_relay_query_fails_the_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("agentd.sim.backends.RELAY_ACCESS",
                        {"principal": "*", "resource": "node:*"})
    text = INVOICES_AND_RELAY.replace("count = 30", "count = 3")
    assert main([str(write(tmp_path, text))]) == 1  # user balances are not readable now
    out = capsys.readouterr().out
    assert "invariant all_delivered      FAILED" in out and "ACCESS_DENIED" in out


LIFTS = """
[sim]
name = "small lifts"
seed = 8
concurrency = 4
[nodes]
names = ["a", "b", "c", "d", "e", "f"]
clearinghouse = true
[topology]
kind = "ring"
[[traffic]]
kind = "payments"
count = 40
units = 1000
[[traffic]]
kind = "lifts"
count = 10
units = 500
max_hops = 3
[[traffic]]
kind = "clearing"
count = 4
"""


@pytest.mark.parametrize("processes", [False, True], ids=["one process", "processes"])
def test_lifts_and_clearing_end_all_or_nothing_everywhere(tmp_path, capsys, processes):
    report = tmp_path / "report.json"
    args = [str(write(tmp_path, LIFTS)), "--json", str(report)]
    assert main(args + (["--processes"] if processes else [])) == 0
    out = capsys.readouterr().out
    assert "invariant lifts_atomic       ok" in out and "FAILED" not in out
    assert "lift p50 / p99" in out and "debt before / after" in out
    written = json.loads(report.read_text())
    counts = written["counts"]
    assert counts["lift_pay_calls"] == 10 and counts["clearing_calls"] == 4
    assert counts["lifts_good"] + counts["lifts_void"] == 10  # the linear lifts alone
    circles = counts["clear_good"] + counts["clear_void"]
    assert circles == 4 - counts["no_cycle"] - counts["clear_contended"]
    assert counts["lifts_checked"] == 10 + circles and counts["balance_sum"] == 0
    assert counts["peak_rss_mb"] > 40 * (4 if processes else 1)  # every node's, with processes
    # clearing ran alone, last: the debt fell by exactly what the good circles cleared
    assert written["debt_before"] - written["debt_after"] == counts["cleared_debt_mchip"]


class _Nodes:
    """A backend whose nodes report the lifts given (for judging the invariant alone)."""

    def __init__(self, lifts: dict[str, list[dict]]) -> None:
        self.lifts = lifts

    async def call(self, name: str, method: str, params: dict) -> list[dict]:
        assert method == "lift.list"
        return self.lifts[name]


def _lift(state: str, chits: list[tuple[str, str, int]], kind: str = "linear") -> dict:
    path = [{"cuid": "a"}, {"cuid": "b"}, {"cuid": "c"}]
    return {"lift": "L1", "kind": kind, "state": state, "units": 5, "path": path,
            "chits": [{"chit": f"c{i}", "cuid": cuid, "state": chit_state, "units": units}
                      for i, (cuid, chit_state, units) in enumerate(chits)]}


@pytest.mark.parametrize(("lifts", "problem"), [
    ({"a": [_lift("good", [("a", "L.good", 5)])],
      "b": [_lift("void", [("b", "A.void", 5), ("b", "L.void", 5)])]}, "on different nodes"),
    ({"a": [_lift("good", [("a", "L.good", 5)])],
      "b": [_lift("good", [("b", "A.good", 5), ("b", "L.void", 5)])]}, "on a good lift"),
    ({"a": [_lift("good", [("a", "L.good", 5)])],
      "b": [_lift("good", [("b", "A.good", 5), ("b", "L.good", 5)])],
      "c": [_lift("good", [("c", "A.good", 4)])]}, "moved"),
])
async def test_lifts_atomic_finds_a_lift_that_is_not_all_or_nothing(tmp_path, lifts, problem):
    scenario = load_scenario(write(tmp_path, '[nodes]\nnames = ["a", "b", "c"]\n'))
    report = Report()
    assert not await lifts_atomic(_Nodes({name: lifts.get(name, []) for name in "abc"}),
                                  scenario, report)
    assert any(problem in failure for failure in report.failures), report.failures


async def test_a_traffic_item_runs_its_own_concurrency_at_once(tmp_path):
    """``[[traffic]] concurrency`` overrides ``[sim] concurrency`` for that item alone."""
    scenario = load_scenario(write(tmp_path, "[sim]\nconcurrency = 8\n[nodes]\ncount = 2\n"))
    running, most = 0, {}

    async def call(label: str) -> None:
        nonlocal running
        running += 1
        most[label] = max(most.get(label, 0), running)
        await trio.sleep(0.01)
        running -= 1

    await run_calls(scenario, "own", [("own",)] * 12, call, report=Report(),
                    item={"concurrency": 3})
    await run_calls(scenario, "sim", [("sim",)] * 12, call, report=Report(), item={})
    assert most == {"own": 3, "sim": 8}


CRASHED = """
[[faults]]
kind = "crash"
at_s = 0.5
down_s = 60
nodes = ["a"]
"""


@pytest.mark.parametrize("how", [["--workers", "1"], ["--workers", "2"], ["--processes"]],
                         ids=["one process", "workers", "processes, a node down"])
def test_ctrl_c_stops_a_sim_quietly_with_status_130(tmp_path, how):
    """Ctrl-C, which a terminal sends to the whole process group: it reached the sim inside
    its nodes' nursery, as a group (62-96 lines of traceback, status 1); each worker printed
    its own traceback and the sim took that as the worker's failure (status 2, ~50 s later);
    with --processes and a node crashed by a fault, the sim waited for ever for the node
    whose restart it had cancelled."""
    import os
    import signal
    import subprocess
    import time

    from tests.clihelpers import AGENTD

    text = SMALL.replace("count = 12", "count = 1000000")
    long = write(tmp_path, text + (CRASHED if how == ["--processes"] else ""))
    process = subprocess.Popen([*AGENTD, "sim", str(long), *how], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # its own group, as a terminal's
    try:
        assert process.stdout is not None
        started = process.stdout.readline()  # its first line: the nodes are coming up
        assert started, process.stderr.read() if process.stderr else ""
        time.sleep(3.0)  # into the run, nodes and all (and past the crash)
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=45)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, (out, err)
    assert "Traceback" not in err, err
