"""Logging to stderr as readable text or JSON lines, every record tagged with the node name.

The standard library's logging, with two additions. Structured fields: ``event(log, what,
**fields)`` logs one line whose fields (``agent``, ``tally``, ``state``, ...) are ``key=value``
words in text and keys of their own in JSON. Rate limiting: a warning repeated with the same
text within ``REPEAT_WINDOW`` seconds is held back and counted, and the next one to pass says
how many were held (``repeated N times``), so a peer that keeps failing costs a line a minute.
Timestamps are full ISO 8601 in UTC, to the millisecond.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from agentd.printable import escaped

REPEAT_WINDOW = 60.0  # seconds a repeated warning is held back
MAX_TRACKED = 1024  # distinct warnings remembered (oldest forgotten first)


def traced(message_id: bytes) -> str:
    """A message's id as log lines show it (``message sent``, ``taken``, ``acked``, a refusal),
    to follow it across nodes: 12 hex characters, 48 bits, so two messages of one log are not
    told apart by chance."""
    return message_id.hex()[:12]


def event(logger: logging.Logger, what: str, level: int = logging.INFO, **fields: Any) -> None:
    """One line saying ``what`` happened, with ``fields`` kept structured."""
    if logger.isEnabledFor(level):
        text = " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)
        logger.log(level, "%s %s" if text else "%s", what, *([text] if text else []),
                   extra={"fields": {k: v for k, v in fields.items() if v is not None}})


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + \
        f".{int(record.msecs):03d}Z"


class _JsonFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        entry = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "node": self.node,
            "logger": record.name,
            "msg": record.getMessage(),
            **(fields or {}),
        }
        if getattr(record, "repeated", 0):
            entry["repeated"] = record.repeated
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class _TextFormatter(logging.Formatter):
    """One line a record: a message carries text peers chose (a refusal's message, a memo),
    and a line break in it would forge log lines, an escape sequence drive the terminal."""

    def __init__(self, node: str) -> None:
        super().__init__(f"%(isotime)s {node} %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escaped(record.message)  # a traceback, added after, keeps its lines
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        record.isotime = _timestamp(record)
        text = super().format(record)
        repeated = getattr(record, "repeated", 0)
        return f"{text} (and {repeated} more like it held back)" if repeated else text


class RepeatFilter(logging.Filter):
    """Holds back a warning (or worse) whose text was logged less than ``window`` s ago."""

    def __init__(self, window: float = REPEAT_WINDOW, clock=time.monotonic) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self._seen: dict[tuple[str, str], list[float | int]] = {}  # key -> [last shown, held]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.getMessage())
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.window:
            seen[1] += 1
            return False
        record.repeated = int(seen[1]) if seen is not None else 0
        self._seen.pop(key, None)
        self._seen[key] = [now, 0]
        while len(self._seen) > MAX_TRACKED:
            self._seen.pop(next(iter(self._seen)))
        return True


def setup_logging(node: str, level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter(node) if fmt == "json" else _TextFormatter(node))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
