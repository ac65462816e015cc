"""The ``ch`` target: the clearing-house role (IDS Clearing House semantics, DESIGN §6).

A node with ``roles = ["clearinghouse"]`` serves ``create_process``, ``log``, ``log_batch``,
``query``, ``get`` and ``keys``; the rules are ``protocol.clearing``'s, this glues them to
the store. Every request is handled on the writer thread in the transaction that records it in the
inbox, and answered with a reply message (``re`` = the request id) queued in that same
transaction: ``processed``, ``result``, or ``rejection{code, message}`` for a request the
clearing house refuses. A refusal is a reply, not an error ack — the request was delivered
and processed — and a savepoint around each request guarantees that a refused one commits
nothing but its inbox row and that reply. In a ``log_batch`` each entry is checked in full
before anything of it is written, so a refused entry commits nothing and the others still get
their receipts — all signed at once
(one JWS over the Merkle root of the batch, see ``protocol.receipts``).

Appends to one process are serialised because every job runs on the single writer thread,
one after another; the ``(pid, seq)`` primary key makes a fork impossible even so. Different
processes need no lock at all. The receipt-signing key is the node's agent key (issuer = its
agent id); every key that ever signed is kept in ``ch_keys``, so the JWKS still lists a
retired key after the agent key changes and old receipts keep verifying.

The target is registered on every node: the replies to a node's own requests arrive here
too and go to :class:`agentd.services.clearing.client.Evidence`. A node without the role refuses
requests with the error ack ``NOT_CLEARING_HOUSE``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from agentd.runtime.context import Reject, Runtime, Service, Tx
from agentd.runtime.limits import MESSAGE_COST
from agentd.services.clearing.answers import NOT_A_HOUSE
from protocol import clearing as ch
from protocol import evidence as ev
from protocol import receipts as rc
from protocol.clearing_chain import next_entry
from protocol.envelope import Envelope
from protocol.messages import Send
from store import clearing as store
from store.db import savepoint

SCANNED_COST = 64  # bytes of write allowance a query pays per entry its dates make us walk

if TYPE_CHECKING:
    from agentd.services.clearing.client import Evidence

_Process = tuple[list[str] | None, ch.Entry | None]  # owners and last entry of a process
REQUESTS = frozenset({"create_process", "log", "log_batch", "query", "get", "keys"})
REPLIES = frozenset({"processed", "processed_batch", "result", "rejection"})
ROLE = "clearinghouse"
# Room for the envelope around a query result, so that a page fits in one frame.
REPLY_OVERHEAD = 4096


class ClearingService(Service):
    target = ch.TARGET
    actions = REQUESTS | REPLIES

    def __init__(self, runtime: Runtime, evidence: Evidence) -> None:
        super().__init__(runtime)
        self.evidence = evidence  # the client side: replies to our own requests go there
        self.serving = ROLE in runtime.config.roles
        # A quarter of a frame: any entry, with its header, then fits in a ``get`` reply.
        self.max_payload = runtime.config.max_frame // 4
        self.max_result = runtime.config.max_frame - REPLY_OVERHEAD
        runtime.register_target(self)
        self._keyring: rc.Keyring | None = None  # loaded by the first request (writer thread)
        if self.serving:
            evidence.own_house = self.log_own

    def handle(self, tx: Tx, envelope: Envelope) -> None:
        if envelope.action in REPLIES:
            self.evidence.on_reply(tx, envelope)
            return
        if envelope.action not in REQUESTS:
            raise Reject("UNKNOWN_ACTION", f"ch has no action {envelope.action!r}")
        if not self.serving:
            raise Reject(NOT_A_HOUSE, f"node {self.runtime.agent_id} is no clearing house: its "
                         "config has no roles = [\"clearinghouse\"] (check the [clearinghouse] "
                         "agent that named it)")
        keyring = self._keys(tx)
        try:
            with savepoint(tx.conn):
                action, obj = self._serve(tx, envelope, keyring)
        except ch.Rejection as exc:
            action, obj = exc.reply()
        tx.send(Send(envelope.from_, ch.TARGET, action, obj), re=envelope.id)

    def log_own(self, tx: Tx, obj: dict[str, Any], owners: list[str], kind: str,
                ref: str) -> bool:
        """Evidence of this node's own (a referee's lift decisions, above all), appended to
        its own log in the transaction that made it, its receipt stored at once: what sending
        it to ourselves would come to, without the create_process, log and their answers
        through the outbox and the inbox (four commits, and the decisions waited behind them).
        False, with nothing written, when the process is not ours to append to: the caller
        then sends the log as a request, whose refusal is recorded like any other."""
        conn, me, pid = tx.conn, self.runtime.agent_id, obj["pid"]
        keyring = self._keys(tx)
        known: dict[str, _Process] = {}  # a process made here: _append need not read it back
        try:
            with savepoint(conn, "own"):
                if store.owners(conn, pid) is None:
                    known[pid] = (sorted({*owners, me}), None)
                    store.create_process(conn, pid, known[pid][0], tx.now_ms)
                entry = self._append(tx, me, obj, known)
        except ch.Rejection:
            return False
        token = keyring.receipts([entry])[0]
        store.add_receipt(
            conn, request=os.urandom(16), ch=me, pid=entry["pid"], seq=entry["seq"],
            document_id=entry["entry_hash"], token=token, kind=kind, ref=ref,
            payload_sha256=entry["payload_sha256"], status="valid", problem=None,
            now_ms=tx.now_ms,
        )  # fmt: skip
        stored = store.jwks(conn, me)
        if stored is None or keyring.kid not in {key.get("kid") for key in stored["keys"]}:
            store.save_jwks(conn, me, ev.merge_jwks(stored, keyring.jwks()["keys"]), tx.now_ms)
        return True

    def on_rejected(self, tx: Tx, envelope: dict, code: str, message: str) -> None:
        self.evidence.on_rejected(tx, envelope, code, message)

    def _keys(self, tx: Tx) -> rc.Keyring:
        if self._keyring is None:
            retired = store.signing_keys(tx.conn, self.runtime.key.public, tx.now_ms)
            self._keyring = rc.Keyring(self.runtime.agent_id, self.runtime.key, tuple(retired))
        return self._keyring

    def _serve(self, tx: Tx, envelope: Envelope, keyring: rc.Keyring) -> ch.Reply:
        conn, caller, obj = tx.conn, envelope.from_.agent, envelope.object
        action = envelope.action
        if action == "log":
            return ch.processed(keyring.receipts([self._append(tx, caller, obj, {})])[0])
        if action == "log_batch":
            outcomes: list[ch.Entry | ch.Reply] = []
            known: dict[str, _Process] = {}
            for request in ch.parse_log_batch(obj):
                try:
                    outcomes.append(self._append(tx, caller, request, known))
                except ch.Rejection as exc:
                    outcomes.append(exc.reply())
            # each entry past the first writes what a lone log does: a stranger pays for it
            # as for that many logs (256 entries to new pids were 11.7 times their charge)
            appended = sum(isinstance(outcome, dict) for outcome in outcomes)
            tx.charge(MESSAGE_COST * max(appended - 1, 0))
            return ch.processed_batch(outcomes, keyring)
        if action == "create_process":
            create = ch.parse_create_process(obj)
            owner_ids = ch.decide_create(create, caller, store.owners(conn, create["pid"]))
            store.create_process(conn, create["pid"], owner_ids, tx.now_ms)
            return ch.processed()
        if action == "query":
            query = ch.parse_query(obj)
            ch.authorize("query", query["pid"], caller, store.owners(conn, query["pid"]))
            page = store.page(conn, query)
            ch.check_page_bytes(query, store.page_bytes(conn, page), self.max_result)
            entries, total = store.query(conn, page), page.total
            # entries walked for its dates: a stranger's allowance pays (100,000 were 0.3 s)
            tx.charge(SCANNED_COST * page.scanned)
            return ch.query_result(query, entries, total, max_bytes=self.max_result)
        if action == "get":
            get = ch.parse_get(obj)
            ch.authorize("get", get["pid"], caller, store.owners(conn, get["pid"]))
            return ch.get_result(get, store.get_entry(conn, get["pid"], get["id"]),
                                 max_bytes=self.max_result)
        ch.parse_keys(obj)
        return "result", keyring.jwks()

    def _append(self, tx: Tx, caller: str, obj: object, known: dict[str, _Process]) -> ch.Entry:
        """Append one ``log`` object to its process's chain; the new entry. ``known`` holds
        the owners and last entry of the processes appended to earlier in this transaction,
        so a batch reads each process once. Every check comes before the first write, so a
        ``Rejection`` leaves nothing behind (a batch needs no savepoint per entry)."""
        conn = tx.conn
        request = ch.parse_log(obj, max_payload=self.max_payload)
        pid = request["pid"]
        owners, last = known.get(pid) or (store.owners(conn, pid), None)
        new_owners = ch.authorize("log", pid, caller, owners)
        if new_owners:
            store.create_process(conn, pid, new_owners, tx.now_ms)
            owners = sorted(new_owners)
        elif pid not in known:
            last = store.last_entry(conn, pid)
        entry = next_entry(last, request, client_id=caller, now_ms=tx.now_ms)
        store.append(conn, entry)
        known[pid] = (owners, entry)
        return entry
