"""Text a peer may have chosen (a memo, a name, a refusal's message, a relay view's keys),
made safe to show a person: the characters that would break a line, drive a terminal or
reorder what it shows, written as escapes. ``-H`` tables, text log lines, the CLI's JSON and
the check of a user's name share these sets."""

from __future__ import annotations

import re

CONTROLS = r"\x00-\x1f\x7f-\x9f"  # C0, DEL and C1 (CSI among them)
SEPARATORS = r"\u2028\u2029"  # line and paragraph separators: str.splitlines breaks at them
BIDI = r"\u202a-\u202e\u2066-\u2069"  # bidirectional embeddings, overrides and isolates
UNSAFE = re.compile(f"[{CONTROLS}{SEPARATORS}{BIDI}]")


def escaped(text: str) -> str:
    """``text`` with every ``UNSAFE`` character as a Python escape (``\\n``, ``\\x1b``,
    ``\\u202e``): one line, nothing for a terminal to act on."""
    return UNSAFE.sub(lambda found: repr(found.group())[1:-1], text)
