"""Every node as a clearing-house client: the ``ch.*`` and ``receipts.*`` RPC methods, and
``Evidence.log``, which other services (handed the Evidence) call to log what they agreed.

Requests go to the configured clearing house (``[clearinghouse]``; a clearing-house node
without one uses itself) through the outbox like any message, and each is recorded in
``ch_requests`` in the same transaction. The answer comes back to the ``ch`` target as
``processed`` / ``result`` / ``rejection`` with ``re`` = the request id and is applied on the
writer thread (``answers.py``; what it means is ``protocol.evidence``'s decision): only the
clearing house that was asked may answer, and only once. ``sender.py`` sends, ``audit.py``
serves ``receipts.list`` and ``receipts.verify``.

Receipts are verified on arrival against the clearing house's JWKS, stored in ``ch_jwks``.
The first receipt from a clearing house, or one signed by a key the stored JWKS lacks, sends a
``keys`` request first; the receipt waits as ``unchecked`` and is checked when the JWKS comes.
So ``receipts.verify`` works offline — the clearing house may be down — and a receipt also has
to match what this node asked to log (process, payload hash, itself as client).

Concurrent ``ch.log`` and ``ch.log_many`` calls are coalesced by the ``Sender``: the entries
queued while the previous batch was being committed go as one ``log_batch`` (up to
``ch.MAX_BATCH`` entries, one ``ch_requests`` row, one message; an entry alone goes as a plain
``log``). Entry ``i`` of a batch is known by the key ``message id + i`` (2 bytes, big-endian)
in ``receipts.request`` and to the waiting caller, which gets its own receipt or refusal.

Evidence (``Evidence.log``) is batched the same way, durably: each log is a ``waiting`` row
of ``ch_requests``, committed with the caller's state change, and the ``Sender`` sends the
rows whose process is ready — all that gathered meanwhile as one ``log_batch``, each row
then ``sent`` under the key ``message id + i`` — so the clearing house signs, and this node
verifies, once per batch rather than once per chit.
Rows left waiting by a stopped node go out when it starts again, and evidence whose answer
never came (the clearing house drops an answer after an hour) is sent again (``lost.py``).
Evidence bound to an agent that is no longer the clearing house (a mistyped ``[clearinghouse]
agent``, fixed by a reload or a restart) moves to the one configured (``moves.py``).

The RPC methods check what the caller typed first (owners that are agent ids, times, page
numbers: invalid params, -32602, naming the param and its value); the clearing house judges the
rest (which pids, how many owners, how large a page). They wait for the answer
(``REQUEST_TIMEOUT``); a refusal becomes RPC error -32010
whose reason is the IDS code (``NOT_AUTHORIZED``, ``NOT_FOUND``, ``BAD_PARAMETERS``, ...). A
request that times out stays in the outbox and is answered later: a late receipt is still
stored. Binary values in RPC results (payloads, header fields) are base64url text.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from agentd.errors import did_you_mean
from agentd.rpc import TIMEOUT, RpcError, invalid_params, jsonable
from agentd.runtime.context import Reject, Tx
from agentd.services.clearing.answers import Answers
from agentd.services.clearing.audit import Audit
from agentd.services.clearing.lost import LostAnswers
from agentd.services.clearing.moves import move_evidence
from agentd.services.clearing.params import check_pid, check_query, log_object
from agentd.services.clearing.sender import Pending, Sender
from protocol import clearing as ch
from protocol import evidence as ev
from protocol.codec import CodecError, pack
from protocol.envelope import Envelope
from protocol.keys import ChipAddress, agent_id_problem, parse_hostport
from protocol.messages import Send
from store import clearing as store

if TYPE_CHECKING:
    from agentd.config import ClearingHouseConfig
    from agentd.runtime.context import Runtime

log = logging.getLogger("agentd.evidence")
# ClearingService.log_own: (tx, log object, owners, kind, ref) -> whether it was appended
OwnHouse = Callable[[Tx, dict[str, Any], list[str], str, str], bool]

REQUEST_TIMEOUT = 10.0
# Room for the envelope around a request: a larger one could never be delivered.
ENVELOPE_OVERHEAD = 4096
MAX_RPC_BATCH = 1000  # entries in one ch.log_many call
_LOG_REQUIRED = frozenset({"pid", "payload"})  # ch.log's params, for ch.log_many entries
_LOG_PARAMS = frozenset({"pid", "payload", "mode", "header", "payload_type"})


class Evidence:
    """Client side of the clearing house; services that log evidence are handed it."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._warned = False
        # the configured clearing house, and its address parsed (clearing_house)
        self._configured: tuple[ClearingHouseConfig, ChipAddress] | None = None
        # set by this node's clearing-house role: logs its own evidence without messages
        self.own_house: OwnHouse | None = None
        self.sender = Sender(runtime, self._room, self._address, self._move)
        self.answers = Answers(runtime, self._address, self.sender.evidence_due)
        self.lost = LostAnswers(runtime, self._address, self.sender.evidence_due)
        Audit(runtime, self.request, self.clearing_house)
        for name, method in (
            ("ch.create_process", self.rpc_create_process),
            ("ch.log", self.rpc_log),
            ("ch.log_many", self.rpc_log_many),
            ("ch.query", self.rpc_query),
            ("ch.get", self.rpc_get),
        ):
            runtime.register_method(name, method)

    # -- where requests go ----------------------------------------------------------------

    def clearing_house(self) -> ChipAddress | None:
        """The configured clearing house; a clearing-house node without one uses itself.
        Asked once per evidence entry: the address is parsed once per configuration."""
        config = self.runtime.config
        if config.clearinghouse is not None:
            if self._configured is None or self._configured[0] != config.clearinghouse:
                host, port = parse_hostport(config.clearinghouse.address)
                self._configured = (config.clearinghouse, ChipAddress(
                    agent=config.clearinghouse.agent, host=host, port=port))
            return self._configured[1]
        if "clearinghouse" in config.roles:
            return self.runtime.own_address()
        return None

    def _address(self, agent: str) -> ChipAddress:
        configured = self.clearing_house()
        if configured is not None and configured.agent == agent:
            return configured
        return ChipAddress(agent=agent)  # the pump looks its address up

    def house_changed(self) -> None:
        """A reload changed ``[clearinghouse]``: evidence not answered yet that is bound to
        another agent moves to the clearing house now configured (``moves.py``)."""
        self.sender.house_changed()

    def _own(self, house: ChipAddress) -> OwnHouse | None:
        """How to append to ``house``'s log directly: when it is this clearing house."""
        return self.own_house if house.agent == self.runtime.agent_id else None

    def _move(self, tx: Tx) -> None:
        house = self.clearing_house()
        own = None if house is None else self._own(house)
        if move_evidence(tx, house, str(self.runtime.config.path), own):
            tx.after_commit(self.lost.wake)  # the processes asked of it are owed an answer

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

            evidence.log(tx, f"{our_agent}/{tally_uuid}", [stock_agent, foil_agent],
                         "tally.open", signed_tally, ref=tally_uuid)

        ``owners`` are the agents that may read and write the process (this node is always one);
        the first call for a pid also asks the clearing house to create it, and the logs wait in
        ``ch_requests`` until that is answered, so no log can create the process first with this
        node as its sole owner. A pid others can learn before it is first used goes in this
        node's namespace (``AGENT/...``, ``protocol.clearing.namespace_of``), which nobody else
        may create: under a bare tally or lift uuid, whoever created it first would own it.
        The header logged is ``{kind, ref, **header}`` (``ref`` defaults to ``pid``); ``mode``
        is ``full``, ``header`` (the payload's hash only) or ``hash``. A payload too large for
        the clearing house is logged by hash (mode ``header``).

        Nothing here waits: the request commits with the caller's state change, goes out right
        after in a batch with the other evidence waiting, and the outbox delivers it whenever the
        clearing house is reachable; the receipt is stored when it comes (``receipts`` with
        ``kind`` and ``ref``). A clearing house that is its own appends the entry to its log
        in ``tx`` and stores the receipt at once (``ClearingService.log_own``). Without a
        configured clearing house this does nothing (and logs that once). Raises
        ``ValueError`` for a bad pid, owner or payload: those are programming errors of the
        caller.
        """
        owner_ids, obj, by_hash = ev.evidence_object(
            pid, owners, kind, payload, ref=ref, header=header, payload_type=payload_type,
            mode=mode, max_payload=self.runtime.config.max_frame // 4)
        house = self.clearing_house()
        if house is None:
            if not self._warned:
                self._warned = True
                log.info("no [clearinghouse] configured: evidence is not logged")
            return
        ref = pid if ref is None else ref
        if by_hash:
            log.info("evidence %s %s: payload too large, logged by its hash", kind, ref)
        own = self._own(house)
        if own is not None and own(tx, obj, owner_ids, kind, ref):
            return
        conn = tx.conn
        state = store.client_process(conn, house.agent, pid)
        if state is None:
            create_id = tx.send(Send(house, ch.TARGET, "create_process",
                                     {"pid": pid, "owners": owner_ids}))
            store.add_request(
                conn, message_id=create_id, ch=house.agent, action="create_process", pid=pid,
                kind=kind, ref=ref, payload_sha256=None, state="sent", now_ms=tx.now_ms,
                obj=pack({"pid": pid, "owners": owner_ids}),
            )  # fmt: skip
            store.set_client_process(conn, house.agent, pid, "creating", owner_ids)
            state = "creating"
        store.add_request(
            conn, message_id=None, ch=house.agent, action="log", pid=pid, kind=kind, ref=ref,
            payload_sha256=obj["payload_sha256"], state="waiting", now_ms=tx.now_ms,
            obj=pack(obj),
        )  # fmt: skip
        if state == "ready":
            tx.after_commit(self.sender.evidence_due)
        tx.after_commit(self.lost.wake)

    # -- answers (writer thread, through the ``ch`` target) -----------------------------

    def on_reply(self, tx: Tx, envelope: Envelope) -> None:
        """Apply the clearing house's answer to one of our requests."""
        self.answers.on_reply(tx, envelope)

    def on_rejected(self, tx: Tx, envelope: dict, code: str, message: str) -> None:
        """A clearing house (or a node that is none) refused a request with an error ack."""
        self.answers.on_rejected(tx, envelope, code, message)

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
        """What a call that waited in vain is told, with why the house could not be reached
        when a dial says so."""
        why = self.runtime.dial_error(house)
        return (f"no answer from the clearing house {house} within {REQUEST_TIMEOUT:g} s (the"
                " request stays in the outbox and will be retried; a late receipt is still"
                " stored, a late refusal logged)" + (f": {why}" if why else ""))

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
        try:
            return await replies.result(message_id, REQUEST_TIMEOUT, "")
        except RpcError as exc:
            if exc.reason != "TIMEOUT":
                raise
            raise RpcError(exc.code, self._timeout_message(house.agent), exc.reason) from None

    async def _read(self, action: str, obj: dict[str, Any]) -> Any:
        """A query or get; a process not found under a pid cut short as ``-H`` shows it (a
        pid copied from a table) says so."""
        try:
            return await self.request(action, obj)
        except Reject as exc:
            if exc.code != ch.Reason.NOT_FOUND.value or "…" not in obj["pid"]:
                raise
            raise Reject(exc.code, f"{exc.message} (the pid is cut short, as -H shows it in a "
                         "table: give it whole, as the output without -H has it)") from None

    async def log_request(self, obj: dict[str, Any]) -> Any:
        """Like ``request("log", obj)``, but coalesced with concurrent calls by the sender."""
        return (await self.log_requests([obj]))[0]

    async def log_requests(self, objs: list[dict[str, Any]], *, each: bool = False) -> list[Any]:
        """Log ``objs`` through the sender (coalesced with every concurrent call) and wait for
        all of their answers: the results in order. A refusal raises, or with ``each`` is
        returned in its entry's place as its ``Reject``."""
        house = self._house()
        items = [Pending(house, obj, self._size("log", obj)) for obj in objs]
        last_sent = items[-1].sent = trio.Event()
        replies = self.runtime.replies
        try:
            with trio.move_on_after(REQUEST_TIMEOUT) as scope:
                await self.sender.queue(items)
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
        """Send what waits for the clearing house: ``ch.log`` calls and evidence logs, and
        evidence again whose answer never came (``lost.py``)."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.lost.run)
            await self.sender.run(task_status)

    async def rpc_create_process(self, pid: str, owners: list[str] | str | None = None
                                 ) -> dict:
        """Create process ``pid`` owned by this node and ``owners`` (agent ids: a list, or
        comma-separated text, as ``owners=ID1,ID2`` on the command line)."""
        check_pid(pid)
        if isinstance(owners, str):  # its other types: agentd.rpc_types
            owners = [owner.strip() for owner in owners.split(",") if owner.strip()]
        for owner in owners or []:
            if (problem := agent_id_problem(owner)) is not None:
                raise invalid_params(f"owners: {problem} (peers.list shows the agent ids this "
                                     "node knows)")
        await self.request("create_process", {"pid": pid, "owners": owners or []})
        return {"pid": pid, "owners": sorted({self.runtime.agent_id, *(owners or [])})}

    async def rpc_log(self, pid: str, payload: Any, mode: str = "full",
                      header: dict | None = None, payload_type: str | None = None) -> dict:
        """Log ``payload`` (text as UTF-8, other JSON as canonical msgpack) under ``pid``;
        ``mode`` full | header (hash of the payload and the header) | hash (the hash alone).
        ``header``: a map logged beside it; ``payload_type``: its media type (default
        ``text/plain; charset=utf-8`` for text, ``application/msgpack`` for other JSON)."""
        return await self.log_request(log_object(pid, payload, mode, header, payload_type))

    async def rpc_log_many(self, entries: list) -> list[dict]:
        """Log many entries in one call: ``entries`` is a list of ``{pid, payload, mode?,
        header?, payload_type?}`` (as ``ch.log``); the result has one item per entry, in
        order: its receipt as ``ch.log`` returns it, or ``{error: {code, message}}`` for an
        entry the clearing house refused (the CLI then exits 1, every item printed). An invalid
        entry refuses the whole call."""
        if not isinstance(entries, list) or not 0 < len(entries) <= MAX_RPC_BATCH:
            raise invalid_params(f"entries must be a list of 1 to {MAX_RPC_BATCH} objects")
        objs = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise invalid_params(f"entries[{index}] must be an object with pid and payload")
            unknown = sorted(entry.keys() - _LOG_PARAMS)
            if unknown:
                raise invalid_params(f"entries[{index}] has unknown key {unknown[0]!r}"
                                     f"{did_you_mean(unknown[0], _LOG_PARAMS)}; an entry takes"
                                     f" {', '.join(sorted(_LOG_PARAMS))}")
            missing = sorted(_LOG_REQUIRED - entry.keys())
            if missing:
                raise invalid_params(f"entries[{index}] has no {missing[0]}")
            try:
                objs.append(log_object(**entry))
            except RpcError as exc:
                raise invalid_params(f"entries[{index}]: {exc.message}") from exc
        results = await self.log_requests(objs, each=True)
        return [_error_json(result) if isinstance(result, Reject) else result
                for result in results]

    async def rpc_query(self, pid: str, page: int | None = None, size: int | None = None,
                        sort: str | None = None, date_from: int | str | None = None,
                        date_to: int | str | None = None) -> dict:
        """One page of ``pid``'s entries by seq (newest first unless ``sort=asc``).

        A null leaves the clearing house's default: ``page`` 1 (from 1), ``size`` 100 (at
        most 1000), ``sort`` desc; ``date_from``/``date_to`` bound the entries' timestamps
        (ms since the epoch, or a day as YYYY-MM-DD, inclusive)."""
        check_pid(pid)
        check_query(page, size, sort, date_from, date_to)
        params = {"page": page, "size": size, "sort": sort, "date_from": date_from,
                  "date_to": date_to}
        obj = {"pid": pid, **{k: v for k, v in params.items() if v is not None}}
        result = await self._read("query", obj)
        return {**result, "entries": [entry_json(e) for e in _entries(result, "query")]}

    async def rpc_get(self, pid: str, id: str) -> dict:
        """The entry whose document id is ``id`` (``document_id`` in what ``ch.log`` and
        ``ch.query`` return)."""
        check_pid(pid)
        if not ch.HEX64.fullmatch(id):  # its type: agentd.rpc_types
            raise invalid_params(f"id must be a document id (the 64 lowercase hex digits "
                                 f"ch.log and ch.query give as document_id), not {id!r}")
        result = await self._read("get", {"pid": pid, "id": id})
        entries = _entries(result, "get")
        if len(entries) != 1:
            raise Reject(ch.Reason.MALFORMED_MESSAGE.value,
                         "the clearing house answered get without exactly one entry")
        return entry_json(entries[0])


def _entries(result: Mapping[str, Any], action: str) -> list[dict[str, Any]]:
    """The entries of the house's answer to ``action``, each a map with its document id; any
    other shape is the house's fault, said as such (not an error of ours)."""
    entries = result.get("entries", [])
    if not isinstance(entries, list) or not all(
            isinstance(entry, dict) and isinstance(entry.get("entry_hash"), str)
            for entry in entries):
        raise Reject(ch.Reason.MALFORMED_MESSAGE.value, f"the clearing house answered {action} "
                     "with entries that are not entries (maps with an entry_hash)")
    return entries


def _error_json(error: Reject) -> dict[str, Any]:
    """A refused entry of ``ch.log_many``: its IDS code and message."""
    return {"error": {"code": error.code, "message": error.message}}


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
