"""The destination relay's clients: the ``relay.query``, ``relay.state``, ``relay.wait`` and
``relay.delete`` RPC methods, and the calls waiting in ``relay.wait``.

``relay.query`` stores the request as PENDING_ACK and queues a signed
:class:`~protocol.relay_query.Query` to the source in one transaction, and answers with the
``request_id`` at once; the service applies the source's answers (``service.py``) and wakes
the waiting calls (:meth:`RelayClients.notify`). Reading never changes a request.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING, Any

import trio

from agentd.rpc import NOT_FOUND, RpcError, invalid_params, jsonable
from agentd.rpc_types import shown
from agentd.runtime.context import Tx
from agentd.services.relay.states import PENDING, changed
from protocol.codec import unpack
from protocol.keys import ChipAddress, b64u, is_agent_id, parse_hostport
from protocol.messages import Send
from protocol.relay import APPLIES_FROM, Status
from protocol.relay_address import ViewAddress, parse_view
from protocol.relay_fields import AddressError, MessageError
from protocol.relay_messages import GetStateMessage
from protocol.relay_policy import required_signers
from protocol.relay_query import NetworkQuery, make_query, new_nonce
from store import relay as relay_store

if TYPE_CHECKING:
    from agentd.services.relay.service import RelayService

DEFAULT_TIMEOUT_S = 30.0
MAX_TIMEOUT_S = 24 * 3600.0


class RelayClients:
    def __init__(self, service: RelayService) -> None:
        self.service = service
        self.runtime = service.runtime
        self._waiters: dict[str, trio.Event] = {}
        for name, method in (("relay.query", self.rpc_query), ("relay.state", self.rpc_state),
                             ("relay.wait", self.rpc_wait), ("relay.delete", self.rpc_delete)):
            self.runtime.register_method(name, method)

    async def rpc_query(self, address: str, policy: str | list[str] | None = None,
                        confidential: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S
                        ) -> dict:
        """Ask the source named in ``address`` for a view; returns ``{request_id}`` at once
        (``relay.wait`` waits for the view).

        ``address`` is RELAY/NETWORK/VIEW: the source's HOST:PORT or agent id, its ``[node]
        network`` and one of ``node:info``, ``user:<cuid>:balance``, ``tally:<uuid>``,
        ``tally:<uuid>:chits``, ``lift:<uuid>`` (``127.0.0.1:7102/local/node:info``). The
        source answers only what its ``[[relay.access]]`` rules let this node read.
        ``confidential`` has the view encrypted to this node; ``timeout_s`` (more than 0, at
        most 86400) ends the request as ERROR when no view came.

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
        required = signers or required_signers(self.service.policies, parsed.view) or [to.agent]
        runtime = self.runtime
        request_id = str(uuid.uuid4())
        nonce = new_nonce(os.urandom(16))
        query = make_query(
            NetworkQuery(policy=tuple(required), address=address, confidential=confidential),
            request_id=request_id, nonce=nonce, node_key=runtime.key,
            network=runtime.config.network,
        )

        def work(tx: Tx) -> int:
            query_id = tx.send(Send(to, self.service.target, "query", query.to_map()))
            relay_store.insert(
                tx.conn, request_id=request_id, status=Status.PENDING_ACK, source=to.agent,
                address=address, nonce=nonce, confidential=confidential, required=required,
                query_id=query_id, deadline=tx.now_ms + timeout_ms, now_ms=tx.now_ms,
            )
            return tx.now_ms

        now = await runtime.transact(work)
        changed(request_id, Status.PENDING_ACK, source=to.agent, address=address)
        self.service.plan_sweep(now + timeout_ms)
        return {"request_id": request_id}

    async def rpc_state(self, request_id: str) -> dict:
        """The request's RequestState; reading it changes nothing."""
        return self._state(self._row(_request_id(request_id)))

    async def rpc_wait(self, request_id: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
        """Block until the request is COMPLETED, ERROR or DELETED, or ``timeout_s`` passes
        (0: look now; at most 86400); returns its state either way."""
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
            self.notify(request_id)
            changed(request_id, Status.DELETED)
        return self._state(self._row(request_id))

    def notify(self, request_id: str) -> None:
        """The request reached a final state: its ``relay.wait`` calls return."""
        event = self._waiters.pop(request_id, None)
        if event is not None:
            event.set()

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

    def _row(self, request_id: str) -> Any:
        row = self.runtime.db.reading(lambda conn: relay_store.get(conn, request_id))
        if row is None:
            raise _unknown(request_id)
        return row

    @staticmethod
    def _state(row: Any) -> dict:
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


# -- parameters ----------------------------------------------------------------------------


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
                             f"not {shown(value)}")
    return float(value)


def _policy(value: object) -> list[str]:
    """Agent ids as a JSON list or comma-separated text (``policy=ID1,ID2`` on the CLI)."""
    if value is None:
        return []
    rule = "policy must be one or more agent ids, comma-separated or a list"
    items = [p.strip() for p in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise invalid_params(f"{rule}, not {shown(value)}")
    bad = [p for p in items if not is_agent_id(p)]
    if bad:
        raise invalid_params(f"{rule}: {shown(bad[0])} is not an agent id")
    return list(dict.fromkeys(items))
