"""``agentd -H``: a method's result as text for a person rather than JSON for a program.

A list of objects becomes a table (one row each, a column per field, nested values left out
unless a method names them), an object becomes ``key: value`` lines, nested objects indented.
The common calls choose their columns; every other method gets the generic layout. A table
cell shows hashes, receipts, payloads, agent ids and tally ids cut short, a long peer address
cut in its middle, a lift's path as its users alone, a route's path wrapped onto lines, and a
column that would repeat another is merged into it, so that a row of the common lists fits
100 columns: the JSON output has every value whole.
"""

from __future__ import annotations

import datetime
import functools
import time
from collections.abc import Callable
from typing import Any

from agentd.printable import escaped

RELAY_STATES = ("relay.state", "relay.wait")  # the methods that show a relay view
# the columns of the common list results, in order (a dotted name reaches into a nested
# object; "METHOD.KEY" names the list under KEY of an object result); a missing field is "-"
COLUMNS = {
    "peers.list": ("name", "agent", "address", "source", "last_seen", "clock_ahead_ms"),
    "tally.list": ("tally", "cuid", "side", "state", "partner", "balance", "capacity.pay",
                   "capacity.receive", "chain"),
    "users.list": ("cuid", "name", "address"),
    "receipts.list": ("pid", "seq", "kind", "status", "document_id"),
    "chit.list": ("chit", "by", "type", "units", "state", "index", "memo"),
    "route.find": ("capacity", "path"),
    "lift.list": ("lift", "kind", "state", "units", "deadline", "path"),
    "ch.query.entries": ("seq", "timestamp", "client_id", "header.kind", "document_id",
                         "payload_text"),
    "ch.log_many": ("pid", "seq", "document_id", "error"),  # an entry refused: its error
    # the holders of a tally:<uuid> relay view, as tally.list shows a tally
    **{f"{method}.view.payload.holders": ("cuid", "side", "state", "partner", "balance",
                                          "chain") for method in RELAY_STATES},
    # the signed chits of a tally:<uuid>:chits view, as chit.list shows chits (a lift:<uuid>
    # view's chits, this node's rows of them, name each chit by its uuid alone and get every
    # field)
    **{f"{method}.view.payload.chits": ("chit.uuid", "chit.by", "chit.type", "chit.units",
                                        "state", "index", "hash", "chit.memo")
       for method in RELAY_STATES},
}
# headers other than the column's name in capitals
TITLES = {"capacity.pay": "CAN_PAY", "capacity.receive": "CAN_RECEIVE", "header.kind": "KIND",
          "payload_text": "TEXT", "chit.uuid": "CHIT", "chit.by": "BY", "chit.type": "TYPE",
          "chit.units": "UNITS", "chit.memo": "MEMO"}
SPARSE = ("clock_ahead_ms",)  # a column only when some row has a value (null until measured)
# table cells show the first N characters of these, and "…"
CUT = {"entry_hash": 12, "prev_hash": 12, "document_id": 12, "payload_sha256": 12,
       "client_id": 8, "agent": 8, "clearing_house": 8, "tally": 8, "lift": 8, "receipt": 16,
       "payload": 16, "proof": 16, "payload_text": 24, "uuid": 8, "chit": 8, "hash": 12,
       "partner": 8,  # a partner as an agent id alone (a relay view's holders)
       "memo": 40}  # a chit's memo (up to 1,000 characters) in chit.list and the chit views
# key: value lines show the first N characters of these (a relay view's proof, a receipt:
# 500 to 2,000 characters that filled a screen), "…" and how long they are
LINE_CUT = {"proof": 24, "receipt": 24}
# a peer's address longer than this shows its start, "…", its end and the port: a full IPv6
# address ([8 groups]:port, 46 characters) took peers.list past 100 columns
ADDRESS_CUT = 30
# a lift's path in lift.list (users alone) longer than this shows its start, "…" and its end
LIFT_PATH_CUT = 36
# a route's path in route.find (every hop as cuid@AGENT…) wraps onto lines of at most this
# many characters, between hops: a route of 7 users took a row past 100 columns
ROUTE_PATH_WIDTH = 80
TIMESTAMPS = ("last_seen", "date", "received", "timestamp", "expires", "deadline", "since",
              "last_db_error_at")
