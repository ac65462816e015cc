"""Every node as a clearing-house client: the ``ch.*`` and ``receipts.*`` RPC methods, and
``Evidence.log``, which other services (handed the Evidence) call to log what they agreed.

Requests go to the configured clearing house (``[clearinghouse]``; a clearing-house node
without one uses itself) through the outbox like any message, and each is recorded in
``ch_requests`` in the same transaction. The answer comes back to the ``ch`` target as
``processed`` / ``result`` / ``rejection`` with ``re`` = the request id and is applied here,
on the writer thread: only the clearing house that was asked may answer, and only once.

Receipts are verified on arrival against the clearing house's JWKS, stored in ``ch_jwks``.
The first receipt from a clearing house, or one signed by a key the stored JWKS lacks, sends a
``keys`` request first; the receipt waits as ``unchecked`` and is checked when the JWKS comes.
So ``receipts.verify`` works offline — the clearing house may be down — and a receipt also has
to match what this node asked to log (process, payload hash, itself as client).

Concurrent ``ch.log`` and ``ch.log_many`` calls are coalesced by :meth:`Evidence.run`: the
entries queued while the previous batch was being committed go as one ``log_batch`` (up to
``ch.MAX_BATCH`` entries, one ``ch_requests`` row, one message; an entry alone goes as a plain
``log``). Entry ``i`` of a batch is known by the key ``message id + i`` (2 bytes, big-endian)
in ``receipts.request`` and to the waiting caller, which gets its own receipt or refusal.

Evidence (``Evidence.log``) is batched the same way, durably: each log is a ``waiting``
row of ``ch_requests``, committed with the caller's state change, and
``Evidence._send_evidence`` sends the rows whose process is ready — all that gathered
meanwhile as one ``log_batch``, each row then ``sent`` under the key ``message id + i`` — so
the clearing house signs, and this node verifies, once per batch rather than once per chit.
Rows left waiting by a stopped node go out when it starts again.

The RPC methods wait for the answer (``REQUEST_TIMEOUT``); a refusal becomes RPC error -32010
whose reason is the IDS code (``NOT_AUTHORIZED``, ``NOT_FOUND``, ``BAD_PARAMETERS``, ...). A
request that times out stays in the outbox and is answered later: a late receipt is still
stored. Binary values in RPC results (payloads, header fields) are base64url text.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from agentd.rpc import TIMEOUT, RpcError, invalid_params, jsonable
from agentd.runtime.context import Reject, Tx
from protocol import clearing as ch
from protocol import receipts as rc
from protocol.codec import CodecError, pack, unpack
from protocol.envelope import Envelope
from protocol.keys import ChipAddress, parse_hostport
from protocol.messages import Send
from store import clearing as store

if TYPE_CHECKING:
    from agentd.runtime.context import Runtime

log = logging.getLogger("agentd.evidence")

REQUEST_TIMEOUT = 10.0
# Room for the envelope around a request: a larger one could never be delivered.
ENVELOPE_OVERHEAD = 4096
MAX_RPC_BATCH = 1000  # entries in one ch.log_many call
_LOG_REQUIRED = frozenset({"pid", "payload"})  # ch.log's params, for ch.log_many entries
_LOG_PARAMS = frozenset({"pid", "payload", "mode", "header", "payload_type"})
QUEUE_LIMIT = 4 * ch.MAX_BATCH  # queued entries beyond which ch.log callers wait
EVIDENCE_RETRY = 1.0  # s before evidence is sent again after a failed write
RPC_KIND = "ch.log"  # receipts.kind for logs made through the ch.log RPC method
CHAIN_PAGE = ch.MAX_PAGE_SIZE
# A receipt's verified claims, why it failed, or None while no JWKS is stored to check it
Verdict = dict[str, Any] | rc.ReceiptError | None
BATCH_ITEM_OVERHEAD = 16  # msgpack bytes around each entry of a log_batch, generously


class _Pending:
    """A ``ch.log`` entry waiting for ``Evidence.run`` to send it."""

    __slots__ = ("abandoned", "error", "house", "key", "obj", "sent", "size")

    def __init__(self, house: ChipAddress, obj: dict[str, Any], size: int) -> None:
        self.house, self.obj, self.size = house, obj, size
        # set once committed to the outbox (or failed: ``error``); only a call's last entry
        # has one, as entries are sent in order
        self.sent: trio.Event | None = None
        self.key: bytes | None = None  # the receipt/waiter key, once sent
        self.error: Exception | None = None
        self.abandoned = False  # the caller went away: nobody collects the answer


class Evidence:
    """Client side of the clearing house; services that log evidence are handed it."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._warned = False
        # entries for ``run`` to send, in call order; callers wait while it holds
        # QUEUE_LIMIT (backpressure), ``run`` while it is empty
        self._queue: deque[_Pending] = deque()
        self._queue_space = trio.lowlevel.ParkingLot()
        self._queue_filled = trio.lowlevel.ParkingLot()
        # evidence logs wait in ch_requests; ``_send_evidence`` sends them when told (and at
        # start, for those a previous run left)
        self._evidence_waiting = True
        self._evidence_told = trio.lowlevel.ParkingLot()
        for name, method in (
            ("ch.create_process", self.rpc_create_process),
            ("ch.log", self.rpc_log),
            ("ch.log_many", self.rpc_log_many),
            ("ch.query", self.rpc_query),
            ("ch.get", self.rpc_get),
            ("receipts.list", self.rpc_receipts_list),
            ("receipts.verify", self.rpc_receipts_verify),
        ):
            runtime.register_method(name, method)

    # -- where requests go ----------------------------------------------------------------

    def clearing_house(self) -> ChipAddress | None:
        """The configured clearing house; a clearing-house node without one uses itself."""
        config = self.runtime.config
        if config.clearinghouse is not None:
            host, port = parse_hostport(config.clearinghouse.address)
            return ChipAddress(agent=config.clearinghouse.agent, host=host, port=port)
        if "clearinghouse" in config.roles:
            return self.runtime.own_address()
        return None

    def _address(self, agent: str) -> ChipAddress:
        configured = self.clearing_house()
        if configured is not None and configured.agent == agent:
            return configured
        return ChipAddress(agent=agent)  # the pump looks its address up

    # -- evidence from services (writer thread) ------------------------------------------

    def log(
        self,
        tx: Tx,
        pid: str,
        owners: Iterable[str],
        kind: str,
        payload: object,
        *,
        ref: str | None = None,
        header: Mapping[str, Any] | None = None,
        payload_type: str | None = None,
        mode: str = "full",
    ) -> None:
        """Log ``payload`` as evidence under ``pid`` at this node's clearing house, inside ``tx``.

        One line for a service, e.g. when a tally opens (and likewise ``"tally.close"``,
        ``"chit.good"``/``"chit.void"`` with ``ref=chit_uuid``)::

            evidence.log(tx, tally_uuid, [stock_agent, foil_agent], "tally.open", signed_tally)

        ``owners`` are the agents that may read and write the process (this node is always one);
        the first call for a pid also asks the clearing house to create it, and the logs wait in
        ``ch_requests`` until that is answered, so no log can create the process first with this
        node as its sole owner. The header logged is ``{kind, ref, **header}`` (``ref`` defaults
        to ``pid``); ``mode`` is ``full``, ``header`` (the payload's hash only) or ``hash``. A
        payload too large for the clearing house is logged by hash (mode ``header``).

        Nothing here waits: the request commits with the caller's state change, goes out right
        after in a batch with the other evidence waiting, and the outbox delivers it whenever the
        clearing house is reachable; the receipt is stored when it comes (``receipts`` with
        ``kind`` and ``ref``). Without a configured clearing house this does nothing (and logs
        that once). Raises ``ValueError`` for a bad pid, owner or payload:
        those are programming errors of the caller.
        """
        owner_ids = sorted(set(owners))
        try:
            ch.parse_create_process({"pid": pid, "owners": owner_ids})
        except ch.Rejection as exc:
            raise ValueError(f"evidence: {exc}") from exc
        house = self.clearing_house()
        if house is None:
            if not self._warned:
                self._warned = True
                log.info("no [clearinghouse] configured: evidence is not logged")
            return
        ref = pid if ref is None else ref
        full_header = {} if mode == "hash" else {"kind": kind, "ref": ref, **(header or {})}
        obj = ch.log_object(pid, payload, mode=mode, header=full_header,
                            payload_type=payload_type)
        if len(obj.get("payload") or b"") > self.runtime.config.max_frame // 4:
            obj.pop("payload")
            log.info("evidence %s %s: payload too large, logged by its hash", kind, ref)
        conn = tx.conn
        state = store.client_process(conn, house.agent, pid)
        if state is None:
            create_id = tx.send(Send(house, ch.TARGET, "create_process",
                                     {"pid": pid, "owners": owner_ids}))
            store.add_request(
                conn, message_id=create_id, ch=house.agent, action="create_process", pid=pid,
                kind=kind, ref=ref, payload_sha256=None, state="sent", now_ms=tx.now_ms,
            )  # fmt: skip
            store.set_client_process(conn, house.agent, pid, "creating")
            state = "creating"
        store.add_request(
            conn, message_id=None, ch=house.agent, action="log", pid=pid, kind=kind, ref=ref,
            payload_sha256=obj["payload_sha256"], state="waiting", now_ms=tx.now_ms,
            obj=pack(obj),
        )  # fmt: skip
        if state == "ready":
            tx.after_commit(self._evidence_due)

    # -- answers (writer thread) ----------------------------------------------------------

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
        obj, action = envelope.object, envelope.action
        if action == "rejection":
            self._refused(tx, row, *_refusal(obj, "rejection"))
            return
        expected = {"create_process": "processed", "log": "processed",
                    "log_batch": "processed_batch"}.get(row["action"], "result")
        if action != expected:
            self._refused(tx, row, "MALFORMED_MESSAGE",
                          f"the clearing house answered {row['action']} with {action}")
            return
        if row["action"] == "create_process":
            store.delete_request(tx.conn, row["seq"])
            self._process_ready(tx, row["ch"], row["pid"])
            self._resolve(tx, row["id"], {})
        elif row["action"] == "log":
            store.delete_request(tx.conn, row["seq"])
            token = obj.get("receipt")
            self._receipt(tx, row, token,
                          self._verify(token, store.jwks(tx.conn, row["ch"]), self._expect(row)))
        elif row["action"] == "log_batch" and row["object"] is not None:
            problem = self._apply_batch(tx, _batch_entries(row), obj, self._fail_entry,
                                        rows=False)
            if problem is None:
                store.delete_request(tx.conn, row["seq"])
            else:
                self._refused(tx, row, "MALFORMED_MESSAGE", problem)
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
        for refused in [row] if row is not None else store.sent_entries(tx.conn, message_id):
            self._refused(tx, refused, code, message)

    def _refused(self, tx: Tx, row: sqlite3.Row, code: str, message: str) -> None:
        if row["action"] == "create_process" and row["kind"] is not None:
            # Usually the partner created it first (BAD_PARAMETERS: exists already). Send the
            # waiting logs anyway: the clearing house judges each, and a refusal is recorded.
            log.info("clearing house: create_process %s: %s: %s", row["pid"], code, message)
            store.delete_request(tx.conn, row["seq"])
            self._process_ready(tx, row["ch"], row["pid"])
        elif row["kind"] is not None and row["action"] == "log":
            log.warning("clearing house refused evidence %s %s: %s: %s", row["kind"],
                        row["ref"], code, message)
            store.refuse_request(tx.conn, row["seq"], f"{code}: {message}")
        elif row["action"] == "log_batch" and row["object"] is not None:
            store.delete_request(tx.conn, row["seq"])
            for entry in _batch_entries(row):
                self._fail(tx, entry["id"], Reject(code, message))
            return
        else:
            store.delete_request(tx.conn, row["seq"])
        self._fail(tx, row["id"], Reject(code, message))

    def _evidence_answer(self, tx: Tx, envelope: Envelope, entries: list[sqlite3.Row]) -> None:
        """The answer to evidence logs sent as one ``log_batch`` (see ``_send_evidence``)."""
        if envelope.from_.agent != entries[0]["ch"]:
            raise Reject("NOT_AUTHORIZED", "only the clearing house that was asked may answer")
        obj, action = envelope.object, envelope.action
        if action == "processed_batch":
            problem = self._apply_batch(tx, entries, obj, self._refused, rows=True)
            if problem is None:
                return
            code, message = "MALFORMED_MESSAGE", problem
        elif action == "rejection":
            code, message = _refusal(obj, "rejection")
        else:
            code = "MALFORMED_MESSAGE"
            message = f"the clearing house answered log_batch with {action}"
        for row in entries:
            self._refused(tx, row, code, message)

    def _apply_batch(self, tx: Tx, entries: list[Any], obj: dict[str, Any],
                     refuse: Callable[[Tx, Any, str, str], None], *, rows: bool) -> str | None:
        """Apply ``processed_batch`` to the ``entries`` it answers, in order: each receipt
        checked and stored (with ``rows``, the entries are ``ch_requests`` rows, each deleted
        as it is answered), each refusal passed to ``refuse``. Returns what is malformed
        about it (then nothing was applied), else None."""
        results = obj.get("results")
        if (not isinstance(results, list) or len(results) != len(entries)
                or not all(isinstance(result, dict) for result in results)):
            return f"processed_batch does not hold {len(entries)} result maps"
        signed = obj.get("signed")
        accepted = [(entry, result["entry"]) for entry, result in zip(entries, results,
                                                                       strict=True)
                    if "entry" in result]
        if accepted and (not isinstance(signed, str)
                         or not all(isinstance(part, str) for _, part in accepted)):
            return "processed_batch has receipts but no signed batch or entry text"
        jwks = store.jwks(tx.conn, entries[0]["ch"])
        verdicts = iter(
            [None] * len(accepted) if jwks is None or not accepted else rc.verify_batch(
                signed, [part for _, part in accepted], jwks,
                [self._expect(entry) for entry, _ in accepted])
        )  # fmt: skip
        for entry, result in zip(entries, results, strict=True):
            if "entry" in result:
                if rows:
                    store.delete_request(tx.conn, entry["seq"])
                self._receipt(tx, entry, f"{signed}~{result['entry']}", next(verdicts))
                continue
            refuse(tx, entry, *_refusal(result, "result"))
        return None

    def _fail_entry(self, tx: Tx, entry: Mapping[str, Any], code: str, message: str) -> None:
        self._fail(tx, entry["id"], Reject(code, message))

    def _process_ready(self, tx: Tx, house: str, pid: str) -> None:
        """The process exists now (or never will through us): the logs waiting for it go."""
        store.set_client_process(tx.conn, house, pid, "ready")
        tx.after_commit(self._evidence_due)

    def _receipt(self, tx: Tx, row: Mapping[str, Any], token: object, verdict: Verdict) -> None:
        """Store the receipt that answers log request ``row`` (deleted already) with its
        ``verdict`` (see ``_verify``)."""
        if not isinstance(token, str):
            self._fail(tx, row["id"], Reject("MALFORMED_MESSAGE", "processed without a receipt"))
            return
        status, problem, checked = self._status(verdict, refresh=True)
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
            if not store.keys_request_open(tx.conn, row["ch"]):
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
        keys = obj.get("keys")
        if not isinstance(keys, list):
            log.warning("clearing house %s sent a JWKS without keys", row["ch"][:8])
            return
        old = store.jwks(tx.conn, row["ch"]) or {"keys": []}
        merged = {jwk.get("kid"): jwk for jwk in old["keys"]}
        merged.update({jwk.get("kid"): jwk for jwk in keys if isinstance(jwk, dict)})
        jwks = {"keys": list(merged.values())}
        store.save_jwks(tx.conn, row["ch"], jwks, tx.now_ms)
        for receipt in store.unchecked_receipts(tx.conn, row["ch"]):
            verdict = self._verify(receipt["token"], jwks, self._expect(receipt, house=row["ch"]))
            status, problem, claims = self._status(verdict, refresh=False)
            store.set_receipt_status(tx.conn, receipt["request"], status, problem)
            self._settle_log(tx, receipt["request"], receipt["token"], claims, problem)

    def _expect(self, row: Mapping[str, Any], house: str | None = None) -> dict[str, Any]:
        """What a receipt for this log request must say."""
        return {"iss": house or row["ch"], "process_id": row["pid"],
                "client_id": self.runtime.agent_id, "payload_sha256": row["payload_sha256"]}

    @staticmethod
    def _verify(token: object, jwks: dict[str, Any] | None, expect: dict) -> Verdict:
        """A receipt's claims, or why it fails; None while no JWKS is stored to check it."""
        if jwks is None:
            return None
        try:
            return rc.verify_receipt(token, jwks, expect)
        except rc.ReceiptError as exc:
            return exc

    @staticmethod
    def _status(verdict: Verdict, *, refresh: bool) -> tuple[str, str | None, dict | None]:
        """(status, problem, claims): ``unchecked`` when ``refresh`` and no key is known."""
        if isinstance(verdict, rc.ReceiptError):
            if refresh and verdict.fault is rc.ReceiptFault.UNKNOWN_KEY:
                return "unchecked", None, None
            return "invalid", f"{verdict.fault.value}: {verdict}", None
        if verdict is None:  # no JWKS stored yet: it is being fetched
            return "unchecked", None, None
        return "valid", None, verdict

    def _settle_log(
        self, tx: Tx, request: bytes, token: str, claims: dict | None, problem: str | None
    ) -> None:
        if claims is None:
            self._fail(tx, request, Reject("RECEIPT_INVALID", f"the receipt is invalid: {problem}"))
        else:
            self._resolve(tx, request, {"pid": claims["process_id"], "seq": claims["seq"],
                                        "document_id": claims["document_id"], "receipt": token})

    def _resolve(self, tx: Tx, request: bytes, value: Any) -> None:
        self.runtime.replies.settle(tx, request, value)

    def _fail(self, tx: Tx, request: bytes | None, error: Reject) -> None:
        self.runtime.replies.settle(tx, request, error=error)

    # -- requests from RPC ----------------------------------------------------------------

    def _house(self) -> ChipAddress:
        house = self.clearing_house()
        if house is None:
            raise Reject("NO_CLEARING_HOUSE",
                         "no clearing house configured: add [clearinghouse] agent and address")
        return house

    def _size(self, action: str, obj: dict[str, Any]) -> int:
        """The packed size of a request, refused when no frame could carry it."""
        try:
            size = len(pack(obj))
        except CodecError as exc:
            raise invalid_params(str(exc)) from exc
        if size > self._room():
            raise Reject(ch.Reason.BAD_PARAMETERS.value,
                         f"the {action} request is {size} bytes, more than a frame can carry")
        return size

    def _room(self) -> int:
        return self.runtime.config.max_frame - ENVELOPE_OVERHEAD

    def _timeout_message(self, house: str) -> str:
        return (f"no answer from the clearing house {house} within {REQUEST_TIMEOUT:g} s (the"
                " request stays in the outbox and will be retried; a late receipt is still"
                " stored)")

    async def request(self, action: str, obj: dict[str, Any]) -> Any:
        """Send one request to the clearing house and wait for its answer, as sent (no local
        validation: the clearing house is the one judge). Raises ``Reject`` for a refusal."""
        house = self._house()
        self._size(action, obj)
        pid = obj.get("pid")
        sha = obj.get("payload_sha256")
        replies = self.runtime.replies

        def work(tx: Tx) -> bytes:
            message_id = tx.send(Send(house, ch.TARGET, action, obj))
            replies.expect_after(tx, message_id)
            store.add_request(
                tx.conn, message_id=message_id, ch=house.agent, action=action,
                pid=pid if isinstance(pid, str) else None, kind=None, ref=None,
                payload_sha256=sha if isinstance(sha, str) else None, state="sent",
                now_ms=tx.now_ms,
            )  # fmt: skip
            return message_id

        message_id = await self.runtime.transact(work)
        return await replies.result(message_id, REQUEST_TIMEOUT,
                                    self._timeout_message(house.agent))

    async def log_request(self, obj: dict[str, Any]) -> Any:
        """Like ``request("log", obj)``, but coalesced with concurrent calls by ``run``."""
        return (await self.log_requests([obj]))[0]

    async def log_requests(self, objs: list[dict[str, Any]], *, each: bool = False) -> list[Any]:
        """Log ``objs`` through ``run`` (coalesced with every concurrent call) and wait for
        all of their answers: the results in order. A refusal raises, or with ``each`` is
        returned in its entry's place as its ``Reject``."""
        house = self._house()
        items = [_Pending(house, obj, self._size("log", obj)) for obj in objs]
        last_sent = items[-1].sent = trio.Event()
        replies = self.runtime.replies
        try:
            with trio.move_on_after(REQUEST_TIMEOUT) as scope:
                while len(self._queue) >= QUEUE_LIMIT:
                    await self._queue_space.park()
                self._queue.extend(items)
                self._queue_filled.unpark_all()
                await last_sent.wait()
                for item in items:
                    if item.error is not None:
                        raise item.error
                results = await replies.results([item.key for item in items if item.key])
            if scope.cancelled_caught:
                raise RpcError(TIMEOUT, self._timeout_message(house.agent), "TIMEOUT")
            for result in results:
                if isinstance(result, Reject) and not each:
                    raise result
            return results
        finally:
            for item in items:
                item.abandoned = True
                if item.key is not None:
                    replies.discard(item.key)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send what waits for the clearing house: ``ch.log`` calls and evidence logs."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_evidence)
            task_status.started()
            await self._send_calls()

    def _evidence_due(self) -> None:
        """An evidence log committed (or its process became ready): send it soon."""
        self._evidence_waiting = True
        self._evidence_told.unpark_all()

    async def _send_evidence(self) -> None:
        """Send the evidence logs waiting in ``ch_requests`` whose process is ready, all that
        gathered meanwhile (up to ``MAX_BATCH`` and a frame) as one ``log_batch``, each entry's
        row keyed ``message id + index`` (a lone one as ``log``, keyed by its message id)."""
        while True:
            while not self._evidence_waiting:
                await self._evidence_told.park()
            self._evidence_waiting = False
            try:
                while await self._send_evidence_batch():
                    pass
            except Exception:  # a failed write: nothing was sent, so try again shortly
                log.exception("sending evidence to the clearing house failed; retrying")
                await trio.sleep(EVIDENCE_RETRY)
                self._evidence_waiting = True

    async def _send_evidence_batch(self) -> bool:
        """One ``log``/``log_batch`` of waiting evidence; False when none waits."""
        room = self._room()

        def work(tx: Tx) -> bool:
            conn = tx.conn
            rows = store.ready_logs(conn, ch.MAX_BATCH)
            if not rows:
                return False
            house, batch, size = rows[0]["ch"], [], 0
            for row in rows:
                size += len(row["object"]) + BATCH_ITEM_OVERHEAD
                if row["ch"] != house or (batch and size > room):
                    break
                batch.append(row)
            to = self._address(house)
            if len(batch) == 1:
                message_id = tx.send(Send(to, ch.TARGET, "log", unpack(batch[0]["object"])))
                store.mark_sent(conn, batch[0]["seq"], message_id)
                return True
            message_id = tx.send(Send(to, ch.TARGET, "log_batch",
                                      {"entries": [unpack(row["object"]) for row in batch]}))
            for index, row in enumerate(batch):
                store.mark_sent(conn, row["seq"], _entry_key(message_id, index))
            return True

        return await self.runtime.transact(work)

    async def _send_calls(self) -> None:
        """Send the queued ``ch.log`` entries: all that queued meanwhile (up to ``MAX_BATCH``
        and a frame) as one ``log_batch`` to the same clearing house, a lone one as ``log``."""
        queue = self._queue
        while True:
            while not queue:
                await self._queue_filled.park()
            first = queue.popleft()
            batch, size = [first], first.size
            while queue and len(batch) < ch.MAX_BATCH:
                size += queue[0].size + BATCH_ITEM_OVERHEAD
                if queue[0].house != first.house or size > self._room():
                    break
                batch.append(queue.popleft())
            self._queue_space.unpark_all()
            await self._send_batch(batch)
            for item in batch:
                if item.sent is not None:
                    item.sent.set()

    async def _send_batch(self, batch: list[_Pending]) -> None:
        house = batch[0].house

        def work(tx: Tx) -> list[bytes]:
            conn = tx.conn
            if len(batch) == 1:
                obj = batch[0].obj
                message_id = tx.send(Send(house, ch.TARGET, "log", obj))
                store.add_request(
                    conn, message_id=message_id, ch=house.agent, action="log", pid=obj["pid"],
                    kind=None, ref=None, payload_sha256=obj["payload_sha256"], state="sent",
                    now_ms=tx.now_ms,
                )  # fmt: skip
                keys = [message_id]
            else:
                message_id = tx.send(Send(house, ch.TARGET, "log_batch",
                                          {"entries": [item.obj for item in batch]}))
                store.add_request(
                    conn, message_id=message_id, ch=house.agent, action="log_batch", pid=None,
                    kind=None, ref=None, payload_sha256=None, state="sent", now_ms=tx.now_ms,
                    obj=pack([[item.obj["pid"], item.obj["payload_sha256"]] for item in batch]),
                )  # fmt: skip
                keys = [_entry_key(message_id, index) for index in range(len(batch))]
            tx.after_commit(lambda: self._await_answers(batch, keys))
            return keys

        try:
            await self.runtime.transact(work)
        except Exception as exc:  # each caller gets the failure, as request() would raise it
            for item in batch:
                item.error = exc

    def _await_answers(self, batch: list[_Pending], keys: list[bytes]) -> None:
        """Once a batch committed: a waiter for each entry whose caller is still there."""
        for item, key in zip(batch, keys, strict=True):
            if not item.abandoned:
                item.key = key
                self.runtime.replies.expect(key)

    async def rpc_create_process(self, pid: str, owners: list[str] | None = None) -> dict:
        """Create process ``pid`` owned by this node and ``owners`` (agent ids)."""
        if owners is not None and not isinstance(owners, list):
            raise invalid_params("owners must be a list of agent ids")
        await self.request("create_process", {"pid": pid, "owners": owners or []})
        return {"pid": pid, "owners": sorted({self.runtime.agent_id, *(owners or [])})}

    async def rpc_log(self, pid: str, payload: Any, mode: str = "full",
                      header: dict | None = None, payload_type: str | None = None) -> dict:
        """Log ``payload`` (text as UTF-8, other JSON as canonical msgpack) under ``pid``;
        ``mode`` full | header (hash of the payload and the header) | hash (the hash alone)."""
        return await self.log_request(self._log_object(pid, payload, mode, header, payload_type))

    @staticmethod
    def _log_object(pid: object, payload: Any, mode: object = "full", header: object = None,
                    payload_type: object = None) -> dict[str, Any]:
        """The ``log`` request for ``ch.log``'s params; ``invalid_params`` names what is bad."""
        if not isinstance(pid, str):
            raise invalid_params("pid must be text")
        if not isinstance(mode, str):
            raise invalid_params("mode must be full, header or hash")
        if header is not None and not isinstance(header, dict):
            raise invalid_params("header must be an object")
        if payload_type is not None and not isinstance(payload_type, str):
            raise invalid_params("payload_type must be text")
        try:
            return ch.log_object(pid, payload, mode=mode, header=header,
                                 payload_type=payload_type)
        except (ValueError, CodecError) as exc:
            raise invalid_params(str(exc)) from exc

    async def rpc_log_many(self, entries: list) -> list[dict]:
        """Log many entries in one call: ``entries`` is a list of ``{pid, payload, mode?,
        header?, payload_type?}`` (as ``ch.log``); the result has one item per entry, in
        order: its receipt as ``ch.log`` returns it, or ``{error: {code, message}}`` for an
        entry the clearing house refused. An invalid entry refuses the whole call."""
        if not isinstance(entries, list) or not 0 < len(entries) <= MAX_RPC_BATCH:
            raise invalid_params(f"entries must be a list of 1 to {MAX_RPC_BATCH} objects")
        objs = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or not entry.keys() >= _LOG_REQUIRED:
                raise invalid_params(f"entries[{index}] must be an object with pid and payload")
            unknown = entry.keys() - _LOG_PARAMS
            if unknown:
                raise invalid_params(f"entries[{index}] has unknown keys: "
                                     f"{', '.join(sorted(unknown))}")
            try:
                objs.append(self._log_object(**entry))
            except RpcError as exc:
                raise invalid_params(f"entries[{index}]: {exc.message}") from exc
        results = await self.log_requests(objs, each=True)
        return [_error_json(result) if isinstance(result, Reject) else result
                for result in results]

    async def rpc_query(self, pid: str, page: int | None = None, size: int | None = None,
                        sort: str | None = None, date_from: int | str | None = None,
                        date_to: int | str | None = None) -> dict:
        """One page of ``pid``'s entries by seq (newest first unless ``sort=asc``)."""
        params = {"page": page, "size": size, "sort": sort, "date_from": date_from,
                  "date_to": date_to}
        obj = {"pid": pid, **{k: v for k, v in params.items() if v is not None}}
        result = await self.request("query", obj)
        return {**result, "entries": [entry_json(e) for e in result.get("entries", [])]}

    async def rpc_get(self, pid: str, id: str) -> dict:
        """The entry whose document id is ``id``."""
        result = await self.request("get", {"pid": pid, "id": id})
        entries = result.get("entries")
        if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
            raise Reject(ch.Reason.MALFORMED_MESSAGE.value,
                         "the clearing house answered get without exactly one entry")
        return entry_json(entries[0])

    async def rpc_receipts_list(self, pid: str | None = None) -> list[dict]:
        """Every stored receipt (or those of ``pid``), by process and seq."""
        rows = self.runtime.db.reading(lambda conn: store.receipts(conn, pid))
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
        ``failures`` says what failed and why (the CLI then exits 1)."""
        if not isinstance(chain, bool):
            raise invalid_params("chain must be true or false")
        db = self.runtime.db
        rows = db.reading(store.receipts)
        jwks = db.reading(store.all_jwks)
        failures = await trio.to_thread.run_sync(self._verify_rows, rows, jwks)
        for row in db.reading(store.refused_evidence):
            failures.append({"pid": row["pid"], "seq": None, "document_id": None,
                             "kind": row["kind"], "ref": row["ref"], "fault": "refused",
                             "message": f"the clearing house refused this evidence: "
                                        f"{row['error']}"})
        pending = db.reading(store.pending_logs)
        result: dict[str, Any] = {"checked": len(rows), "pending": pending}
        if chain:
            pids = sorted({row["pid"] for row in rows})
            for pid in pids:
                failures.extend(await self._verify_chain(
                    pid, [row for row in rows if row["pid"] == pid], jwks))
            result["chains"] = len(pids)
        return {"ok": not failures, **result, "failures": failures}

    def _verify_rows(self, rows: list[sqlite3.Row], jwks: dict[str, dict]) -> list[dict]:
        failures = []
        for row in rows:
            expect = {**self._expect(row), "seq": row["seq"], "document_id": row["document_id"]}
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
                result = await self.request(
                    "query", {"pid": pid, "page": page, "size": size, "sort": "asc"})
            except Reject as exc:
                if exc.code == ch.Reason.TOO_MANY_RESULTS and size > 1:
                    size //= 2  # pages of big payloads: ask for fewer, from the same offset
                    page = len(entries) // size + 1
                    continue
                return [_chain_failure(pid, f"cannot read the chain: {exc}")]
            except RpcError as exc:
                return [_chain_failure(pid, f"cannot read the chain: {exc.message}")]
            entries.extend(result["entries"])
            if not result["has_more"]:
                break
            page += 1
        try:
            ch.verify_chain(entries)
        except ch.ChainError as exc:
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


def _entry_key(message_id: bytes, index: int) -> bytes:
    """The key of entry ``index`` of a ``log_batch``: its receipt's ``request`` and waiter."""
    return message_id + index.to_bytes(2, "big")


