"""The RPC method registry, read without a running node: usage, per-method help, the README.

Every service registers its methods on the node it is built with, so the one list that cannot
go stale is the one a node builds. :func:`registry` builds a node object that never runs (no
socket, no database, nothing written) and takes its methods; :func:`describe` turns one into
help: parameters with their types and defaults, and the docstring's first paragraph.
"""

from __future__ import annotations

import functools
import inspect
import re
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentd.runtime.node import Node

Method = Callable[..., Awaitable[Any]]

# Groups for the usage text, by method-name prefix; a prefix not listed goes under its own name.
GROUPS = {
    "": "node", "peers": "node", "users": "node",
    "tally": "credit", "chit": "credit", "route": "credit", "lift": "credit",
    "relay": "relay", "ch": "evidence", "receipts": "evidence",
}


@functools.cache
def offline_node() -> Node:
    """A node that never runs: its services register their methods and message targets."""
    from agentd.config import Config
    from agentd.runtime.node import Node
    from protocol.keys import SigningKey

    nowhere = Path("/nonexistent/agentd-help")
    config = Config(path=nowhere / "agentd.toml", name="help", data_dir=nowhere,
                    listen="127.0.0.1:0", key_file=nowhere / "agent.key")
    return Node(config, SigningKey.generate())


def registry() -> dict[str, Method]:
    """Every RPC method a node serves, by name (``help`` included)."""
    return dict(offline_node().rpc.methods)


def plain(doc: str | None) -> str:
    """Docstring text for a terminal: reST roles and literals become plain words."""
    text = re.sub(r":\w+:`~?([^`]*)`", lambda m: m.group(1).rsplit(".", 1)[-1], doc or "")
    return text.replace("``", "")


def first_paragraph(doc: str | None) -> str:
    return " ".join(plain(inspect.cleandoc(doc or "")).split("\n\n")[0].split())


def _type_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return "any"
    text = annotation if isinstance(annotation, str) else getattr(
        annotation, "__name__", str(annotation))
    return text.replace("typing.", "")


def describe(name: str, method: Method) -> dict[str, Any]:
    """``{method, params: [{name, type, required, default?}], doc}`` for one method."""
    params = []
    for parameter in inspect.signature(method).parameters.values():
        entry: dict[str, Any] = {"name": parameter.name,
                                 "type": _type_name(parameter.annotation),
                                 "required": parameter.default is inspect.Parameter.empty}
        if not entry["required"]:
            entry["default"] = parameter.default
        params.append(entry)
    return {"method": name, "params": params, "doc": first_paragraph(method.__doc__)}


def signature_line(described: dict[str, Any]) -> str:
    """``tally.offer cuid=CUID tally=TALLY [limit=null] ...`` — how the CLI spells a call:
    every param as ``key=value``, the optional ones in brackets with their defaults."""
    parts = [described["method"]]
    for param in described["params"]:
        parts.append(f"{param['name']}={param['name'].upper()}" if param["required"]
                     else f"[{param['name']}={_literal(param['default'])}]")
    return " ".join(parts)


def _literal(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if value != "" else '""'


def method_help(name: str) -> str:
    """The text ``agentd help METHOD`` prints."""
    methods = registry()
    if name not in methods:
        from agentd.cli import COMMANDS
        from agentd.errors import UserError, did_you_mean

        raise UserError(f"{name!r} is neither a method nor a command"
                        f"{did_you_mean(name, [*methods, *COMMANDS])}; 'agentd help' lists "
                        "them all")
    described = describe(name, methods[name])
    lines = [f"usage: agentd -c CONFIG {signature_line(described)}"]
    for paragraph in plain(inspect.cleandoc(methods[name].__doc__ or "")).split("\n\n"):
        lines += ["", *textwrap.wrap(" ".join(paragraph.split()), 92,  # the whole docstring
                                     break_on_hyphens=False)]  # YYYY-MM-DD stays whole
    if described["params"]:
        lines += ["", "parameters:"]
        width = max(len(p["name"]) for p in described["params"])
        for param in described["params"]:
            needed = "required" if param["required"] else \
                f"default {_literal(param['default'])}"
            lines.append(f"  {param['name']:<{width}}  {param['type']}, {needed}")
    return "\n".join(lines) + "\n"


def grouped() -> dict[str, list[str]]:
    """Method names by group, in a stable order, for the usage text."""
    out: dict[str, list[str]] = {}
    for group in dict.fromkeys(GROUPS.values()):
        out[group] = []
    for name in sorted(registry()):
        prefix = name.split(".")[0] if "." in name else ""
        out.setdefault(GROUPS.get(prefix, prefix), []).append(name)
    return {group: names for group, names in out.items() if names}
