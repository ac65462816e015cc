"""Logging to stderr: readable text by default, one JSON object per line on request."""

from __future__ import annotations

import json
import logging

import pytest

from agentd.logs import setup_logging


@pytest.fixture(autouse=True)
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_node_name_and_level(capsys):
    setup_logging("alice", "info", "json")
    logging.getLogger("agentd.test").info("listening on %s", "127.0.0.1:7101")
    logging.getLogger("agentd.test").debug("not shown at info")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["node"] == "alice" and entry["level"] == "info"
    assert entry["logger"] == "agentd.test" and entry["msg"] == "listening on 127.0.0.1:7101"
    assert entry["ts"].endswith("Z")


def test_text_lines_name_the_node(capsys):
    setup_logging("bob", "warning", "text")
    logging.getLogger("agentd.test").info("hidden")
    logging.getLogger("agentd.test").warning("peer unreachable")
    err = capsys.readouterr().err
    assert "hidden" not in err
    assert " bob WARNING agentd.test: peer unreachable" in err
