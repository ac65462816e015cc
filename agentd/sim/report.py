"""What a simulation found: counts, latencies, throughput over time, failures, faults, the
tallies' balances and the invariants' verdicts — printed at the end, and drawn by
:mod:`agentd.sim.html` for ``--report DIR``."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from agentd.bench import percentile
from agentd.sim.scenario import Scenario


@dataclass
class Report:
    counts: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)  # ping round trips
    failures: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    faults: list[dict] = field(default_factory=list)  # {kind, at_s, for_s, what} as they ran
    crashed: dict[str, int] = field(default_factory=dict)  # node -> times a fault crashed it
    # the timeline: seconds from ``zero`` (trio time, once the nodes are up); the traffic,
    # and so each fault's ``at_s``, starts ``traffic_at_s`` into it
    zero: float | None = None
    traffic_at_s: float = 0.0
    done_at: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # label ->
    # (second on the timeline, how many) as each call finished
    call_ms: dict[str, list[float]] = field(default_factory=dict)  # label -> each call's latency
    balances: list[tuple[str, str, int]] = field(default_factory=list)  # (a, b, a's balance)
    referees: list[str] = field(default_factory=list)  # nodes that referee lifts
    lift_latencies_ms: list[float] = field(default_factory=list)  # lift.pay/clear to decided
    lift_hops: list[int] = field(default_factory=list)
    debt_before: int | None = None  # what users owe one another, before clearing traffic
    debt_after: int | None = None  # ... and once everything settled

    def done(self, label: str, amount: int, latency_ms: float) -> None:
        """One call of ``label`` finished, counting ``amount``, after ``latency_ms``."""
        now = trio.current_time()
        if self.zero is None:  # the timeline starts at the first call, unless set before
            self.zero = now
        self.done_at.setdefault(label, []).append((now - self.zero, amount))
        self.call_ms.setdefault(label, []).append(latency_ms)

    def rates(self, width: float) -> dict[str, list[float]]:
        """Per label, what was done each ``width`` seconds of the timeline, as a rate a
        second (the first bin starts at 0)."""
        end = max((t for done in self.done_at.values() for t, _ in done), default=0.0)
        bins = int(end / width) + 1
        rates = {}
        for label, done in self.done_at.items():
            counts = [0] * bins
            for t, amount in done:
                counts[int(t / width)] += amount
            rates[label] = [count / width for count in counts]
        return rates

    def to_json(self) -> dict:
        return {"counts": self.counts, "checks": self.checks, "failures": self.failures,
                "faults": self.faults, "crashed": self.crashed, "per_second": self.rates(1.0),
                "traffic_at_s": self.traffic_at_s, "lift_latencies_ms": self.lift_latencies_ms,
                "lift_hops": self.lift_hops, "debt_before": self.debt_before,
                "debt_after": self.debt_after}


def print_report(scenario: Scenario, report: Report) -> None:
    print(f"\nreport for {scenario.name!r}")
    for key, value in report.counts.items():
        print(f"  {key:20} {value}")
    if report.latencies_ms:
        p50, p99 = (percentile(report.latencies_ms, f) for f in (0.5, 0.99))
        print(f"  {'ping rtt p50 / p99':20} {p50:.2f} / {p99:.2f} ms (node to node; the call"
              " latency below adds the RPC)")
    for label, samples in report.call_ms.items():
        p50, p99 = (percentile(samples, f) for f in (0.5, 0.99))
        print(f"  latency {label:13} p50 {p50:.1f} ms, p99 {p99:.1f} ms a call")
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
    if len(report.failures) > 10:
        print(f"  … and {len(report.failures) - 10} more failures (all in --json)")
    for name, ok in report.checks.items():
        print(f"  invariant {name:18} {'ok' if ok else 'FAILED'}")
