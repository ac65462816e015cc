"""Reading a config file as a file: the errors for one that cannot be read (missing, a
directory, not UTF-8), and the control socket of the node it configures, found without
validating the rest (the CLI needs only ``[node] data_dir`` to reach a node)."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

from agentd.errors import UserError


def unreadable(source: Path, exc: OSError) -> UserError:
    """A config file the system would not read: why, and, for a directory, the file in it."""
    hint = ""
    if source.is_dir():
        inside = source / "agentd.toml"
        hint = f"; did you mean {inside}?" if inside.is_file() else "; give the config file"
    return UserError(f"{source}: cannot read config file: {exc.strerror}{hint}")


def not_text(source: Path, what: str, exc: UnicodeDecodeError) -> UserError:
    """A file that is not UTF-8 (a database, a file saved as Latin-1): where, not a
    traceback."""
    return UserError(f"{source}: not a {what}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}"
                     f" at offset {exc.start}; TOML files are UTF-8)")


def refuse_scenario(raw: dict, source: Path) -> None:
    """A simulation scenario given where a node's config goes: say what it is (its tables
    would be called misspellings of the config's)."""
    if "sim" in raw and "node" not in raw:
        raise UserError(f"{source}: a simulation scenario ([sim]), not a node config: "
                        f"agentd sim {source} runs it")


def control_socket(path: Path | str) -> Path:
    """The control socket of the node configured in ``path``, read without validating the
    rest of the file: the CLI needs only ``[node] data_dir`` to reach a node — to ``reload``
    it after a bad edit, which the node then refuses naming the problem, or to ``stop`` it.
    A file that is not TOML at all (nor UTF-8: an edit saved as Latin-1) falls back to its
    ``data_dir = "..."`` line."""
    source = Path(path)
    try:
        text = source.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError as exc:
        raise UserError(f"{source}: config file not found") from exc
    except OSError as exc:
        raise unreadable(source, exc) from exc
    toml = ""
    try:
        raw = tomllib.loads(text)
        refuse_scenario(raw, source)
        data_dir = raw.get("node", {}).get("data_dir")
    except (tomllib.TOMLDecodeError, AttributeError) as exc:
        found = re.search(r'^\s*data_dir\s*=\s*"([^"\\]*)"', text, re.MULTILINE)
        data_dir = found.group(1) if found else None
        toml = f"is not a TOML config ({exc}), and " if isinstance(
            exc, tomllib.TOMLDecodeError) else ""
    if not isinstance(data_dir, str) or not data_dir:
        raise UserError(f"{source}: {toml}node.data_dir is required (it locates the control "
                        "socket; or give --socket PATH)")
    return Path(os.path.normpath(source.resolve().parent / data_dir)) / "agentd.sock"
