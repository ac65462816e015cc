"""Progress of a simulation's calls: a live bar with the rate on a terminal (``rich``, from
the ``report`` extra), else — stdout a file or a pipe, or no ``rich`` — a plain line each
tenth of the way, so logs stay readable."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

REFRESH_S = 0.1  # the bar is redrawn at most this often (by the caller: no refresh thread)


@contextmanager
def progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``, to be called as each call of ``total`` finishes (``n`` counted)."""
    live = _live_bar(label, total) if sys.stdout.isatty() else None
    with live if live is not None else _plain_lines(label, total) as advance:
        yield advance


@contextmanager
def _plain_lines(label: str, total: int) -> Iterator[Callable[[int], None]]:
    started, done = time.perf_counter(), 0

    def advance(n: int) -> None:
        nonlocal done
        before, done = done, done + n
        if done * 10 // max(total, 1) > before * 10 // max(total, 1):
            rate = done / max(time.perf_counter() - started, 1e-9)
            print(f"  {label} {done}/{total} ({rate:,.0f}/s)", flush=True)

    yield advance


def _live_bar(label: str, total: int):
    """A rich progress bar for ``label``, or None without rich (the report extra)."""
    try:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
    except ImportError:
        return None

    @contextmanager
    def bar() -> Iterator[Callable[[int], None]]:
        columns = (TextColumn(f"  {label:14}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]:>9}"), TimeElapsedColumn(),
                   TextColumn("left"), TimeRemainingColumn())
        with Progress(*columns, auto_refresh=False) as shown:
            task = shown.add_task(label, total=total, rate="")
            started, drawn, done = time.perf_counter(), 0.0, 0

            def advance(n: int) -> None:
                nonlocal drawn, done
                done += n
                now = time.perf_counter()
                shown.update(task, completed=done,
                             rate=f"{done / max(now - started, 1e-9):,.0f}/s")
                if now - drawn >= REFRESH_S or done >= total:
                    shown.refresh()
                    drawn = now

            yield advance

    return bar()
