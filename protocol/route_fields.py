"""Route message fields and their checks, shared by the route modules (sans-IO).

Every refusal is a ``Refusal("bad_field", …)`` naming the field; the shapes are described in
:mod:`protocol.route`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import Refusal
from .keys import ChipAddress, IdentityError, valid_host
from .messages import Send
from .tally_fields import MAX_UNITS, check_uuid

KINDS = ("linear", "circular")
ACTIONS = ("query", "good", "none", "ask", "hops")
MAX_DEPTH = 32  # hops: bounds every path a stranger can make us carry
MAX_GOODS = 2**31  # a none's goods: more than any search can find
MAX_FRONTIER = 2**31  # a none's frontier: more queries than any search can send
MAX_ROUTES = 256  # goods one user takes per query: a partner cannot make us carry more
MAX_LAST = 16  # last hops one query carries
SALT_BYTES = DIGEST_BYTES = 16
QUERY_FIELDS = {"query", "kind", "find", "units", "path", "depth", "deadline", "salt", "last"}
OPTIONAL_QUERY_FIELDS = {"via"}  # a directed query's users, as salted digests
HOP_FIELDS = {"cuid", "agent", "tally", "capacity"}
ADDRESS_FIELDS = {"host", "port"}  # where a path entry's node listens, when its sender knew

User = tuple[Any, Any]  # (cuid, agent): who a query went to, who an answer came from


def shown_capacity(capacity: int, units: int) -> int:
    """A hop's room as a node shows it in another's payment search for ``units``: rounded
    down to two significant digits (1,234 mCHIP shows as 1,200; below 100, exact), but never
    below ``units`` when it carries them, so it is offered for exactly the payments it can
    carry. Every node the query passes reads the path, and the payor every hop of it: they
    learn that a hop carries the units, and its room within 10%, not to the milliCHIP."""
    if capacity < 100 or capacity < units:
        return capacity
    step = 10 ** (len(str(capacity)) - 2)
    return max(units, capacity - capacity % step)


@dataclass(frozen=True)
class Candidate:
    """One of our user's tallies the runtime offers for a hop: it leads to ``partner`` and can
    carry ``capacity`` (from :func:`hop_capacity`)."""

    tally: str
    partner: ChipAddress
    capacity: int


def check_where(value: dict[str, Any], where: str) -> None:
    """An optional ``host`` and ``port`` (both or neither) in a user's map."""
    if not ADDRESS_FIELDS & set(value):
        return
    host, port = value.get("host"), value.get("port")
    if not valid_host(host) or len(host) > 255:
        raise Refusal("bad_field", f"{where}.host must be a host name or address")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise Refusal("bad_field", f"{where}.port must be a port number")


def check_kind(kind: Any) -> str:
    if kind not in KINDS:
        raise Refusal("bad_field", f"kind must be one of {KINDS}")
    return kind


def user_key(address: ChipAddress | dict[str, Any]) -> User:
    if isinstance(address, ChipAddress):
        return address.cuid, address.agent
    return address.get("cuid"), address.get("agent")


def path_entry(user: ChipAddress, tally: str | None, capacity: int | None) -> dict[str, Any]:
    """A path entry: the user, where its node listens (when known), the hop onward."""
    where = {} if user.host is None else {"host": user.host, "port": user.port}
    return {"cuid": user.cuid, "agent": user.agent, **where, "tally": tally,
            "capacity": capacity}


def good_answer(query: str, path: list[dict[str, Any]]) -> dict[str, Any]:
    return {"query": query, "path": path, "capacity": min(hop["capacity"] for hop in path[:-1])}


def none_answer(query: str, to: ChipAddress, here: ChipAddress, goods: int, frontier: int = 0
          ) -> Send:
    return Send(to, "route", "none", {"query": query, "goods": goods, "frontier": frontier},
                here.cuid)


def check_query(obj: Any) -> None:
    """Refuse a malformed query object, naming the field."""
    if not isinstance(obj, dict) or not QUERY_FIELDS <= set(obj) <= (
            QUERY_FIELDS | OPTIONAL_QUERY_FIELDS):
        raise Refusal("bad_field", f"a route query has exactly the fields {sorted(QUERY_FIELDS)}"
                      f" (and optionally {sorted(OPTIONAL_QUERY_FIELDS)})")
    check_uuid(obj["query"], "query.query")
    check_kind(obj["kind"])
    check_user_map(obj["find"], "query.find", {"cuid", "agent"})
    check_integer(obj["units"], "query.units", 1, MAX_UNITS)
    check_integer(obj["depth"], "query.depth", 1, MAX_DEPTH)
    check_integer(obj["deadline"], "query.deadline", 0, 2**63 - 1)
    check_hops(obj["path"], "query.path", 0, MAX_DEPTH)
    check_digests(obj["salt"], obj["last"], "query")
    if "via" in obj:
        _check_digest_list(obj["via"], "query.via", 1, MAX_DEPTH)