DURATIONS = ("uptime_s",)
UNITS = (("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1))


def _seen(row: dict[str, Any], now_ms: int) -> Any:
    """``connected`` while a channel is open (its last_seen is now), else how long ago it
    last was (``2 h 13 min ago``: what a person asks of a peer), or ``never``."""
    if row.get("connected"):
        return "connected"
    seen = row.get("last_seen")
    if not isinstance(seen, int):
        return "never"
    return f"{duration(max(now_ms - seen, 0) / 1000)} ago"


def _chain(row: dict[str, Any], now_ms: int) -> Any:
    """The chain's head index and the index the partner confirmed: ``12/12`` when settled;
    ``0/0 (3 missing)`` while it lacks blocks the partner confirmed."""
    chain = row.get("chain")
    if not isinstance(chain, dict):
        return None
    shown = f"{_scalar('', chain.get('index'))}/{_scalar('', chain.get('confirmed'))}"
    missing = chain.get("missing")
    return f"{shown} ({_scalar('', missing)} missing)" if missing else shown


def _users(row: dict[str, Any], now_ms: int) -> Any:
    """A lift's path as ``lift.list`` shows it: its users alone (``alice -> bob -> carol``;
    ``lift.show`` adds each one's node), and a path longer than ``LIFT_PATH_CUT`` as many
    users from its start as fit, ``…``, its last user and how many hops it has."""
    path = row.get("path")
    if not isinstance(path, list) or not all(isinstance(hop, dict) for hop in path):
        return path
    names = [_scalar("", hop.get("cuid")) for hop in path]
    if len(whole := " -> ".join(names)) <= LIFT_PATH_CUT:
        return whole
    end = f" -> … -> {names[-1]} ({len(names) - 1} hops)"
    shown = names[0]
    for name in names[1:-1]:
        if len(f"{shown} -> {name}{end}") > LIFT_PATH_CUT:
            break
        shown += f" -> {name}"
    return shown + end


def _hops(row: dict[str, Any], now_ms: int) -> Any:
    """A route's path as ``route.find`` shows it: every hop as ``cuid@AGENT…`` (a route is
    what a person checks before paying along it, so none is left out), wrapped between hops
    onto lines of at most ``ROUTE_PATH_WIDTH`` characters, each further line starting
    ``-> ``; a single hop longer than that has a line of its own."""
    path = row.get("path")
    if not isinstance(path, list) or not all(isinstance(hop, dict) for hop in path):
        return path
    lines = [_user(path[0].get("cuid"), path[0].get("agent"))] if path else []
    for hop in path[1:]:
        user = _user(hop.get("cuid"), hop.get("agent"))
        if len(f"{lines[-1]} -> {user}") <= ROUTE_PATH_WIDTH:
            lines[-1] += f" -> {user}"
        else:
            lines.append(f"-> {user}")
    return "\n".join(lines)


def _error(row: dict[str, Any], now_ms: int) -> Any:
    """An item's error (``{code, message}``, as ``ch.log_many`` gives a refused entry's) as
    ``CODE: message``; "-" for an item without one."""
    error = row.get("error")
    if not isinstance(error, dict):
        return error
    return f"{_scalar('', error.get('code'))}: {_scalar('', error.get('message'))}"


# columns of a method's table made of several fields of the row (what would repeat apart, or
# is cut to fit), from the row and the time now (ms since the epoch)
JOINED: dict[str, dict[str, Callable[[dict[str, Any], int], Any]]] = {
    "peers.list": {"last_seen": _seen}, "tally.list": {"chain": _chain},
    "ch.log_many": {"error": _error},
    "lift.list": {"path": _users}, "route.find": {"path": _hops},
    **{f"{method}.view.payload.holders": {"chain": _chain} for method in RELAY_STATES}}


def render(method: str, result: Any, now_ms: int | None = None) -> str:
    """``result`` as text; ``now_ms`` (default: the clock) for how long ago things were."""
    now = round(time.time() * 1000) if now_ms is None else now_ms
    if isinstance(result, list) and all(isinstance(item, dict) for item in result):
        return table(result, COLUMNS.get(method), _joined(method, now))
    if isinstance(result, dict):
        return "\n".join(_lines(result, 0, method, now)) + "\n"
    return f"{_scalar('', result)}\n"


def _joined(where: str, now_ms: int) -> dict[str, Callable[[dict[str, Any]], Any]]:
    """The joined columns of the table ``where`` names (a method, or METHOD.KEY...)."""
    return {column: functools.partial(cell, now_ms=now_ms)
            for column, cell in JOINED.get(where, {}).items()}


def table(rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None,
          joined: dict[str, Callable[[dict[str, Any]], Any]] | None = None) -> str:
    if not rows:
        return "(none)\n"
    if columns is None:  # every row's plain fields, in the order they first come
        columns = tuple(dict.fromkeys(key for row in rows for key, value in row.items()
                                      if not isinstance(value, dict | list)))
        if not columns:  # nothing plain to tabulate: each row as key: value lines
            return "\n".join("\n".join(_lines(row, 0, "", time.time_ns() // 10**6)) + "\n"
                             for row in rows)
    columns = tuple(column for column in columns if column not in SPARSE
                    or any(_field(row, column) is not None for row in rows))
    joined = joined or {}
    cells = [[escaped(TITLES.get(column, str(column).upper())) for column in columns]]
    cells += [[_joined_cell(joined[column](row)) if column in joined
               else _cell(column, _field(row, column)) for column in columns] for row in rows]
    widths = [max(len(part) for line in cells for part in line[i].split("\n"))
              for i in range(len(columns))]
    out = []
    for line in cells:  # a cell of several lines (a wrapped route) makes its row as tall
        parts = [cell.split("\n") for cell in line]
        for i in range(max(len(cell) for cell in parts)):
            out.append("  ".join((cell[i] if i < len(cell) else "").ljust(width)
                                 for cell, width in zip(parts, widths, strict=True)).rstrip())
    return "".join(f"{text}\n" for text in out)


def duration(seconds: float) -> str:
    """``45 s``, ``3 min 20 s``, ``2 h 13 min``, ``4 d 1 h``: the largest unit and the next."""
    total = max(round(seconds), 0)
    i = next((i for i, (_, size) in enumerate(UNITS) if total >= size), len(UNITS) - 1)
    (name, size), smaller = UNITS[i], UNITS[i + 1:i + 2]
    count, rest = divmod(total, size)
    if smaller and rest >= smaller[0][1]:
        return f"{count} {name} {rest // smaller[0][1]} {smaller[0][0]}"
    return f"{count} {name}"


def _field(row: dict[str, Any], path: str) -> Any:
    value: Any = row
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _lines(value: dict[str, Any], depth: int, where: str, now_ms: int) -> list[str]:
    pad = "  " * depth
    out = []
    for key, item in value.items():
        inner, name = f"{where}.{key}", escaped(str(key))  # a relay view's keys: a peer's
        if isinstance(item, dict) and item:
            out.append(f"{pad}{name}:")
            out += _lines(item, depth + 1, inner, now_ms)
        elif isinstance(item, list) and item and isinstance(item[0], dict):
            out.append(f"{pad}{name}:")
            out += [pad + "  " + line for line in table(
                item, _columns(inner, item), _joined(inner, now_ms)).rstrip("\n").split("\n")]
        else:
            text = _scalar(key, item)
            cut = LINE_CUT.get(key)
            if cut is not None and len(text) > cut + 1:
                text = f"{text[:cut]}… ({len(text)} characters, whole without -H)"
            out.append(f"{pad}{name}: {text}")
    return out


def _columns(where: str, rows: list[dict[str, Any]]) -> tuple[str, ...] | None:
    """The columns of a nested table: those ``where`` names when its rows have the first of
    them (the chits of two relay views share a place), else every scalar field."""
    columns = COLUMNS.get(where)
    return columns if columns and _field(rows[0], columns[0]) is not None else None


def _joined_cell(value: Any) -> str:
    """A joined column's cell: text as its function made it (from printable parts, its own
    line breaks kept: a wrapped route), anything else as a scalar."""
    return value if isinstance(value, str) else _scalar("", value)


def _cell(column: str, value: Any) -> str:
    """A table cell, control characters escaped whatever made it (``agentd.printable.escaped``)."""
    return escaped(_cell_text(column, value))


def _cell_text(column: str, value: Any) -> str:
    """A table cell's text: a partner as ``cuid@agent`` (the start of its node's agent id), as paths
    show users; a pid in an agent's namespace as ``AGENT…/REST`` (the agent id cut short, so
    the tally or lift uuid that tells processes apart shows); a long peer address cut in its
    middle, and a CHIP address as ``cuid:AGENT…@`` and that; a long hash or payload cut
    short."""
    name = column.rsplit(".", 1)[-1]
    if name == "partner" and isinstance(value, str) and ":" in value:  # cuid:agent@host:port
        cuid, _, rest = value.partition(":")
        return _user(cuid, rest.split("@")[0])
    if name == "address" and isinstance(value, str):
        if "@" in value:  # a CHIP address, cuid:agent@host:port
            user, _, where = value.rpartition("@")
            cuid, colon, agent = user.rpartition(":")
            return f"{cuid}{colon}{agent[:CUT['agent']]}…@{_address(where)}"
        return _address(value)  # host:port
    if name == "pid" and isinstance(value, str):
        from protocol.clearing import namespace_of  # here: -H getinfo need not load it

        owner = namespace_of(value)
        if owner is not None:
            return f"{owner[:8]}…{value[len(owner):]}"
    text = _scalar(name, value)
    cut = CUT.get(name)
    return text if cut is None or len(text) <= cut + 1 else text[:cut] + "…"


def _address(address: str) -> str:
    """``host:port`` in at most ``ADDRESS_CUT`` characters: the port whole (nodes on one host
    differ by it), and of the host whole groups or labels from its start and its end either
    side of ``…`` (an IPv6 address's network and interface parts, a name's first label and
    its domain)."""
    if len(address) <= ADDRESS_CUT:
        return address
    host, colon, port = address.rpartition(":")
    room = ADDRESS_CUT - len(colon + port) - 1
    if not host or room < 2:  # no port to keep, or one that leaves no room: cut the end
        return address[:ADDRESS_CUT - 1] + "…"
    head, tail = host[:(room + 1) // 2], host[len(host) - room // 2:]
    cut = max(head.rfind(":"), head.rfind("."))  # the last whole group or label
    head = head[:cut] if cut > 1 else head
    cut = min((i for i in (tail.find(":"), tail.find(".")) if i >= 0), default=-1)
    tail = tail[cut + 1:] if 0 <= cut < len(tail) - 2 else tail
    return f"{head}…{tail}{colon}{port}"


def _user(cuid: Any, agent: Any) -> str:
    return escaped(f"{cuid}@{str(agent)[:8]}")


def _scalar(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key in TIMESTAMPS and isinstance(value, int) and value > 10**11:  # ms since the epoch
        moment = datetime.datetime.fromtimestamp(value / 1000, datetime.UTC)
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    if key in DURATIONS and isinstance(value, int | float):
        return duration(value)
    if key == "path" and isinstance(value, list) and all(isinstance(hop, dict) for hop in value):
        # a route's or a lift's users, each with the start of its node's agent id
        return " -> ".join(_user(hop.get("cuid"), hop.get("agent")) for hop in value)
    if isinstance(value, list):
        return ", ".join(_scalar("", item) for item in value) or "-"
    if value == {}:  # nothing counted yet (getinfo's refusals), as an empty list shows
        return "-"
    return escaped(str(value))
