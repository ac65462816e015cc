"""What a simulation found: counts, ping latencies, failures and the invariants' verdicts."""

from __future__ import annotations

from dataclasses import dataclass, field

from agentd.bench import percentile
from agentd.sim.scenario import Scenario


@dataclass
class Report:
    counts: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    faults: list[dict] = field(default_factory=list)  # {kind, at_s, for_s, what} as they ran
    lift_latencies_ms: list[float] = field(default_factory=list)  # lift.pay/clear to decided
    lift_hops: list[int] = field(default_factory=list)
    debt_before: int | None = None  # what users owe one another, before clearing traffic
    debt_after: int | None = None  # ... and once everything settled


def print_report(scenario: Scenario, report: Report) -> None:
    print(f"\nreport for {scenario.name!r}")
    for key, value in report.counts.items():
        print(f"  {key:20} {value}")
    if report.latencies_ms:
        p50, p99 = (percentile(report.latencies_ms, f) for f in (0.5, 0.99))
        print(f"  {'ping p50 / p99':20} {p50:.2f} / {p99:.2f} ms")
    if report.lift_latencies_ms:
        p50, p99 = (percentile(report.lift_latencies_ms, f) for f in (0.5, 0.99))
        hops = sum(report.lift_hops) / len(report.lift_hops)
        print(f"  {'lift p50 / p99':20} {p50:.1f} / {p99:.1f} ms (mean {hops:.1f} hops)")
    if report.debt_before is not None:
        print(f"  {'debt before / after':20} {report.debt_before} / {report.debt_after} mCHIP"
              " (cleared by circular lifts)")
    for fault in report.faults:
        print(f"  fault at {fault['at_s']:6.2f} s  {fault['kind']:9} for {fault['for_s']:g} s:"
              f" {fault['what']}")
    for failure in report.failures[:10]:
        print(f"  failure: {failure}")
    for name, ok in report.checks.items():
        print(f"  invariant {name:18} {'ok' if ok else 'FAILED'}")
