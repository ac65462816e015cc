"""``agentd bench NAME``: benchmarks that print a table and can write ``--json FILE``.

Speed is shown here, in one run against a baseline measured in the same run — never in
timed tests, which are flaky on shared machines.
"""

from __future__ import annotations

import importlib
import json
import statistics
import sys
from pathlib import Path

BENCHMARKS = {
    "transport": "agentd.bench.transport",
    "relay": "agentd.bench.relay",
    "chits": "agentd.bench.chits",
    "ch": "agentd.bench.clearing",
    "sim": "agentd.bench.sim",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: agentd bench {" + ",".join(BENCHMARKS) + "} [--quick] [--json FILE]")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    module_name = BENCHMARKS.get(name)
    if module_name is None:
        print(f"agentd bench: unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})",
              file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        print(f"agentd bench: benchmark {name!r} is not built yet", file=sys.stderr)
        return 2
    return module.main(rest)


def write_json(path: str | None, figures: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"  {label:<{width}}  {value}" for label, value in rows)


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile (0.5 the median, 0.99 p99) of at least one value."""
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1]
