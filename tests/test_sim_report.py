"""``agentd sim --report``: the page is written, opens in a real headless Chromium with no
server and no network, and draws the network, the throughput with its faults and a latency
histogram per kind of traffic, with no script error."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

import agentd.sim.html
from agentd.errors import UserError
from agentd.sim import load_scenario, main

SCENARIO = """
[sim]
name = "report test"
seed = 7
concurrency = 8
[nodes]
count = 6
clearinghouse = true
[topology]
kind = "random"
degree = 2
[[traffic]]
kind = "payments"
count = 120
units = 5000
[[traffic]]
kind = "relay"
count = 20
[[faults]]
kind = "cut"
at_s = 0.1
for_s = 0.3
rate = 10
[[faults]]
kind = "crash"
nodes = ["n1"]
at_s = 0.1
down_s = 0.2
[invariants]
check = ["all_delivered", "outbox_drained", "chains_agree", "balances_zero_sum"]
"""
BROWSER_BUDGET_MS = 15000  # virtual time for the page's scripts to run before the DOM dump


def _install(*args: str) -> bool:
    done = subprocess.run(["apt-get", *args], capture_output=True, timeout=600,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return done.returncode == 0


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, installed here when missing (as root), else a skip saying why."""
    found = shutil.which("chromium")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0 and not (
            _install("install", "-y", "chromium")) and _install("update"):
        _install("install", "-y", "chromium")  # the first try may have lacked package lists
    found = found or shutil.which("chromium")
    if found is None:
        pytest.skip("no headless browser: chromium is not installed and could not be "
                    "(needs root and Debian's packages: apt-get install -y chromium)")
    return found


@pytest.mark.timeout(900)  # the first run may install chromium; the test itself takes ~15 s
def test_the_report_renders_in_a_headless_browser(tmp_path, capsys, chromium):
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    assert main([str(scenario), "--report", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"payments 120/120 \([\d,]+/s\)", out)  # plain progress, with its rate
    page = tmp_path / "out" / "index.html"
    text = page.read_text()
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=", text)  # nothing to fetch
    dumped = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", f"--virtual-time-budget={BROWSER_BUDGET_MS}",
         "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=60)
    dom = dumped.stdout
    assert dom, dumped.stderr[-2000:]
    # every figure drawn (the page counts them once plotly.js has), no error shown
    assert re.search(r'<body[^>]*data-plotted="5"', dom), "not every plot was drawn"
    assert re.search(r'id="errors" hidden', dom), re.search(r'id="errors".{0,300}', dom)

    def part(start: str, end: str) -> str:
        return dom[dom.index(f'id="{start}"'):dom.index(f'id="{end}"')]

    network = part("network", "throughput")
    tallies = int(re.search(r"(\d+) tallies", network)[1])
    links = int(re.search(r"(\d+) links", network)[1])
    assert tallies == links >= 6
    # a line per tally, a dot per node, per tally (its hover) and for the clearing house
    assert network.count('class="js-line"') == links
    # ... and a cross on the one that crashed, in the legend
    assert network.count('class="point"') == 6 + tallies + 1 + 1
    assert ">clearing house<" in network and network.count("colorbar") == 2
    assert ">crashed, restarted<" in network
    throughput = part("throughput", "latency-0")
    assert throughput.count('class="trace scatter') == 3  # tallies, payments, relay queries
    # the cut and the crash, shaded; the traffic's start
    assert throughput.count('class="shape-group"') == 3
    histograms = dom[dom.index('id="latency-0"'):]
    assert histograms.count('class="trace bars') == 3
    assert len(re.findall(r'class="point"', histograms)) >= 3
    assert "all_delivered" in dom and ">cut<" in dom and ">crash<" in dom


def test_the_network_picture_crosses_out_the_nodes_that_crashed(tmp_path):
    """The crashed nodes' trace: on their dots, named in the legend, hover saying so."""
    pytest.importorskip("plotly", reason="the report extra is not installed")
    from agentd.sim import figures
    from agentd.sim.report import Report

    path = tmp_path / "scenario.toml"
    path.write_text(SCENARIO)
    scenario = load_scenario(path)
    report = Report(crashed={"n1": 1, "n4": 2})
    traces = {trace.name: trace for trace in figures.network(scenario, report).data}
    nodes, crashed = traces["nodes"], traces["crashed, restarted"]
    at = {name: (x, y) for name, x, y in zip(nodes.text, nodes.x, nodes.y, strict=True)}
    assert list(zip(crashed.x, crashed.y, strict=True)) == [at["n1"], at["n4"]]
    assert crashed.showlegend is not False and crashed.marker.symbol == "x-thin"
    assert crashed.hovertext == ("n1: crashed and restarted",
                                 "n4: crashed and restarted (2 times)")
    assert "crashed, restarted" not in {t.name for t in figures.network(
        scenario, Report()).data}  # no crash, no entry


def test_report_without_its_extra_is_refused_before_the_run(tmp_path, monkeypatch):
    def without_plotly(name: str):
        if name == "plotly":
            raise ImportError(name)
        return __import__(name)

    monkeypatch.setattr(agentd.sim.html, "import_module", without_plotly)
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    with pytest.raises(UserError, match=r"--report needs the optional 'report' extra "
                       r"\(plotly not installed\): pip install 'agentd\[report\]'"):
        main([str(scenario), "--report", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_the_json_report_has_the_timeline(tmp_path):
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO.split("[[faults]]")[0])
    assert main([str(scenario), "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert sum(report["per_second"]["payments"]) == 120
    assert sum(report["per_second"]["relay queries"]) == 20
    assert report["traffic_at_s"] > 0 and report["debt_before"] is None
