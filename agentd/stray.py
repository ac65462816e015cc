"""A node that runs where its config no longer points: its ``[node] data_dir`` was edited
while it ran, so the CLI finds no control socket where the config says, and would tell the
user that no node runs (``agentd down``: "no node was running") or to start it again (which
fails: its port is taken). Something still answering at the config's ``node.listen`` says
otherwise; only the socket it still holds, under the old data_dir, reaches it."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

from agentd.config import address_key, listens_everywhere

PROBE_TIMEOUT_S = 0.3


def stray_note(config: Path) -> str | None:
    """What to tell the user when no control socket is where ``config`` says but something
    listens at its ``node.listen``; None when nothing does (or the file says no address)."""
    try:
        listen = tomllib.loads(config.read_text(encoding="utf-8"))["node"]["listen"]
        host, port = address_key(listen)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError,
            ValueError):
        return None
    if listens_everywhere(listen):
        host = "127.0.0.1"
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError:
        return None
    return (f"but something listens at its node.listen {listen}: most likely this node, "
            "started before its data_dir was edited (a second start cannot take the port): "
            "stop it with 'agentd --socket OLD_DATA_DIR/agentd.sock stop'")
