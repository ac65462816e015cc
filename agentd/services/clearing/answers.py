"""Applying a clearing house's answers to this node's requests (writer thread).

The answer comes to the ``ch`` target as ``processed`` / ``processed_batch`` / ``result`` /
``rejection`` with ``re`` = the request id. Only the clearing house that was asked may answer,
and only once (the request row is deleted as it is answered). What an answer means, and
whether a receipt holds, is ``protocol.evidence``'s decision; this stores the outcome and
wakes the RPC call waiting for it, if any.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from agentd.runtime.context import Reject, Tx
from protocol import clearing as ch
from protocol import evidence as ev
from protocol import receipts as rc
from protocol.codec import unpack
from protocol.envelope import Envelope
from protocol.keys import ChipAddress
from protocol.messages import Send
from store import clearing as store

if TYPE_CHECKING:
    from agentd.runtime.context import Runtime

log = logging.getLogger("agentd.evidence")
RPC_KIND = "ch.log"  # receipts.kind for logs made through the ch.log RPC method
NOT_A_HOUSE = "NOT_CLEARING_HOUSE"  # the error ack of a node without the clearinghouse role


class Answers:
    def __init__(self, runtime: Runtime, address: Callable[[str], ChipAddress],
                 evidence_due: Callable[[], None]) -> None:
        self.runtime = runtime
        self._address = address  # where to send to a clearing house, by agent id
        self._evidence_due = evidence_due  # logs whose process became ready can go

    def on_reply(self, tx: Tx, envelope: Envelope) -> None:
        """Apply the clearing house's answer to one of our requests."""
        if envelope.re is None:
            raise Reject("MALFORMED_MESSAGE", f"ch/{envelope.action} answers nothing: no 're'")
        row = store.sent_request(tx.conn, envelope.re)
        if row is None:
            entries = store.sent_entries(tx.conn, envelope.re)
            if entries:
                self._evidence_answer(tx, envelope, entries)
            else:
                log.debug("ch/%s answers no open request", envelope.action)
            return
        if envelope.from_.agent != row["ch"]:
            raise Reject("NOT_AUTHORIZED", "only the clearing house that was asked may answer")
        obj = envelope.object
        refused = ev.judge(row["action"], envelope.action, obj)
        if refused is not None:
            self._refused(tx, row, refused)
            return
        if row["action"] == "create_process":
            store.delete_request(tx.conn, row["seq"])
            self._process_ready(tx, row["ch"], row["pid"])
            self._resolve(tx, row["id"], {})
        elif row["action"] == "log":
            store.delete_request(tx.conn, row["seq"])
            token = obj.get("receipt")
            self._receipt(tx, row, token, ev.verdict(token, store.jwks(tx.conn, row["ch"]),
                                                     self._expect(row)))
        elif row["action"] == "log_batch" and row["object"] is not None:
            try:
                self._apply_batch(tx, _batch_entries(row), obj, self._fail_entry, rows=False)
            except ev.MalformedAnswer as exc:
                self._refused(tx, row, ev.Refused(ev.MALFORMED, str(exc)))
            else:
                store.delete_request(tx.conn, row["seq"])
        elif row["action"] == "keys":
            self._keys(tx, row, obj)
        else:
            store.delete_request(tx.conn, row["seq"])
            self._resolve(tx, row["id"], obj)

    def on_rejected(self, tx: Tx, envelope: dict, code: str, message: str) -> None:
        """A clearing house (or a node that is none) refused a request with an error ack."""
        message_id = envelope.get("id")
        if not isinstance(message_id, bytes):
            return
        row = store.sent_request(tx.conn, message_id)
        rows = [row] if row is not None else store.sent_entries(tx.conn, message_id)
        if code == NOT_A_HOUSE and rows and rows[0]["kind"] is not None:
            self._not_a_house(tx, rows, f"{code}: {message}")
            return
        for refused in rows:
            self._refused(tx, refused, ev.Refused(code, message))

    def _not_a_house(self, tx: Tx, rows: list[sqlite3.Row], error: str) -> None:
        """Evidence sent to an agent that is no clearing house (a mistyped ``[clearinghouse]
        agent``): not a verdict on the evidence, so it is not recorded as refused. It stays
        unanswered, with why (``receipts.verify`` shows it), until the config names a clearing
        house and the node reloads or restarts: then it moves there (``moves.py``)."""
        for row in rows:
            store.note_error(tx.conn, row["seq"], error)
        log.warning("agent %s is not a clearing house (%s): %d evidence requests wait until "
                    "[clearinghouse] agent in %s names one (then reload)", rows[0]["ch"][:8],
                    error, len(rows), self.runtime.config.path)

    def _refused(self, tx: Tx, row: sqlite3.Row, refused: ev.Refused) -> None:
        code, message = refused.code, refused.message
        if row["action"] == "create_process" and row["kind"] is not None:
            # Usually the partner created it first (BAD_PARAMETERS: exists already). Send the
            # waiting logs anyway: the clearing house judges each, and a refusal is recorded.
            # NOT_AUTHORIZED: another agent holds it, and every log will be refused: say so.
            level = logging.WARNING if code == ch.Reason.NOT_AUTHORIZED.value else logging.INFO
            log.log(level, "clearing house %s: create_process for the evidence of %s %s: %s",
                    row["ch"][:8], row["kind"], row["ref"], self._text(row, refused))
            store.delete_request(tx.conn, row["seq"])
            self._process_ready(tx, row["ch"], row["pid"])
        elif row["kind"] is not None and row["action"] == "log":
            error = self._text(row, refused)
            log.warning("clearing house refused evidence %s %s: %s", row["kind"], row["ref"],
                        error)
            store.refuse_request(tx.conn, row["seq"], error)
            tx.after_commit(self._count_refused)
        elif row["action"] == "log_batch" and row["object"] is not None:
            store.delete_request(tx.conn, row["seq"])
            entries = _batch_entries(row)
            if not any(self.runtime.replies.waiting(entry["id"]) for entry in entries):
                pids = ", ".join(sorted({entry["pid"] for entry in entries}))
                self._late(row, f"ch.log of pid {pids}" if len(entries) == 1 else
                           f"{len(entries)} ch.log entries (pids {pids})", refused)
            for entry in entries:
                self._fail(tx, entry["id"], Reject(code, message))
            return
        else:
            store.delete_request(tx.conn, row["seq"])
            if not self.runtime.replies.waiting(row["id"]):
                self._late(row, f"ch.{row['action']} of pid {row['pid']}", refused)
        self._fail(tx, row["id"], Reject(code, message))

    def _late(self, row: sqlite3.Row, what: str, refused: ev.Refused) -> None:
        """A call's request refused after the call timed out: nobody hears it but the log (it
        went without a trace, after the call was told a late receipt would be stored)."""
        log.warning("clearing house %s refused %s, after the call timed out: %s",
                    row["ch"][:8], what, self._text(row, refused))

    def _text(self, row: sqlite3.Row, refused: ev.Refused) -> str:
        return ev.refusal_text(refused, row["pid"], self.runtime.agent_id)

    def _count_refused(self) -> None:
        self.runtime.counters.evidence_refused += 1

    def _evidence_answer(self, tx: Tx, envelope: Envelope, entries: list[sqlite3.Row]) -> None:
        """The answer to evidence logs sent as one ``log_batch`` (see ``Sender``)."""
        if envelope.from_.agent != entries[0]["ch"]:
            raise Reject("NOT_AUTHORIZED", "only the clearing house that was asked may answer")
        refused = ev.judge("log_batch", envelope.action, envelope.object)
        if refused is None:
            try:
                self._apply_batch(tx, entries, envelope.object, self._refused, rows=True)
                return
            except ev.MalformedAnswer as exc:
                refused = ev.Refused(ev.MALFORMED, str(exc))
        for row in entries:
            self._refused(tx, row, refused)

    def _apply_batch(self, tx: Tx, entries: list[Any], obj: dict[str, Any],
                     refuse: Callable[[Tx, Any, ev.Refused], None], *, rows: bool) -> None:
        """Apply ``processed_batch`` to the ``entries`` it answers, in order: each receipt
        checked and stored (with ``rows``, the entries are ``ch_requests`` rows, each deleted
        as it is answered), each refusal passed to ``refuse``. ``MalformedAnswer`` (nothing
        applied) when the answer cannot be read."""
        signed, results = ev.batch_results(obj, len(entries))
        accepted = [(entry, part) for entry, part in zip(entries, results, strict=True)
                    if isinstance(part, str)]
        verdicts = iter(ev.batch_verdicts(signed, [part for _, part in accepted],
                                          store.jwks(tx.conn, entries[0]["ch"]),
                                          [self._expect(entry) for entry, _ in accepted]))
        for entry, result in zip(entries, results, strict=True):
            if isinstance(result, ev.Refused):
                refuse(tx, entry, result)
                continue
            if rows:
                store.delete_request(tx.conn, entry["seq"])
            self._receipt(tx, entry, f"{signed}~{result}", next(verdicts))

    def _fail_entry(self, tx: Tx, entry: Mapping[str, Any], refused: ev.Refused) -> None:
        self._fail(tx, entry["id"], Reject(refused.code, refused.message))

    def _process_ready(self, tx: Tx, house: str, pid: str) -> None:
        """The process exists now (or never will through us): the logs waiting for it go."""
        store.set_client_process(tx.conn, house, pid, "ready")
        tx.after_commit(self._evidence_due)

    def _receipt(self, tx: Tx, row: Mapping[str, Any], token: object,
                 verdict: ev.Verdict) -> None:
        """Store the receipt that answers log request ``row`` (deleted already) with its
        ``verdict``; an unchecked one asks the clearing house for its keys first."""
        if not isinstance(token, str):
            self._fail(tx, row["id"], Reject(ev.MALFORMED, "processed without a receipt"))
            return
        status, problem, checked = ev.receipt_status(verdict, refresh=True)
        claims = checked or rc.receipt_claims_unverified(token)
        seq, document_id = claims.get("seq"), claims.get("document_id")
        store.add_receipt(
            tx.conn, request=row["id"], ch=row["ch"], pid=row["pid"],
            seq=seq if isinstance(seq, int) else None,
            document_id=document_id if isinstance(document_id, str) else None,
            token=token, kind=row["kind"] or RPC_KIND, ref=row["ref"],
            payload_sha256=row["payload_sha256"], status=status, problem=problem,
            now_ms=tx.now_ms,
        )  # fmt: skip
        if status == "unchecked":
            if row["ch"] not in store.keys_asked(tx.conn):
                message_id = tx.send(Send(self._address(row["ch"]), ch.TARGET, "keys", {}))
                store.add_request(
                    tx.conn, message_id=message_id, ch=row["ch"], action="keys", pid=None,
                    kind=None, ref=None, payload_sha256=None, state="sent", now_ms=tx.now_ms,
                )  # fmt: skip
            return
        self._settle_log(tx, row["id"], token, checked, problem)

    def _keys(self, tx: Tx, row: sqlite3.Row, obj: dict) -> None:
        """A fresh JWKS: keep every key ever seen, then check the receipts that waited."""
        store.delete_request(tx.conn, row["seq"])
        self._resolve(tx, row["id"], obj)
        jwks = ev.merge_jwks(store.jwks(tx.conn, row["ch"]), obj.get("keys"))
        if jwks is None:
            log.warning("clearing house %s sent a JWKS without keys", row["ch"][:8])
            return
        store.save_jwks(tx.conn, row["ch"], jwks, tx.now_ms)
        for receipt in store.unchecked_receipts(tx.conn, row["ch"]):
            verdict = ev.verdict(receipt["token"], jwks, self._expect(receipt, house=row["ch"]))
            status, problem, claims = ev.receipt_status(verdict, refresh=False)
            store.set_receipt_status(tx.conn, receipt["request"], status, problem)
            self._settle_log(tx, receipt["request"], receipt["token"], claims, problem)

    def _expect(self, row: Mapping[str, Any], house: str | None = None) -> dict[str, Any]:
        """What a receipt for this log request must say."""
        return ev.expected_claims(house or row["ch"], row["pid"], self.runtime.agent_id,
                                  row["payload_sha256"])

    def _settle_log(self, tx: Tx, request: bytes, token: str, claims: dict | None,
                    problem: str | None) -> None:
        answer = ev.receipt_answer(token, claims, problem)
        if isinstance(answer, ev.Refused):
            self._fail(tx, request, Reject(answer.code, answer.message))
        else:
            self._resolve(tx, request, answer)

    def _resolve(self, tx: Tx, request: bytes, value: Any) -> None:
        self.runtime.replies.settle(tx, request, value)

    def _fail(self, tx: Tx, request: bytes | None, error: Reject) -> None:
        self.runtime.replies.settle(tx, request, error=error)


def _batch_entries(row: sqlite3.Row) -> list[dict[str, Any]]:
    """The entries of a ``log_batch`` request as rows for ``_receipt``."""
    return [{"id": ev.entry_key(row["id"], index), "ch": row["ch"], "pid": pid, "kind": None,
             "ref": None, "payload_sha256": sha}
            for index, (pid, sha) in enumerate(unpack(row["object"]))]
