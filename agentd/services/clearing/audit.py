"""Auditing this node's receipts: ``receipts.list`` and ``receipts.verify``.

Receipts are checked offline against the stored JWKS (the clearing house may be down); with
``chain``, each process's chain is also fetched from the clearing house, verified link by link,
and every receipt matched to its entry.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from agentd.rpc import RpcError, invalid_params
from agentd.runtime.context import Reject
from protocol import clearing as ch
from protocol import evidence as ev
from protocol import receipts as rc
from protocol.clearing_chain import ChainError, verify_chain
from store import clearing as store

if TYPE_CHECKING:
    from agentd.runtime.context import Runtime
    from protocol.keys import ChipAddress

CHAIN_PAGE = ch.MAX_PAGE_SIZE
REACH_S = 5.0  # for a channel to the clearing house before reading chains, as lifts wait


class _Unanswered(Exception):
    """The clearing house left a chain's page unanswered for the request timeout."""


class Audit:
    def __init__(self, runtime: Runtime,
                 request: Callable[[str, dict[str, Any]], Awaitable[Any]],
                 house: Callable[[], ChipAddress | None]) -> None:
        self.runtime = runtime
        self._request = request  # one request to the clearing house, waiting for its answer
        self._house = house  # the configured clearing house
        runtime.register_method("receipts.list", self.rpc_receipts_list)
        runtime.register_method("receipts.verify", self.rpc_receipts_verify)

    async def rpc_receipts_list(self, pid: str | None = None) -> list[dict]:
        """Every stored receipt (or those of ``pid``, whole or as its table shows it:
        ``AGENT…/TALLY``, the agent id's first 8 characters or more; without the ``…`` too,
        when no pid is that text whole), by process and seq."""
        head, tail = _cut_pid(pid)

        def read(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            rows = store.receipts(conn, head, tail=tail)
            if rows or pid is None or tail is not None:
                return rows
            start, slash, rest = pid.partition("/")  # AGENT/TALLY with the agent cut short
            start = start.removesuffix("…").removesuffix("...")
            if slash and len(start) >= 8:
                return store.receipts(conn, start, tail=slash + rest)
            if slash and start and store.receipts(conn, start, tail=slash + rest):
                raise invalid_params(f"pid {pid!r} cuts the agent id to {len(start)} "
                                     "characters: give 8 or more (as -H shows them), or the "
                                     "pid whole")
            return rows

        rows = self.runtime.db.reading(read)
        return [
            {"pid": row["pid"], "seq": row["seq"], "document_id": row["document_id"],
             "kind": row["kind"], "ref": row["ref"], "clearing_house": row["ch"],
             "status": row["status"], "problem": row["problem"], "received": row["received"],
             "receipt": row["token"]}
            for row in rows
        ]

    async def rpc_receipts_verify(self, chain: bool = False) -> dict:
        """Check every stored receipt offline against the stored JWKS; with ``chain``, also
        fetch each process's chain from the clearing house, verify it link by link and match
        every receipt to its entry. Never raises for a failure: ``ok`` is false and
        ``failures`` says what failed and why (the CLI then exits 1). What is pending is not a
        failure; ``pending_detail`` says whom it waits for, since when, and why that may be
        in vain (not the configured clearing house, none configured, one without the role, or
        one that cannot be reached: why)."""
        db = self.runtime.db
        # one snapshot: an answer committed between two reads would be neither pending nor
        # checked (or a receipt unchecked, its keys question already closed)
        unanswered, rows, jwks, asked, refused = db.reading(store.audit_snapshot)
        # a receipt kept unchecked while its clearing house's JWKS is on its way (a first
        # receipt, or one signed by a new key) is pending, not failed
        rows, waiting = _split(rows, lambda row: row["status"] == "unchecked"
                               and row["ch"] in asked)
        failures = await trio.to_thread.run_sync(self._verify_rows, rows, jwks)
        for row in refused:
            failures.append({"pid": row["pid"], "seq": None, "document_id": None,
                             "kind": row["kind"], "ref": row["ref"], "fault": "refused",
                             "message": f"the clearing house refused this evidence: "
                                        f"{row['error']}"})
        pending = sum(row["logs"] for row in unanswered) + len(waiting)
        result: dict[str, Any] = {"checked": len(rows), "pending": pending,
                                  "pending_detail": self._pending_detail(unanswered, waiting)}
        if chain:
            pids = sorted({row["pid"] for row in rows})
            failures.extend(await self._verify_chains(pids, rows, jwks))
            result["chains"] = len(pids)
        return {"ok": not failures, **result, "failures": failures}

    async def _verify_chains(self, pids: list[str], rows: list[sqlite3.Row],
                             jwks: dict[str, dict]) -> list[dict]:
        """Every process's chain checked, one at a time. A clearing house that cannot be
        reached (a dial says why within ``REACH_S``), or leaves one chain unanswered for the
        request timeout, fails every chain not read yet at once: each waited the timeout in
        turn (10 s a process: 40 s for four, hours for a node with a tally a process)."""
        house = self._house()
        reason = None if house is None or not pids else await self.runtime.reach(house.agent,
                                                                                 REACH_S)
        why = None if reason is None else f"the clearing house cannot be reached: {reason}"
        failures: list[dict] = []
        for at, pid in enumerate(pids):
            if why is not None:
                failures += [_chain_failure(left, f"cannot read the chain, not asked: {why}")
                             for left in pids[at:]]
                break
            try:
                failures += await self._verify_chain(
                    pid, [row for row in rows if row["pid"] == pid], jwks)
            except _Unanswered as exc:
                failures.append(_chain_failure(pid, f"cannot read the chain: {exc}"))
                why = f"the clearing house did not answer for process {pid}"
        return failures

    def _pending_detail(self, unanswered: list[sqlite3.Row], waiting: list[sqlite3.Row]
                        ) -> list[dict[str, Any]]:
        """What is pending, by the agent it waits for, oldest first: ``{clearing_house,
        configured, logs, keys, since, problem}`` — ``logs``: evidence and ``ch.log`` calls
        not answered, ``keys``: receipts waiting for its JWKS, ``since``: when the oldest was
        made (ms), ``configured``: whether that agent is this node's clearing house,
        ``problem``: why it may never come (an agent that is not this node's clearing house,
        or is none, or cannot be reached), else None."""
        house = self._house()
        ours = None if house is None else house.agent
        detail: dict[str, dict[str, Any]] = {}
        for row in unanswered:
            detail[row["ch"]] = {"clearing_house": row["ch"], "configured": row["ch"] == ours,
                                 "logs": row["logs"], "keys": 0, "since": row["since"],
                                 "problem": self._problem(row["ch"], ours, row["error"],
                                                          evidence=row["evidence"] > 0)}
        for row in waiting:
            item = detail.setdefault(row["ch"], {
                "clearing_house": row["ch"], "configured": row["ch"] == ours, "logs": 0,
                "keys": 0, "since": row["received"],
                "problem": self._problem(row["ch"], ours, evidence=False)})
            item["keys"] += 1
            item["since"] = min(item["since"], row["received"])
        return sorted(detail.values(), key=lambda item: item["since"])

    def _problem(self, agent: str, ours: str | None, error: str | None = None, *,
                 evidence: bool) -> str | None:
        """Why what waits for ``agent`` may never be answered; None when nothing says so."""
        path = self.runtime.config.path
        if evidence and agent != ours:  # calls and receipts wait for a former house: fine
            if ours is None:
                return (f"agent {agent} is not this node's clearing house: no [clearinghouse] "
                        f"is configured in {path}; this evidence stays pending until one is "
                        "(then reload), and moves there")
            return (f"agent {agent} is not this node's clearing house ({ours}): this evidence "
                    "moves there within seconds")
        if error is not None:
            return (f"agent {agent} answered {error}: it is not a clearing house; set "
                    f"[clearinghouse] agent in {path} to the clearing house's agent id and "
                    "reload, and this evidence moves there")
        why = self.runtime.dial_error(agent)
        return None if why is None else f"cannot reach it: {why}"

    def _verify_rows(self, rows: list[sqlite3.Row], jwks: dict[str, dict]) -> list[dict]:
        failures = []
        for row in rows:
            expect = {**ev.expected_claims(row["ch"], row["pid"], self.runtime.agent_id,
                                           row["payload_sha256"]),
                      "seq": row["seq"], "document_id": row["document_id"]}
            keys = jwks.get(row["ch"])
            if keys is None:
                failures.append(_failure(row, "unknown_key", "no JWKS of its clearing house is "
                                         "stored yet (it was never reachable)"))
                continue
            try:
                rc.verify_receipt(row["token"], keys, expect)
            except rc.ReceiptError as exc:
                failures.append(_failure(row, exc.fault.value, str(exc)))
        return failures

    async def _verify_chain(self, pid: str, receipts: list[sqlite3.Row],
                            jwks: dict[str, dict]) -> list[dict]:
        """Walk ``pid``'s whole chain in ascending pages and match its receipts to it."""
        entries: list[dict] = []
        page, size = 1, CHAIN_PAGE
        while True:
            try:
                result = await self._request(
                    "query", {"pid": pid, "page": page, "size": size, "sort": "asc"})
            except Reject as exc:
                if exc.code == ch.Reason.TOO_MANY_RESULTS and size > 1:
                    size //= 2  # pages of big payloads: ask for fewer, from the same offset
                    page = len(entries) // size + 1
                    continue
                return [_chain_failure(pid, f"cannot read the chain: {exc}")]
            except RpcError as exc:
                if exc.reason == "TIMEOUT":
                    raise _Unanswered(exc.message) from None
                return [_chain_failure(pid, f"cannot read the chain: {exc.message}")]
            entries.extend(result["entries"])
            if not result["has_more"]:
                break
            page += 1
        try:
            verify_chain(entries)
        except ChainError as exc:
            return [_chain_failure(pid, f"the chain is broken at {exc}")]
        by_seq = {entry["seq"]: entry for entry in entries}
        failures = []
        for row in receipts:
            entry = by_seq.get(row["seq"])
            if entry is None:
                failures.append(_failure(row, "not_in_chain", f"seq {row['seq']} is not in the "
                                         f"chain of {len(entries)} entries"))
                continue
            try:
                rc.verify_receipt(row["token"], jwks.get(row["ch"]) or {"keys": []},
                                  rc.entry_claims(entry))
            except rc.ReceiptError as exc:
                failures.append(_failure(row, "chain_mismatch",
                                         f"the receipt does not match the chain entry: {exc}"))
        return failures


def _split(rows: list[sqlite3.Row], waits: Callable[[sqlite3.Row], bool]
           ) -> tuple[list[sqlite3.Row], list[sqlite3.Row]]:
    """``rows`` as (to check, waiting)."""
    return [row for row in rows if not waits(row)], [row for row in rows if waits(row)]


def _failure(row: Mapping[str, Any], fault: str, message: str) -> dict[str, Any]:
    return {"pid": row["pid"], "seq": row["seq"], "document_id": row["document_id"],
            "kind": row["kind"], "ref": row["ref"], "fault": fault, "message": message}


def _chain_failure(pid: str, message: str) -> dict[str, Any]:
    return {"pid": pid, "seq": None, "document_id": None, "kind": None, "ref": None,
            "fault": "chain", "message": message}


def _cut_pid(pid: str | None) -> tuple[str | None, str | None]:
    """``pid`` as -H cuts one, ``AGENT…/REST`` (8 characters, ``…`` or ``...``, then ``/``
    and the rest whole): (its start, its end); any other, (itself, None): a pid is any text
    a client logged under, dots and all."""
    if pid is None:
        return None, None
    cuts = [(pid.find(mark), mark) for mark in ("…", "...") if mark in pid]
    if not cuts:
        return pid, None
    at, mark = min(cuts)
    head, tail = pid[:at], pid[at + len(mark):]
    return (head, tail) if len(head) >= 8 and tail.startswith("/") else (pid, None)