def _batch_entries(row: sqlite3.Row) -> list[dict[str, Any]]:
    """The entries of a ``log_batch`` request as rows for ``_receipt``."""
    return [{"id": _entry_key(row["id"], index), "ch": row["ch"], "pid": pid, "kind": None,
             "ref": None, "payload_sha256": sha}
            for index, (pid, sha) in enumerate(unpack(row["object"]))]


def _refusal(obj: dict[str, Any], what: str) -> tuple[str, str]:
    """The IDS code and message of a clearing house's ``rejection`` (or refused batch entry);
    ``MALFORMED_MESSAGE`` when it holds no text code and message."""
    code, message = obj.get("code"), obj.get("message")
    if not isinstance(code, str) or not isinstance(message, str):
        return "MALFORMED_MESSAGE", f"the {what} is malformed: {obj!r:.200}"
    return code, message


def _error_json(error: Reject) -> dict[str, Any]:
    """A refused entry of ``ch.log_many``: its IDS code and message."""
    return {"error": {"code": error.code, "message": error.message}}


def _failure(row: Mapping[str, Any], fault: str, message: str) -> dict[str, Any]:
    return {"pid": row["pid"], "seq": row["seq"], "document_id": row["document_id"],
            "kind": row["kind"], "ref": row["ref"], "fault": fault, "message": message}


def _chain_failure(pid: str, message: str) -> dict[str, Any]:
    return {"pid": pid, "seq": None, "document_id": None, "kind": None, "ref": None,
            "fault": "chain", "message": message}


def entry_json(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An entry for JSON: ``document_id`` added, binary as base64url, and ``payload_text``
    when the payload is UTF-8 text."""
    out = jsonable(dict(entry))
    out["document_id"] = entry["entry_hash"]
    payload = entry.get("payload")
    if isinstance(payload, bytes) and str(entry.get("payload_type", "")).startswith("text/"):
        with contextlib.suppress(UnicodeDecodeError):
            out["payload_text"] = payload.decode()
    return out


__all__ = ["Evidence", "entry_json"]
