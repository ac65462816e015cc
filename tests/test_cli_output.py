"""What the CLI prints as JSON: text as it is, accents included, but for the characters JSON
leaves raw that a terminal acts on (DEL, C1 controls such as CSI) or reorders by (line
separators, bidirectional overrides), which a peer could put in a memo or a refusal."""

from __future__ import annotations

import json

from agentd.cli import _json


def test_terminal_controls_are_escaped_and_the_json_reads_the_same():
    value = {"memo": "café \x7f\x9b2J\u2028\u202eevil \x1b", "n": 3}
    text = _json(value, indent=2)
    assert not any(char in text for char in "\x7f\x9b\u2028\u202e\x1b"), text
    assert "café" in text and "\\u009b2J" in text and "\\u202e" in text
    assert json.loads(text) == value
