"""What ``lift.pay``, ``lift.clear``, ``lift.show`` and ``lift.list`` return: a lift as JSON,
read from the database (its signed record, its state here, the referee's decision, and this
node's chits of it). ``equivocation``: the referee's other decision on the lift, when it signed
both good and void (``protocol.lift_equivocation``: the lift is good, and ``decision`` the
good one)."""

from __future__ import annotations

import sqlite3
from typing import Any

from agentd.runtime.context import Reject
from protocol import lift as lf
from protocol.keys import b64u
from store import lifts
from store.credit import Ledger


def started(record: dict[str, Any]) -> dict[str, Any]:
    """A lift just started here: pending, with its path and referee."""
    return {"lift": record["lift"], "state": lf.PEND, "units": record["units"],
            "path": _describe(record)["path"], "referee": record["referee"]["agent"],
            "deadline": record["deadline"]}


def promised_to(record: dict[str, Any], hop: Any) -> str:
    """Whom our promise on hop ``hop`` went to (the user after it on the path), as a person
    can find it in a refusal: ``the next user on the path (dan on node ZrTvbBlu…)`` (the
    refusal said "hop 2", the tally's index, not whose node refused)."""
    path = record.get("path")
    if not isinstance(hop, int) or not isinstance(path, list) or not 0 <= hop < len(path) - 1 \
            or not isinstance(path[hop + 1], dict):
        return f"the payee of hop {hop}"
    payee = path[hop + 1]
    return f"the next user on the path ({payee.get('cuid')} on node " \
           f"{str(payee.get('agent'))[:8]}…)"


def shown(conn: sqlite3.Connection, lift: str) -> dict[str, Any]:
    """A lift this node takes part in, or only referees; ``UNKNOWN_LIFT`` otherwise."""
    row = lifts.get(conn, lift)
    if row is not None:
        return view(conn, row)
    refereed = lifts.refereed(conn, lift)
    if refereed is None:
        raise Reject("UNKNOWN_LIFT", f"no lift {lift} on this node")
    return refereed_view(*refereed)


def refereed_view(record: dict[str, Any], decided: dict[str, Any]) -> dict[str, Any]:
    """A lift this node only referees: its record and decision, no chits here, no payor
    (that user is on another node), and for a void one why, as the decision's date tells."""
    error = None
    if decided["state"] != "good":
        error = ("its deadline passed before the terminus's commit reached this referee"
                 if decided["date"] >= record["deadline"] else
                 "a hop cancelled it (it could not take part) before any commit came")
    return {**_describe(record), "state": decided["state"], "payor": None,
            "decision": _decision(decided), "equivocation": None, "error": error, "chits": []}


def listed(conn: sqlite3.Connection, cuid: str | None, limit: int | None) -> list[dict[str, Any]]:
    """The lifts of ``cuid``, or (without) every lift this node takes part in or referees,
    newest first, at most ``limit``."""
    rows = [(row["created"], view(conn, row)) for row in lifts.listing(conn, cuid, limit)]
    if cuid is None:
        rows += [(created, refereed_view(record, decided))
                 for record, decided, created in lifts.refereed_listing(conn, limit)]
        rows.sort(key=lambda pair: pair[0], reverse=True)
    return [shown for _, shown in rows[:limit]]


def view(conn: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
    """A lift this node takes part in (its ``lifts`` row), with its chits here."""
    record, decided = lifts.record_of(row), lifts.decision_of(row)
    other = lifts.contradiction_of(row)
    return {**_describe(record), "state": row["state"], "payor": row["payor"],
            "decision": None if decided is None else _decision(decided),
            "equivocation": None if other is None else _decision(other),
            "error": row["error"], "chits": chits_here(conn, row["lift"])}


def chits_here(conn: sqlite3.Connection, lift: str) -> list[dict[str, Any]]:
    """This node's chits of ``lift``, as ``lift.show`` and the ``lift:<uuid>`` relay view
    show them (named as ``chit.list`` names a chit and its issuer)."""
    return [{"chit": chit["uuid"], "tally": chit["tally"], "cuid": chit["cuid"],
             "state": chit["state"], "units": chit["units"], "by": chit["issuer"]}
            for chit in Ledger.lift_chits(conn, lift)]


def _describe(record: dict[str, Any]) -> dict[str, Any]:
    return {"lift": record["lift"], "kind": record["kind"], "units": record["units"],
            "path": [{"cuid": hop["cuid"], "agent": hop["agent"], "tally": hop.get("tally")}
                     for hop in record["path"]],
            "referee": record["referee"]["agent"], "deadline": record["deadline"],
            "date": record["date"], "memo": record["memo"]}


def _decision(decision: dict[str, Any]) -> dict[str, Any]:
    return {"state": decision["state"], "date": decision["date"],
            "referee": decision["referee"], "sign": b64u(decision["sign"])}
