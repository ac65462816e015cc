"""Where a command writes what it found (``--json FILE``, ``--report DIR`` of ``agentd sim``
and ``agentd bench``), checked as the command line is read: a run of minutes must not end in
a traceback because the path was mistyped, its results lost.

Each is tried for real, as the user running the command (``os.access`` says yes to root on a
path where nothing can be created): the file is opened for appending, and removed again if
that made it; the directory is made, as the report would make it.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def output_file(text: str) -> str:
    """``text``, if a file can be written there; else an argparse error saying why."""
    path = Path(text)
    existed = path.exists()
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write {text}: {_why(exc)}") from exc
    if not existed:
        path.unlink()
    return text


def output_dir(text: str) -> str:
    """``text``, once it is a directory (made, with its parents, if need be); else an argparse
    error saying why."""
    try:
        Path(text).mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise argparse.ArgumentTypeError(f"{text} is a file, not a directory") from exc
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot make the directory {text}: {_why(exc)}"
                                         ) from exc
    return text


def _why(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()
