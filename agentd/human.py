"""``agentd -H``: a method's result as text for a person rather than JSON for a program.

A list of objects becomes a table (one row each, a column per field, nested values left out
unless a method names them), an object becomes ``key: value`` lines, nested objects indented.
The common calls choose their columns; every other method gets the generic layout.
"""

from __future__ import annotations

import datetime
from typing import Any

# the columns of the common list results, in order; a missing field prints as "-"
COLUMNS = {
    "peers.list": ("name", "agent", "address", "source", "connected", "last_seen"),
    "tally.list": ("tally", "cuid", "side", "state", "partner", "balance", "limit",
                   "chain.index", "chain.confirmed"),
    "users.list": ("cuid", "name", "address"),
    "receipts.list": ("pid", "seq", "kind", "status", "document_id"),
    "chit.list": ("chit", "by", "type", "units", "state", "index", "memo"),
    "route.find": ("capacity", "path"),
    "lift.list": ("lift", "kind", "state", "units", "deadline", "path"),
}
TIMESTAMPS = ("last_seen", "date", "received", "timestamp", "expires", "deadline")


def render(method: str, result: Any) -> str:
    if isinstance(result, list) and all(isinstance(item, dict) for item in result):
        return table(result, COLUMNS.get(method))
    if isinstance(result, dict):
        return "\n".join(_lines(result, 0)) + "\n"
    return f"{_scalar('', result)}\n"


def table(rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None) -> str:
    if not rows:
        return "(none)\n"
    if columns is None:
        columns = tuple(key for key, value in rows[0].items()
                        if not isinstance(value, dict | list))
    cells = [[column.upper() for column in columns]]
    cells += [[_scalar(column, _field(row, column)) for column in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths,
                                                                       strict=True)).rstrip()
                   + "\n" for line in cells)


def _field(row: dict[str, Any], path: str) -> Any:
    value: Any = row
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _lines(value: dict[str, Any], depth: int) -> list[str]:
    pad = "  " * depth
    out = []
    for key, item in value.items():
        if isinstance(item, dict) and item:
            out.append(f"{pad}{key}:")
            out += _lines(item, depth + 1)
        elif isinstance(item, list) and item and isinstance(item[0], dict):
            out.append(f"{pad}{key}:")
            out += [pad + "  " + line for line in table(item).splitlines()]
        else:
            out.append(f"{pad}{key}: {_scalar(key, item)}")
    return out


def _scalar(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key in TIMESTAMPS and isinstance(value, int) and value > 10**11:  # ms since the epoch
        moment = datetime.datetime.fromtimestamp(value / 1000, datetime.UTC)
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    if key == "uptime_s" and isinstance(value, int | float):
        return str(datetime.timedelta(seconds=round(value)))
    if key == "path" and isinstance(value, list) and all(isinstance(hop, dict) for hop in value):
        # a route's or a lift's users, each with the start of its node's agent id
        return " -> ".join(f"{hop.get('cuid')}@{str(hop.get('agent'))[:8]}" for hop in value)
    if isinstance(value, list):
        return ", ".join(_scalar("", item) for item in value) or "-"
    return str(value)
