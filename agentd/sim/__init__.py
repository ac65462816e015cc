"""``agentd sim SCENARIO``: a scripted multi-node simulation with invariants and a report.

A scenario (TOML, :mod:`agentd.sim.scenario`) names the nodes, the topology (explicit edges,
a ring, or random with a seed), the traffic and the invariants. Every node is a real agentd
node — loopback TCP, Noise, its own SQLite file — sharded across ``--workers`` Trio processes
(the default: one a core, :mod:`agentd.sim.workers`), all in this one (``--workers 1``), or one
``agentd run`` process each (``--processes``, :mod:`agentd.sim.backends`);
traffic (:mod:`agentd.sim.traffic`) is driven through each node's RPC methods either way. The
run shows progress, checks the invariants (:mod:`agentd.sim.invariants`) once traffic has
drained, prints a report (and with ``--report DIR`` draws it, :mod:`agentd.sim.html`) and
exits 1 if any invariant failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import trio

from agentd.completion import DIRECTORY, FILE, NamesOrFiles
from agentd.configs_dir import scenario_path, shipped_scenarios
from agentd.outputs import output_dir, output_file
from agentd.sim.backends import InProcess, Processes
from agentd.sim.faults import Healing, heal_all, run_faults
from agentd.sim.html import check_report_extra, write_html
from agentd.sim.invariants import check, settled_chains
from agentd.sim.lifts import LIFT_KINDS, debt, lifts_atomic
from agentd.sim.limits import check_capacity
from agentd.sim.report import Report, print_report
from agentd.sim.scenario import (
    CREDIT_TRAFFIC,
    LIFT_TRAFFIC,
    LINK_FAULTS,
    Scenario,
    load_scenario,
)
from agentd.sim.traffic import KINDS, Run, open_tallies
from agentd.sim.workers import Workers
from store import SharedWriter

__all__ = ["load_scenario", "main", "run_scenario"]
# The shared writer thread hands the GIL back and forth with the event loop around every
# SQLite call; at Python's default 5 ms switch interval it waits most of its time for it
# (measured at 200 nodes: traffic 2.4x faster at 0.5 ms, duplicates 126 -> 0).
SWITCH_INTERVAL = 0.0002

CORES = os.cpu_count() or 1  # --workers' default: a worker process a core


async def run_scenario(scenario: Scenario, workdir: Path, *, processes: bool = False,
                       durable: bool = False, workers: int = 1) -> Report:
    """Start the nodes, open the tallies, run the traffic, check the invariants; the report
    times each phase (``start_ms``, ``tallies_ms``, ``traffic_ms``, ``checks_ms``).
    ``workers`` > 1 shards the nodes across that many worker processes."""
    workers = 1 if processes else min(workers, len(scenario.all_nodes))
    mode = "one process per node" if processes else "one Trio process" if workers == 1 \
        else f"{workers} worker processes"
    house = " and a clearing house" if scenario.house else ""
    print(f"sim {scenario.name!r}: {len(scenario.nodes)} nodes{house}, {len(scenario.edges)}"
          f" links, {mode}", flush=True)
    if processes or durable or workers > 1:  # (each worker has its own shared writer)
        return await _run(scenario, workdir, processes, None, workers, durable)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        with SharedWriter() as writer:
            return await _run(scenario, workdir, processes, writer)
    finally:
        sys.setswitchinterval(switch)


async def _run(scenario: Scenario, workdir: Path, processes: bool,
               writer: SharedWriter | None, workers: int = 1, durable: bool = False
               ) -> Report:
    report = Report()
    rng = random.Random(scenario.seed)
    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        report.counts[f"{phase}_ms"] = round((time.perf_counter() - clock) * 1000)
        clock = time.perf_counter()

    async with trio.open_nursery() as nursery:
        shaped = any(f["kind"] in LINK_FAULTS for f in scenario.faults)
        faulted = shaped or any(f["kind"] in ("cut", "partition") for f in scenario.faults)
        backend = Processes(workdir, faulted=faulted) if processes else InProcess(
            nursery, workdir, writer, shaped=shaped) if workers == 1 else Workers(
            nursery, workdir, workers, durable=durable, shaped=shaped)
        try:
            agents = await backend.start(scenario.nodes, scenario.edges, scenario.house)
            await backend.freeze()
            lap("start")
            print(f"  started in {report.counts['start_ms'] / 1000:.2f} s", flush=True)
            report.zero = trio.current_time()  # the timeline of --report starts here
            paying = any(item["kind"] in CREDIT_TRAFFIC for item in scenario.traffic)
            tallies = await open_tallies(backend, scenario, report) if paying else {}
            await backend.freeze()
            lap("tallies")
            run = Run(backend, scenario, agents, tallies, rng, report)
            if scenario.house and any(item["kind"] in LIFT_TRAFFIC for item in scenario.traffic):
                report.referees = [scenario.house]  # the default referee of every lift
            healing = Healing()
            report.traffic_at_s = trio.current_time() - report.zero
            async with trio.open_nursery() as traffic:
                if scenario.faults:
                    traffic.start_soon(run_faults, backend, scenario, report, healing)
                for item in scenario.traffic:
                    await {**KINDS, **LIFT_KINDS}[item["kind"]](run, item)
                traffic.cancel_scope.cancel()  # the traffic is done: so are the faults
            await heal_all(backend, report, healing)
            if shaped:
                report.counts.update(await backend.link_counts())
            lap("traffic")
            credit = await settled_chains(backend, scenario, tallies, report) if paying else None
            if any(item["kind"] in LIFT_TRAFFIC for item in scenario.traffic):
                credit = {**(credit or {}),
                          "lifts_atomic": await lifts_atomic(backend, scenario, report)}
            if report.debt_before is not None:
                report.debt_after = await debt(run)
            await check(backend, scenario, report, credit)
            lap("checks")
        finally:
            await backend.stop()
    # this process and its workers, or its nodes' processes, at their peaks (summed)
    report.counts["peak_rss_mb"] = round((resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss + getattr(backend, "rss_kib", 0)) / 1024)
    return report


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count of processes (1 or more)")
    return value


def _check_outputs(parser: argparse.ArgumentParser, options: argparse.Namespace) -> None:
    """Try ``--json`` and ``--report`` before the run, not after minutes of it. A ``--json``
    file in the ``--report`` directory is tried once that is made (it may not exist yet);
    any other first, so that its refusal leaves no ``--report`` directory behind."""
    in_report = bool(options.json and options.report) and \
        Path(options.json).parent.resolve() == Path(options.report).resolve()
    if options.json and not in_report:
        _try(parser, "--json", output_file, options.json)
    if options.report:
        check_report_extra()  # the directory is made only once it can be drawn in
        _try(parser, "--report", output_dir, options.report)
    if in_report:
        _try(parser, "--json", output_file, options.json)


def _try(parser: argparse.ArgumentParser, option: str, check: Callable[[str], str],
         path: str) -> None:
    """``check(path)``, an error exit naming ``option`` as argparse's own would if it fails."""
    try:
        check(path)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"argument {option}: {exc}")


