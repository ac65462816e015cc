"""The rogue peer for tests: see :mod:`agentd.bench.rogue` (``agentd bench abuse`` uses it
too). Helpers here start nothing; tests attack ``agentd run`` processes or in-process nodes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentd.bench.rogue import Rogue
from tests.clihelpers import cli


def getinfo(config: str) -> dict:
    return json.loads(cli("-c", config, "getinfo").stdout)


def rpc(config: str, method: str, *params: str) -> Any:
    return json.loads(cli("-c", config, method, *params).stdout)


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll ``condition`` until it is truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def log_of(config: str) -> str:
    return (Path(config).parent / "agentd.log").read_text()


__all__ = ["Rogue", "getinfo", "log_of", "rpc", "wait_until"]
