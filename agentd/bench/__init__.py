"""``agentd bench NAME``: benchmarks that print a table and can write ``--json FILE``.

Speed is shown here, in one run against a baseline measured in the same run — never in
timed tests, which are flaky on shared machines.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from agentd.completion import FILE
from agentd.outputs import output_file

BENCHMARKS = {
    "transport": "agentd.bench.transport",
    "relay": "agentd.bench.relay",
    "chits": "agentd.bench.chits",
    "ch": "agentd.bench.clearing",
    "abuse": "agentd.bench.abuse",
    "lifts": "agentd.bench.lifts",
    "sim": "agentd.bench.sim",
}


def usage() -> str:
    """Every benchmark with the first sentence of its module's docstring, as plain text."""
    lines = ["usage: agentd bench NAME [--quick] [--json FILE] [--no-goals] [options]",
             "       agentd bench NAME --help   (that benchmark's options)", "",
             "benchmarks:"]
    width = max(len(name) for name in BENCHMARKS)
    for name, module_name in BENCHMARKS.items():
        lines.append(f"  {name:<{width}}  {summary(importlib.import_module(module_name).__doc__)}")
    lines += ["", "A benchmark prints its figures against its goals; a missed goal prints",
              "'goal missed: ...' and exits 1 unless --no-goals is given."]
    return "\n".join(lines) + "\n"


def summary(doc: str | None) -> str:
    """A benchmark module's docstring cut to what it measures, for the usage text and the
    completion script's descriptions."""
    from agentd.methods import first_paragraph

    return first_paragraph(doc).split(": ", 1)[-1].split(". ")[0].rstrip(".")


def bounded(kind: type[int] | type[float], low: float, high: float
            ) -> Callable[[str], int | float]:
    """An argparse type for a benchmark's count or seconds: from ``low`` to ``high`` (a
    count of -5 ran into a traceback, 0 silently took the default; nan and inf are out)."""
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:,} to {high:,}, not {text}")
        return value

    return parse


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's argument parser: plain-text description, --json, --no-goals (the
    benchmark adds --quick and its own)."""
    from agentd.methods import plain

    made = argparse.ArgumentParser(prog=prog, description=plain(doc),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    made.add_argument("--json", metavar="FILE", type=output_file,
                      help="write the figures as a flat JSON map").complete = FILE
    made.add_argument("--no-goals", action="store_true",
                      help="print missed goals but exit 0 (for exploring settings)")
    return made


def verdict(goals: list[tuple[str, bool]], no_goals: bool) -> int:
    """Print each goal missed; exit status 1 if one was, unless ``--no-goals``."""
    missed = [label for label, met in goals if not met]
    for label in missed:
        print(f"goal missed: {label}")
    return 1 if missed and not no_goals else 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="")
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