def command_parser() -> argparse.ArgumentParser:
    """``agentd sim``'s options, which the completion script offers too (and the shipped
    scenarios' names where a SCENARIO goes)."""
    parser = argparse.ArgumentParser(
        prog="agentd sim", description="Run a scripted multi-node simulation (see configs/sims/),"
        " check its invariants and print a report; exit 1 if one fails.")
    shipped = shipped_scenarios()
    scenario = parser.add_argument("scenario", metavar="SCENARIO", help="scenario TOML file, or"
                                   f" a shipped one by name: {', '.join(shipped)} (configs/sims/)")
    scenario.complete = NamesOrFiles("scenario", tuple(shipped))
    parser.add_argument("--processes", action="store_true",
                        help="run each node as its own 'agentd run' OS process")
    parser.add_argument("--workers", type=_count, metavar="N",
                        help="shard the nodes across N worker processes linked by TCP "
                        f"(default: one a core, here {CORES}; 1: all in this process; not with "
                        "--processes)")
    parser.add_argument("--json", metavar="FILE",
                        help="also write the report as JSON").complete = FILE
    report = parser.add_argument("--report", metavar="DIR",
                                 help="also write DIR/index.html: the network, throughput over "
                                 "time with the faults, latency histograms and the invariants, "
                                 "in one self-contained page (needs the 'report' extra)")
    report.complete = DIRECTORY
    parser.add_argument("--keep", action="store_true", help="keep the nodes' data directories")
    parser.add_argument("--durable", action="store_true",
                        help="give each node its own database writer thread and synchronous "
                        "= FULL, as 'agentd run' has (slower; --processes, whose nodes are "
                        "'agentd run', has it already)")
    return parser


def main(argv: list[str]) -> int:
    parser = command_parser()
    options = parser.parse_args(argv)
    if options.processes and options.workers is not None:  # it would be ignored: say so
        parser.error("--workers N shards the nodes across N processes, --processes runs a "
                     "process per node: give one of them")
    if options.processes and options.durable:
        parser.error("--processes runs each node as 'agentd run', durable already: --durable "
                     "is for the nodes the sim runs in its own processes")
    # a shipped scenario by name, wherever agentd is installed: agentd sim ring
    scenario = load_scenario(scenario_path(options.scenario))
    check_capacity(scenario, options.processes)
    _check_outputs(parser, options)
    workdir = Path(tempfile.mkdtemp(prefix="agentd-sim-"))
    try:
        report = trio.run(partial(run_scenario, scenario, workdir, processes=options.processes,
                                  durable=options.durable,
                                  workers=options.workers or CORES))
    finally:
        if options.keep:
            print(f"data kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(scenario, report)
    if options.json:
        Path(options.json).write_text(json.dumps(report.to_json(), indent=2))
    if options.report:
        print(f"report written to {write_html(scenario, report, Path(options.report))}")
    return 0 if report.checks and all(report.checks.values()) else 1
