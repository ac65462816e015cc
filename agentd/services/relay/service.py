"""The relay service: Weaver-style data sharing between agentd ledgers (DESIGN.md §5).

Every node is both ends. As the *destination relay* it serves its own clients: ``relay.query``
stores the request as PENDING_ACK and queues a signed :class:`~protocol.relay_query.Query` to
the source in one transaction, and answers with the ``request_id`` at once. As the *source relay*
it admits a query (requestor signature, network, view, access rules, nonce replay cache),
then reads the view from its own ledger (``relay_driver``), notarizes it and answers with an
``ack`` (Ack OK) and a ``view`` (ViewPayload) message, all in the transaction that records
the query as processed; a refused query is an error ack naming the reason, which the
destination stores as ERROR. Back on the destination, the Ack moves the request to PENDING
and the view is verified against the verification policy and stored as COMPLETED or ERROR.

Messages travel through the outbox, so they survive restarts and are retried until acked;
only the agent a request was sent to may ack or answer it, and every state change is a
guarded ``UPDATE ... WHERE status IN (...)`` (a late PENDING never overwrites COMPLETED).
Reading never changes a request. The sweep (``run``) turns a request still pending at its
deadline into ERROR and withdraws its query from the outbox, marks results older than
``result_ttl_ms`` DELETED, prunes DELETED rows after ``deleted_ttl_ms`` and forgets nonces
after ``nonce_ttl_ms``.

A query is answered only to the agent that signed it and sent it (``certificate`` =
``requesting_relay`` = the channel's authenticated agent), so access rules, which name
agents, cannot be borrowed by relaying someone else's signed query. For the same reason the
replay cache can forget a nonce after a week: a replay older than that could only come from
the signer itself, re-reading what it may read anyway.

The source admits a query with ``protocol.relay_query.admit_query`` (signature, network, relay,
view, access), each refusal answered with its own reason code.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import TYPE_CHECKING, Any

import trio

from agentd.errors import UserError
from agentd.logs import event
from agentd.rpc import NOT_FOUND, RpcError, invalid_params, jsonable
from agentd.runtime.context import Reject, Runtime, Service, Tx
from agentd.runtime.timers import Failures
from agentd.services.relay import driver as relay_driver
from protocol.codec import CodecError, canonical, unpack
from protocol.envelope import MAX_NESTING, Envelope
from protocol.keys import ChipAddress, b64u, is_agent_id, parse_hostport
from protocol.messages import Send
from protocol.relay import APPLIES_FROM, AckStatus, Status
from protocol.relay_address import ViewAddress, parse_view
from protocol.relay_fields import AddressError, MessageError, RelayError
from protocol.relay_messages import Ack, GetStateMessage, ViewPayload
from protocol.relay_policy import AccessRule, VerificationPolicy, required_signers
from protocol.relay_query import NetworkQuery, Query, admit_query, make_query, new_nonce
from protocol.relay_views import make_view, open_view
from store import relay as relay_store

if TYPE_CHECKING:
    from agentd.config import Config

log = logging.getLogger("agentd.relay")

DEFAULT_TIMEOUT_S = 30.0
MAX_TIMEOUT_S = 24 * 3600.0
MAX_PAYLOAD = 512 * 1024  # a view's payload must fit in one frame at the default max_frame
PENDING = (Status.PENDING_ACK, Status.PENDING)
FINAL = (Status.COMPLETED, Status.ERROR)
# the access rules and verification policies a node serves with (from its [relay] config)
Rules = tuple[tuple[AccessRule, ...], tuple[VerificationPolicy, ...]]


class RelayService(Service):
    target = "relay"
    actions = frozenset({"query", "ack", "view"})

    #: How long the sweep keeps results, DELETED rows and seen nonces, and how often it runs.
    result_ttl_ms = 24 * 3600 * 1000
    deleted_ttl_ms = 3600 * 1000
    nonce_ttl_ms = 7 * 24 * 3600 * 1000
    sweep_interval_ms = 60 * 1000

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        config = runtime.config
        self.access, self.policies = self.rules(config)
        try:
            ViewAddress(runtime.agent_id, config.network, "node:info")
        except AddressError as exc:
            raise UserError(f"{config.path}: node.network cannot name a relay network: "
                            f"{exc}") from exc
        self._waiters: dict[str, trio.Event] = {}
        self._wake = trio.Event()
        self._wake_at_ms: int | None = None
        self._next_sweep_ms = 0
        for name, method in (("relay.query", self.rpc_query), ("relay.state", self.rpc_state),
                             ("relay.wait", self.rpc_wait), ("relay.delete", self.rpc_delete)):
            runtime.register_method(name, method)
        runtime.register_target(self)

    # -- RPC: the destination relay's clients --------------------------------------------

    async def rpc_query(self, address: str, policy: str | list[str] | None = None,
                        confidential: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S
                        ) -> dict:
        """Ask the source named in ``address`` for a view; returns ``{request_id}`` at once.

        ``policy`` (agent ids) overrides the configured verification policy for this request;
        with neither, the view must be notarized by the source agent itself.
        """
        try:
            parsed = ViewAddress.parse(address)
            parse_view(parsed.view)
        except AddressError as exc:
            raise invalid_params(f"address: {exc}") from exc
        signers = _policy(policy)
        if not isinstance(confidential, bool):
            raise invalid_params("confidential must be true or false")
        timeout_ms = round(_seconds(timeout_s, "timeout_s") * 1000)
        to = await self._resolve(parsed)
        required = signers or required_signers(self.policies, parsed.view) or [to.agent]
        runtime = self.runtime
        request_id = str(uuid.uuid4())
        nonce = new_nonce(os.urandom(16))
        query = make_query(
            NetworkQuery(policy=tuple(required), address=address, confidential=confidential),
            request_id=request_id, nonce=nonce, node_key=runtime.key,
            network=runtime.config.network,
        )

        def work(tx: Tx) -> int:
            query_id = tx.send(Send(to, self.target, "query", query.to_map()))
            relay_store.insert(
                tx.conn, request_id=request_id, status=Status.PENDING_ACK, source=to.agent,
                address=address, nonce=nonce, confidential=confidential, required=required,
                query_id=query_id, deadline=tx.now_ms + timeout_ms, now_ms=tx.now_ms,
            )
            return tx.now_ms

        now = await runtime.transact(work)
        _changed(request_id, Status.PENDING_ACK, source=to.agent, address=address)
        self._plan_sweep(now + timeout_ms)
        return {"request_id": request_id}

    async def rpc_state(self, request_id: str) -> dict:
        """The request's RequestState; reading it changes nothing."""
        return self._state(self._row(_request_id(request_id)))

    async def rpc_wait(self, request_id: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
        """Block until the request is COMPLETED, ERROR or DELETED, or ``timeout_s`` passes
        (0: look now); returns its state either way."""
        request_id = _request_id(request_id)
        timeout = _seconds(timeout_s, "timeout_s", look=True)
        with trio.move_on_after(timeout):
            while self._row(request_id)["status"] in PENDING:
                await self._waiters.setdefault(request_id, trio.Event()).wait()
        return self._state(self._row(request_id))

    async def rpc_delete(self, request_id: str) -> dict:
        """Explicit cleanup: the request becomes DELETED and its view or error is dropped; a
        query still waiting in the outbox is withdrawn."""
        request_id = _request_id(request_id)

        def work(tx: Tx) -> bool | None:
            row = relay_store.get(tx.conn, request_id)
            if row is None:
                return None
            moved = relay_store.transition(tx.conn, request_id, Status.DELETED,
                                           APPLIES_FROM[Status.DELETED], tx.now_ms)
            if moved and row["status"] in PENDING:
                tx.withdraw(row["query_id"], "relay request deleted")
            return moved

        moved = await self.runtime.transact(work)
        if moved is None:
            raise _unknown(request_id)
        if moved:
            self._notify(request_id)
            _changed(request_id, Status.DELETED)
        return self._state(self._row(request_id))

    async def _resolve(self, address: ViewAddress) -> ChipAddress:
        """The source's agent and where to reach it. A ``HOST:PORT`` relay resolves only to a
        peer we may dial there (configured, a tally partner, an address a user gave), never
        to one that merely connected to us: the address a peer claims is not evidence of
        who listens there. An agent-id relay is dialled at its known address, or reached
        over the channel it has open to us."""
        node = self.runtime
        if address.agent is not None:
            agent = address.agent
            if agent == node.agent_id:
                return node.own_address()
            where = node.address_of(agent)
            if where is None:
                if node.connected(agent):
                    return ChipAddress(agent=agent)  # the outbox uses its open channel
                raise RpcError(
                    NOT_FOUND, f"unknown relay {agent}: it is not a configured peer or tally "
                    "partner and has no channel open to this node; add it with peers.add",
                    "UNKNOWN_PEER")
        else:
            where = address.relay
            if where == node.listen_address:
                return node.own_address()
            agent = node.agent_at(where)
            if agent is None:
                raise RpcError(
                    NOT_FOUND, f"no configured peer, tally partner or address a user gave is "
                    f"{where}: name a peer that connected to this node by its agent id "
                    "(AGENT/NETWORK/VIEW), or add it with peers.add", "UNKNOWN_PEER")
        host, port = parse_hostport(where)
        return ChipAddress(agent=agent, host=host, port=port)


    @staticmethod
    def rules(config: Config) -> Rules:
        """``config``'s access rules and verification policies; ``UserError`` naming the bad
        entry if its ``[relay]`` is invalid."""
        return _access_rules(config), _policies(config)

    def use_rules(self, rules: Rules) -> None:
        """Serve with these access rules and verification policies from now on."""
        self.access, self.policies = rules
    def _row(self, request_id: str) -> Any:
        row = self.runtime.db.reading(lambda conn: relay_store.get(conn, request_id))
        if row is None:
            raise _unknown(request_id)
        return row

    def _state(self, row: Any) -> dict:
        status = Status(row["status"])
        out: dict[str, Any] = {"request_id": row["request_id"], "status": status.name,
                               "status_code": int(status)}
        if row["view"] is not None:  # verified when it arrived: decode, don't re-check
            view = unpack(row["view"])
            interop = unpack(view["data"])["interop_payload"]
            out["view"] = {
                "address": interop["address"], "nonce": interop["nonce"],
                "requestor": interop["requestor"], "signers": row["signers"].split(","),
                "confidential": interop["confidential"], "timestamp": view["meta"]["timestamp"],
                "payload": jsonable(unpack(row["result"])), "proof": b64u(row["view"]),
            }
        if row["error"] is not None:
            out["error"] = row["error"]
        return out

    # -- messages (on the writer thread) -------------------------------------------------

    def handle(self, tx: Tx, envelope: Envelope) -> None:
        if envelope.action == "query":
            self._on_query(tx, envelope)
        elif envelope.action == "ack":
            self._on_ack(tx, envelope)
        elif envelope.action == "view":
            self._on_view(tx, envelope)
        else:
            raise Reject("UNKNOWN_ACTION", f"relay has no action {envelope.action!r}")

    def _on_query(self, tx: Tx, envelope: Envelope) -> None:
        """Source side: admit the query, then ack it and answer it in this transaction."""
        try:
            query = Query.from_map(envelope.object)
        except MessageError as exc:
            raise Reject("BAD_QUERY", str(exc)) from exc
        sender = envelope.from_.agent
        if query.requesting_relay != sender or query.certificate != sender:
            raise Reject("NOT_REQUESTOR", f"a query must be signed by the agent that sends it "
                         f"({sender}), not by {query.certificate} via {query.requesting_relay}")
        try:
            address = admit_query(query, agent=self.runtime.agent_id,
                                  network=self.runtime.config.network, rules=self.access)
        except RelayError as exc:
            raise Reject(exc.code, str(exc)) from exc
        kind, args = parse_view(address.view)
        if not relay_store.record_nonce(tx.conn, query.certificate, query.nonce,
                                        query.request_id, tx.now_ms):
            raise Reject("REPLAYED_NONCE",
                         f"nonce {query.nonce} was already used by {query.certificate}")
        reply_to = envelope.from_
        tx.send(Send(reply_to, self.target, "ack", Ack(AckStatus.OK, query.request_id).to_map()),
                re=envelope.id)
        tx.send(Send(reply_to, self.target, "view", self._answer(tx, query, kind, args).to_map()),
                re=envelope.id)

    def _answer(self, tx: Tx, query: Query, kind: str, args: tuple[str, ...]) -> ViewPayload:
        """The driver's view, notarized (and sealed for the requestor), or the reason why not."""
        try:
            payload = canonical(relay_driver.read(tx.conn, self.runtime, kind, args))
        except relay_driver.ViewError as exc:
            return ViewPayload(query.request_id, error=str(exc))
        except CodecError as exc:
            return ViewPayload(query.request_id,
                               error=f"UNAVAILABLE: cannot encode the view: {exc}")
        if len(payload) > MAX_PAYLOAD:
            return ViewPayload(query.request_id, error=f"UNAVAILABLE: the view is {len(payload)} "
                               f"bytes, more than the {MAX_PAYLOAD} a relay answer may carry")
        try:
            view = make_view(payload, query.address, query.nonce, query.certificate,
                             query.confidential, self.runtime.key, tx.now_ms,
                             os.urandom(32) if query.confidential else None)
        except RelayError as exc:  # e.g. a requestor key that cannot be encrypted to
            return ViewPayload(query.request_id, error=f"UNAVAILABLE: {exc}")
        return ViewPayload(query.request_id, view=view)

    def _asked(self, tx: Tx, request_id: str, envelope: Envelope) -> Any:
        """The request an ack or view answers, refusing one we never made or sent elsewhere."""
        row = relay_store.get(tx.conn, request_id)
        if row is None:
            raise Reject("UNKNOWN_REQUEST", f"no relay request {request_id} on this node")
        if row["source"] != envelope.from_.agent:
            raise Reject("NOT_ASKED", f"request {request_id} was sent to {row['source']}, "
                         f"not to {envelope.from_.agent}")
        return row

    def _on_ack(self, tx: Tx, envelope: Envelope) -> None:
        try:
            ack = Ack.from_map(envelope.object)
        except MessageError as exc:
            raise Reject("BAD_MESSAGE", str(exc)) from exc
        self._asked(tx, ack.request_id, envelope)
        if ack.status is AckStatus.OK:
            if relay_store.transition(tx.conn, ack.request_id, Status.PENDING,
                                      APPLIES_FROM[Status.PENDING], tx.now_ms):
                tx.after_commit(lambda: _changed(ack.request_id, Status.PENDING))
        else:
            self._fail(tx, ack.request_id, f"the source refused the query: {ack.message}")

    def _on_view(self, tx: Tx, envelope: Envelope) -> None:
        try:
            answer = ViewPayload.from_map(envelope.object)
        except MessageError as exc:
            raise Reject("BAD_MESSAGE", str(exc)) from exc
        request_id = answer.request_id
        row = self._asked(tx, request_id, envelope)
        if row["status"] not in PENDING:
            return  # already settled: a late or repeated answer changes nothing
        if answer.view is None:
            self._fail(tx, request_id, f"the source could not serve the view: {answer.error}")
            return
        try:
            opened = open_view(answer.view, self.runtime.key, row["required"].split(","),
                               row["address"], row["nonce"],
                               require_confidential=bool(row["confidential"]))
            unpack(opened.result, max_nesting=MAX_NESTING)  # it is shown as JSON later
        except (RelayError, CodecError) as exc:
            log.warning("view from %s for %s rejected: %s", row["source"][:8], request_id, exc)
            self._fail(tx, request_id, f"the view failed verification: {exc}")
            return
        if relay_store.transition(tx.conn, request_id, Status.COMPLETED,
                                  APPLIES_FROM[Status.COMPLETED], tx.now_ms,
                                  view=canonical(answer.view.to_map()), result=opened.result,
                                  signers=opened.signers):
            tx.after_commit(lambda: self._notify(request_id))
            tx.after_commit(lambda: _changed(request_id, Status.COMPLETED))

    def on_rejected(self, tx: Tx, envelope: dict, code: str, message: str) -> None:
        """The source refused our query for good: the request ends in ERROR with its reason."""
        request_id = (envelope.get("object") or {}).get("request_id")
        if envelope.get("action") == "query" and isinstance(request_id, str):
            self._fail(tx, request_id, f"the source refused the query: {code}: {message}")

    def _fail(self, tx: Tx, request_id: str, error: str) -> None:
        if relay_store.transition(tx.conn, request_id, Status.ERROR, APPLIES_FROM[Status.ERROR],
                                  tx.now_ms, error=error):
            tx.after_commit(lambda: self._notify(request_id))
            tx.after_commit(lambda: _changed(request_id, Status.ERROR, error=error))

    def _notify(self, request_id: str) -> None:
        event = self._waiters.pop(request_id, None)
        if event is not None:
            event.set()

    # -- deadlines and cleanup -----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Sweep at every request deadline and every ``sweep_interval_ms``, until cancelled."""
        task_status.started()
        sweeping = Failures("the relay's sweep of requests past their deadline or TTL")

        async def next_deadline() -> int | None:
            return self.runtime.db.reading(lambda conn: relay_store.next_deadline(conn, PENDING))

        while True:
            due = await sweeping.retry(next_deadline)
            now = self.runtime.clock.now_ms()
            if now >= self._next_sweep_ms or (due is not None and due <= now):
                await sweeping.retry(self.sweep)
                self._next_sweep_ms = now + self.sweep_interval_ms
                continue
            self._wake_at_ms = self._next_sweep_ms if due is None else min(due,
                                                                          self._next_sweep_ms)
            with trio.move_on_after((self._wake_at_ms - now) / 1000):
                await self._wake.wait()
            self._wake = trio.Event()

    def _plan_sweep(self, deadline_ms: int) -> None:
        """Wake the sweep earlier when a new request's deadline comes before its next run."""
        if self._wake_at_ms is not None and deadline_ms < self._wake_at_ms:
            self._wake.set()

    async def sweep(self) -> dict[str, int]:
        """Expire requests past their deadline, retire old results and prune; returns counts."""

        def work(tx: Tx) -> tuple[list[str], list[str], int, int]:
            conn, now = tx.conn, tx.now_ms
            expired = []
            for row in relay_store.overdue(conn, PENDING, now):
                waited = (row["deadline"] - row["created"]) / 1000
                if row["status"] == Status.PENDING_ACK:
                    error = (f"deadline passed: the source did not acknowledge the query within "
                             f"{waited:g} s (down or unreachable); the query was withdrawn")
                else:
                    error = (f"deadline passed: the source acknowledged the query but sent no "
                             f"view within {waited:g} s")
                if relay_store.transition(conn, row["request_id"], Status.ERROR,
                                          APPLIES_FROM[Status.ERROR], now, error=error):
                    tx.withdraw(row["query_id"], "relay request expired")
                    expired.append(row["request_id"])
            retired = relay_store.retire(conn, Status.DELETED, FINAL,
                                         now - self.result_ttl_ms, now)
            pruned = relay_store.prune(conn, Status.DELETED, now - self.deleted_ttl_ms)
            nonces = relay_store.prune_nonces(conn, now - self.nonce_ttl_ms)
            return expired, retired, pruned, nonces

        expired, retired, pruned, nonces = await self.runtime.transact(work)
        for request_id in expired:
            self._notify(request_id)
            _changed(request_id, Status.ERROR, error="deadline passed")
        for request_id in retired:
            self._notify(request_id)
            _changed(request_id, Status.DELETED, reason="kept long enough")
        return {"expired": len(expired), "retired": len(retired), "pruned": pruned,
                "nonces": nonces}


def _changed(request_id: str, status: Status, **fields: object) -> None:
    """The one info line per state change of a relay request."""
    event(log, "relay request", request=request_id, state=status.name, **fields)


# -- parameters and config ---------------------------------------------------------------


def _request_id(value: object) -> str:
    try:
        return GetStateMessage(value).request_id  # type: ignore[arg-type]
    except MessageError as exc:
        raise invalid_params(f"request_id {value!r} is not a request id (a lowercase UUID)"
                             ) from exc


def _unknown(request_id: str) -> RpcError:
    return RpcError(NOT_FOUND, f"no relay request {request_id} on this node", "UNKNOWN_REQUEST")


def _seconds(value: object, name: str, *, look: bool = False) -> float:
    """A number of seconds up to ``MAX_TIMEOUT_S``; 0 too when it means a look (a wait)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        (value >= 0 if look else value > 0) and value <= MAX_TIMEOUT_S
    ):
        span = "from 0 (look now) to" if look else "more than 0 and at most"
        raise invalid_params(f"{name} must be a number of seconds, {span} {MAX_TIMEOUT_S:g}, "
                             f"not {value!r}")
    return float(value)


def _policy(value: object) -> list[str]:
    """Agent ids as a JSON list or comma-separated text (``policy=ID1,ID2`` on the CLI)."""
    if value is None:
        return []
    items = [p.strip() for p in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(is_agent_id(p) for p in items):
        raise invalid_params("policy must be one or more agent ids, comma-separated or a list")
    return list(dict.fromkeys(items))


def _access_rules(config: Config) -> tuple[AccessRule, ...]:
    rules = []
    for i, rule in enumerate(config.relay_access):
        try:
            rules.append(AccessRule(rule.principal, rule.resource))
        except MessageError as exc:
            raise UserError(f"{config.path}: relay.access[{i}]: {exc}") from exc
    return tuple(rules)


def _policies(config: Config) -> tuple[VerificationPolicy, ...]:
    policies = []
    for i, policy in enumerate(config.relay_verify):
        try:
            policies.append(VerificationPolicy(policy.view, tuple(policy.signers)))
        except MessageError as exc:
            raise UserError(f"{config.path}: relay.verify[{i}]: {exc}") from exc
    return tuple(policies)