def check_digests(salt: Any, last: Any, where: str) -> None:
    if not isinstance(salt, bytes) or len(salt) != SALT_BYTES:
        raise Refusal("bad_field", f"{where}.salt must be {SALT_BYTES} bytes")
    _check_digest_list(last, f"{where}.last", 0, MAX_LAST)


def _check_digest_list(value: Any, where: str, shortest: int, longest: int) -> None:
    if not isinstance(value, list) or not shortest <= len(value) <= longest or not all(
            isinstance(digest, bytes) and len(digest) == DIGEST_BYTES for digest in value):
        raise Refusal("bad_field", f"{where} must be a list of {shortest} to {longest} "
                      f"{DIGEST_BYTES}-byte digests")


def check_integer(value: Any, where: str, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise Refusal("bad_field", f"{where} must be an integer in [{low}, {high}]")


def check_user_map(value: Any, where: str, names: set[str]) -> None:
    """A user's map of exactly ``names``, plus an optional ``host`` and ``port`` of its node."""
    if not isinstance(value, dict) or not names <= set(value) <= names | ADDRESS_FIELDS:
        raise Refusal("bad_field", f"{where} must be a map of exactly {sorted(names)}"
                      " (and optionally host, port)")
    check_where(value, where)
    try:
        address = ChipAddress.from_map({"cuid": value["cuid"], "agent": value["agent"]})
    except IdentityError as exc:
        raise Refusal("bad_field", f"{where}: {exc}") from exc
    if address.cuid is None:
        raise Refusal("bad_field", f"{where}.cuid must name a user")


def check_hops(path: Any, where: str, shortest: int, longest: int) -> None:
    """Every entry a user with a tally and a capacity."""
    if not isinstance(path, list) or not shortest <= len(path) <= longest:
        raise Refusal("bad_field", f"{where} must be a list of {shortest} to {longest} entries")
    for at, hop in enumerate(path):
        check_user_map(hop, f"{where}[{at}]", HOP_FIELDS)
        check_uuid(hop["tally"], f"{where}[{at}].tally")
        check_integer(hop["capacity"], f"{where}[{at}].capacity", 0, 2**63 - 1)


GOOD_FIELDS = frozenset({"query", "path", "capacity"})
NONE_FIELDS = frozenset({"goods", "frontier"})  # a none's own, beside its query


def check_good(obj: Any, units: int) -> None:
    """A ``good``: the fields capacity, path and query, and, when it also ends its sender's
    part of the search (:func:`ends`), a none's goods and frontier."""
    if not isinstance(obj, dict) or set(obj) not in (GOOD_FIELDS, GOOD_FIELDS | NONE_FIELDS):
        raise Refusal("bad_field", "route good has exactly the fields capacity, path, query"
                      " (and goods, frontier when it is its sender's last answer)")
    if ends(obj):
        _check_counts(obj)
    path = obj["path"]
    if not isinstance(path, list) or not 2 <= len(path) <= MAX_DEPTH + 1:
        raise Refusal("bad_field", f"route good path must have 2 to {MAX_DEPTH + 1} entries")
    check_hops(path[:-1], "good.path", 1, MAX_DEPTH)
    check_user_map(path[-1], "good.path[-1]", HOP_FIELDS)
    if path[-1]["tally"] is not None or path[-1]["capacity"] is not None:
        raise Refusal("bad_field", "good.path ends with the found user: nil tally and capacity")
    lowest = min(hop["capacity"] for hop in path[:-1])
    if obj["capacity"] != lowest or lowest < units:
        raise Refusal("bad_field", f"good.capacity must be the smallest hop capacity, >= {units}")


def ends(good: dict[str, Any]) -> bool:
    """Whether a ``good`` also ends its sender's part, as a ``none`` would (one message for
    the two: a user that finds the payee, and a relay whose last partner's answer it is)."""
    return "goods" in good


def _check_counts(obj: dict[str, Any]) -> None:
    check_integer(obj["goods"], "none.goods", 0, MAX_GOODS)
    check_integer(obj["frontier"], "none.frontier", 0, MAX_FRONTIER)


def check_answer(action: str, obj: Any, units: int) -> None:
    if not isinstance(obj, dict) or "query" not in obj:
        raise Refusal("bad_field", "a route answer names its query")
    if action == "good":
        check_good(obj, units)
    elif action == "none":
        if set(obj) != {"query"} | NONE_FIELDS:
            raise Refusal("bad_field", "route none has exactly the fields frontier, goods, query")
        _check_counts(obj)
    else:
        raise Refusal("bad_field", f"a route answer is good or none, not {action!r}")
