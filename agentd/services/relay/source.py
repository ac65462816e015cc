"""The source relay's side: admit a query, then ack it and answer it with a view of our own
ledger, in the transaction that records the query as processed.

A query is admitted with ``protocol.relay_query.admit_query`` (signature, network, relay,
view, access rules), each refusal answered with its own reason code, and only when the agent
that signed it is the one that sent it (``certificate`` = ``requesting_relay`` = the
channel's authenticated agent), so access rules, which name agents, cannot be borrowed by
relaying someone else's signed query. For the same reason the replay cache can forget a
nonce after a week: a replay older than that could only come from the signer itself,
re-reading what it may read anyway. The view comes from the driver (``driver.py``), is
notarized with the agent key and, when asked, sealed for the requestor.
"""

from __future__ import annotations

import os

from agentd.runtime.context import Reject, Runtime, Tx
from agentd.runtime.peer_rows import PeerRows
from agentd.services.relay import driver as relay_driver
from agentd.services.relay.driver import MAX_PAYLOAD
from protocol.codec import CodecError, canonical
from protocol.envelope import Envelope
from protocol.messages import Send
from protocol.relay import AckStatus
from protocol.relay_address import parse_view
from protocol.relay_fields import MessageError, RelayError
from protocol.relay_messages import Ack, ViewPayload
from protocol.relay_policy import AccessRule
from protocol.relay_query import Query, admit_query
from protocol.relay_views import make_view
from store import relay as relay_store


def on_query(tx: Tx, runtime: Runtime, access: tuple[AccessRule, ...], target: str,
             envelope: Envelope, nonces: PeerRows) -> None:
    """Admit the query under ``access``, then ack it and answer it in this transaction;
    ``nonces`` bounds the nonces kept of one requestor."""
    try:
        query = Query.from_map(envelope.object)
    except MessageError as exc:
        raise Reject("BAD_QUERY", str(exc)) from exc
    sender = envelope.from_.agent
    if query.requesting_relay != sender or query.certificate != sender:
        raise Reject("NOT_REQUESTOR", f"a query must be signed by the agent that sends it "
                     f"({sender}), not by {query.certificate} via {query.requesting_relay}")
    try:
        address = admit_query(query, agent=runtime.agent_id, network=runtime.config.network,
                              rules=access)
    except RelayError as exc:
        raise Reject(exc.code, str(exc)) from exc
    kind, args = parse_view(address.view)
    if not relay_store.record_nonce(tx.conn, query.certificate, query.nonce,
                                    query.request_id, tx.now_ms):
        raise Reject("REPLAYED_NONCE",
                     f"nonce {query.nonce} was already used by {query.certificate}")
    nonces.added(tx.conn, query.certificate)  # nothing below refuses the query
    reply_to = envelope.from_
    tx.send(Send(reply_to, target, "ack", Ack(AckStatus.OK, query.request_id).to_map()),
            re=envelope.id)
    tx.send(Send(reply_to, target, "view", _answer(tx, runtime, query, kind, args).to_map()),
            re=envelope.id)


def _answer(tx: Tx, runtime: Runtime, query: Query, kind: str, args: tuple[str, ...]
            ) -> ViewPayload:
    """The driver's view, notarized (and sealed for the requestor), or the reason why not."""
    try:
        payload = canonical(relay_driver.read(tx.conn, runtime, kind, args))
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
                         query.confidential, runtime.key, tx.now_ms,
                         os.urandom(32) if query.confidential else None)
    except RelayError as exc:  # e.g. a requestor key that cannot be encrypted to
        return ViewPayload(query.request_id, error=f"UNAVAILABLE: {exc}")
    return ViewPayload(query.request_id, view=view)
