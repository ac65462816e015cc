"""The relay service: Weaver-style data sharing between agentd ledgers (DESIGN.md §5).

Every node is both ends. As the *destination relay* it serves its own clients
(``clients.py``: ``relay.query`` stores the request as PENDING_ACK, queues a signed query to
the source and answers with the ``request_id`` at once). As the *source relay* it admits a
query and answers it with an ``ack`` (Ack OK) and a ``view`` (ViewPayload) message, all in
the transaction that records the query as processed (``source.py``, reading the view with
``driver.py``); a refused query is an error ack naming the reason, which the destination
stores as ERROR. Back on the destination (here), the Ack moves the request to PENDING and
the view is verified against the verification policy and stored as COMPLETED or ERROR.

Messages travel through the outbox, so they survive restarts and are retried until acked;
only the agent a request was sent to may ack or answer it, and every state change is a
guarded ``UPDATE ... WHERE status IN (...)`` (a late PENDING never overwrites COMPLETED).
Reading never changes a request. The sweep (``run``) turns a request still pending at its
deadline into ERROR and withdraws its query from the outbox, marks results older than
``result_ttl_ms`` DELETED, prunes DELETED rows after ``deleted_ttl_ms`` and forgets nonces
after ``nonce_ttl_ms``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from agentd.errors import UserError
from agentd.runtime.context import Reject, Runtime, Service, Tx
from agentd.runtime.peer_rows import PeerRows
from agentd.runtime.timers import Failures
from agentd.services.relay import source
from agentd.services.relay.clients import RelayClients
from agentd.services.relay.states import FINAL, PENDING, changed
from protocol.codec import CodecError, canonical, unpack
from protocol.envelope import MAX_NESTING, Envelope
from protocol.relay import APPLIES_FROM, AckStatus, Status
from protocol.relay_fields import MessageError, RelayError
from protocol.relay_messages import Ack, ViewPayload
from protocol.relay_policy import AccessRule, VerificationPolicy
from protocol.relay_views import open_view
from store import relay as relay_store

if TYPE_CHECKING:
    from agentd.config import Config

log = logging.getLogger("agentd.relay")
NONCES_PER_REQUESTOR = 1_000_000  # a requestor's nonces kept (besides a week): ~250 MB

# the access rules and verification policies a node serves with (from its [relay] config)
Rules = tuple[tuple[AccessRule, ...], tuple[VerificationPolicy, ...]]


class RelayService(Service):
    target = "relay"
    actions = frozenset({"query", "ack", "view"})

    #: How long the sweep keeps results, DELETED rows and seen nonces, and how often it runs
    #: (one requestor's nonces: at most ``NONCES_PER_REQUESTOR``, the newest).
    result_ttl_ms = 24 * 3600 * 1000
    deleted_ttl_ms = 3600 * 1000
    nonce_ttl_ms = 7 * 24 * 3600 * 1000
    sweep_interval_ms = 60 * 1000

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        config = runtime.config
        self.access, self.policies = self.rules(config)
        self._wake = trio.Event()
        self._wake_at_ms: int | None = None
        self._next_sweep_ms = 0
        self.clients = RelayClients(self)
        # a requestor's nonces kept at most (besides a week): a known peer has no write ration
        self.nonces = PeerRows(NONCES_PER_REQUESTOR, relay_store.trim_nonces, "relay nonces",
                               "the relay's NONCES_PER_REQUESTOR")
        runtime.register_target(self)

    @staticmethod
    def rules(config: Config) -> Rules:
        """``config``'s access rules and verification policies; ``UserError`` naming the bad
        entry if its ``[relay]`` is invalid."""
        return _access_rules(config), _policies(config)

    def use_rules(self, rules: Rules) -> None:
        """Serve with these access rules and verification policies from now on."""
        self.access, self.policies = rules

    # -- messages (on the writer thread) -------------------------------------------------

    def handle(self, tx: Tx, envelope: Envelope) -> None:
        if envelope.action == "query":
            source.on_query(tx, self.runtime, self.access, self.target, envelope, self.nonces)
        elif envelope.action == "ack":
            self._on_ack(tx, envelope)
        elif envelope.action == "view":
            self._on_view(tx, envelope)
        else:
            raise Reject("UNKNOWN_ACTION", f"relay has no action {envelope.action!r}")

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
                tx.after_commit(lambda: changed(ack.request_id, Status.PENDING))
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
            tx.after_commit(lambda: self.clients.notify(request_id))
            tx.after_commit(lambda: changed(request_id, Status.COMPLETED))

    def on_rejected(self, tx: Tx, envelope: dict, code: str, message: str) -> None:
        """The source refused our query for good: the request ends in ERROR with its reason."""
        request_id = (envelope.get("object") or {}).get("request_id")
        if envelope.get("action") == "query" and isinstance(request_id, str):
            self._fail(tx, request_id, f"the source refused the query: {code}: {message}")

    def _fail(self, tx: Tx, request_id: str, error: str) -> None:
        if relay_store.transition(tx.conn, request_id, Status.ERROR, APPLIES_FROM[Status.ERROR],
                                  tx.now_ms, error=error):
            tx.after_commit(lambda: self.clients.notify(request_id))
            tx.after_commit(lambda: changed(request_id, Status.ERROR, error=error))

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

    def plan_sweep(self, deadline_ms: int) -> None:
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
            self.clients.notify(request_id)
            changed(request_id, Status.ERROR, error="deadline passed")
        for request_id in retired:
            self.clients.notify(request_id)
            changed(request_id, Status.DELETED, reason="kept long enough")
        return {"expired": len(expired), "retired": len(retired), "pruned": pruned,
                "nonces": nonces}


# -- config --------------------------------------------------------------------------------


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
