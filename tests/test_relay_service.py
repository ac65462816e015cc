"""The relay service between real nodes (loopback, Noise, SQLite): destination, source, driver.

n0 is the destination (the client's node), n1 the source whose ledger is read, n2 a third
agent. Unless a test says otherwise, n1 lets n0 (and only n0) read ``node:*`` and ``user:*``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import uuid
from collections.abc import AsyncIterator

import pytest
import trio

from agentd.config import AccessRule, VerifyPolicy
from agentd.errors import UserError
from agentd.rpc import INVALID_PARAMS, NOT_FOUND, RpcError
from agentd.runtime.context import Service
from agentd.runtime.node import Node
from protocol.codec import canonical, digest, unpack
from protocol.keys import ChipAddress, SigningKey
from protocol.messages import Send
from protocol.relay import AckStatus
from protocol.relay_fields import DecryptionError, ProofError
from protocol.relay_messages import Ack, Meta, View, ViewPayload
from protocol.relay_query import NetworkQuery, Query, make_query, new_nonce
from protocol.relay_seal import unseal
from protocol.relay_views import InteropPayload, make_view, open_view, verify_view
from tests.netfixture import Network, dial_failures, node_config, start_node, wait_for


@dataclasses.dataclass
class Relays:
    net: Network
    keys: list[SigningKey]
    settings: list[dict]

    def __getitem__(self, index: int) -> Node:
        return self.net.nodes[index]

    async def restart(self, index: int) -> Node:
        old = self[index]
        await self.net.stop(index)
        self.net.nodes[index] = await _start(self.net, index, self.keys[index], old.port,
                                             **self.settings[index])
        self.net.introduce()
        return self.net.nodes[index]


async def _start(net: Network, index: int, key: SigningKey, port: int = 0, *,
                 access: tuple = (), verify: tuple = ()) -> Node:
    config = dataclasses.replace(
        node_config(net.tmp_path, f"n{index}", port),
        relay_access=tuple(AccessRule(p, r) for p, r in access),
        relay_verify=tuple(VerifyPolicy(v, tuple(s)) for v, s in verify),
    )
    return await start_node(net.nursery, config, key)


@contextlib.asynccontextmanager
async def relays(tmp_path, settings=None) -> AsyncIterator[Relays]:
    """Three nodes; ``settings(keys)`` gives each node's ``access`` and ``verify`` rules."""
    keys = [SigningKey.generate() for _ in range(3)]
    a = keys[0].agent_id
    default = [{}, {"access": ((a, "node:*"), (a, "user:*"))}, {}]
    chosen = settings(keys) if settings else default
    async with trio.open_nursery() as nursery:
        net = Network(nursery, tmp_path)
        for index, key in enumerate(keys):
            net.nodes.append(await _start(net, index, key, **chosen[index]))
        net.introduce()
        try:
            yield Relays(net, keys, chosen)
        finally:
            for node in net.nodes:
                node.stop()


async def query(node: Node, address: str, **params) -> dict:
    """relay.query then relay.wait: the request's final state."""
    started = await node.rpc.call("relay.query", {"address": address, **params})
    return await node.rpc.call("relay.wait", {"request_id": started["request_id"],
                                             "timeout_s": 10})


def addr(source: Node, view: str, network: str = "agentd") -> str:
    return f"{source.listen_address}/{network}/{view}"


def row(node: Node, request_id: str):
    return node.db.read_one("SELECT * FROM relay_requests WHERE request_id = ?", (request_id,))


async def send_raw(sender: Node, receiver: Node, action: str, obj: dict) -> str | None:
    """Send one relay message as ``sender`` would; returns the receiver's refusal or None."""
    to = ChipAddress(agent=receiver.agent_id, host="127.0.0.1", port=receiver.port)

    message_id = await sender.transact(lambda tx: tx.send(Send(to, "relay", action, obj)))

    def settled():
        """the message was acked (row deleted) or refused (row failed)"""
        found = sender.db.read_one("SELECT state FROM outbox WHERE id = ?", (message_id,))
        return found is None or found["state"] == "failed"

    await wait_for(settled)
    found = sender.db.read_one("SELECT error FROM outbox WHERE id = ?", (message_id,))
    return None if found is None else found["error"]


async def rpc_error(node: Node, method: str, params: dict) -> RpcError:
    with pytest.raises(RpcError) as caught:
        await node.rpc.call(method, params)
    return caught.value


class Recorder(Service):
    """Stands in for a source relay that the test scripts: it records queries, answers none."""

    target = "relay"

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        self.queries: list[Query] = []

    def handle(self, tx, envelope) -> None:
        self.queries.append(Query.from_map(envelope.object))


# -- the happy paths ---------------------------------------------------------------------


async def test_query_returns_at_once_and_completes_with_a_verified_view(tmp_path):
    async with relays(tmp_path) as net:
        a, b = net[0], net[1]
        await b.rpc.call("users.add", {"cuid": "bob"})
        started = await a.rpc.call("relay.query", {"address": addr(b, "user:bob:balance")})
        request_id = started["request_id"]
        assert started == {"request_id": request_id}
        assert str(uuid.UUID(request_id)) == request_id
        done = await a.rpc.call("relay.wait", {"request_id": request_id})
        assert done["status"] == "COMPLETED" and done["status_code"] == 3
        view = done["view"]
        assert view["payload"] == {"cuid": "bob", "balance": 0, "tallies": 0}
        assert view["signers"] == [b.agent_id]
        assert view["address"] == addr(b, "user:bob:balance")
        assert view["nonce"] == row(a, request_id)["nonce"]
        assert view["requestor"] == a.agent_id and view["confidential"] is False
        # reading never destroys the result
        assert await a.rpc.call("relay.state", {"request_id": request_id}) == done
        assert await a.rpc.call("relay.wait", {"request_id": request_id}) == done
        assert await a.rpc.call("relay.wait", {"request_id": request_id, "timeout_s": 0}) == (
            done)  # 0: a look, as tally.wait and lift.wait take it
        assert b.db.read_one("SELECT count(*) FROM relay_nonces")[0] == 1

        # the relay named by agent id, and node:info
        info = await query(a, f"{b.agent_id}/agentd/node:info")
        assert info["view"]["payload"] == {"agent": b.agent_id, "name": "n1",
                                           "network": "agentd", "version": info["view"][
                                               "payload"]["version"], "users": 1}
        await wait_for(lambda: a.pump.depth == 0 and b.pump.depth == 0)


async def test_a_node_can_query_itself(tmp_path):
    def settings(keys):
        return [{"access": ((keys[0].agent_id, "node:*"),)}, {}, {}]

    async with relays(tmp_path, settings) as net:
        a = net[0]
        done = await query(a, addr(a, "node:info"))
        assert done["status"] == "COMPLETED"
        assert done["view"]["payload"]["agent"] == a.agent_id


async def test_confidential_view_is_readable_by_the_requestor_only(tmp_path):
    async with relays(tmp_path) as net:
        a, b, c = net[0], net[1], net[2]
        await b.rpc.call("users.add", {"cuid": "bob"})
        address = addr(b, "user:bob:balance")
        done = await query(a, address, confidential=True)
        assert done["status"] == "COMPLETED"
        assert done["view"]["confidential"] is True
        assert done["view"]["payload"] == {"cuid": "bob", "balance": 0, "tallies": 0}
        stored = row(a, done["request_id"])
        # the notarized view as the source sent it: its payload is ciphertext
        view = View.from_map(unpack(stored["view"]))
        sealed = verify_view(view, [b.agent_id]).interop.payload
        assert unpack(stored["result"]) == done["view"]["payload"]
        assert stored["result"] not in sealed
        context = canonical({"address": address, "nonce": stored["nonce"],
                             "requestor": a.agent_id})
        assert unseal(sealed, a.key, context) == stored["result"]
        with pytest.raises(DecryptionError):
            unseal(sealed, c.key, context)
        with pytest.raises(ProofError):
            open_view(view, c.key, [b.agent_id], address, stored["nonce"])


# -- refusals ------------------------------------------------------------------------------


async def test_refused_and_failed_queries_end_in_error(tmp_path):
    async with relays(tmp_path) as net:
        a, b, c = net[0], net[1], net[2]
        denied = await query(c, addr(b, "node:info"))
        assert denied["status"] == "ERROR" and denied["status_code"] == 2
        assert denied["error"] == (  # and where the source's operator grants it
            f"the source refused the query: ACCESS_DENIED: no access rule lets {c.agent_id} "
            "read 'node:info': a [[relay.access]] rule in the source's config would grant it")
        network = await query(a, addr(b, "node:info", network="othernet"))
        assert "UNKNOWN_NETWORK" in network["error"] and "othernet" in network["error"]
        missing = await query(a, addr(b, "user:nobody:balance"))
        assert missing["status"] == "ERROR" and "NOT_FOUND" in missing["error"]
        assert "nobody" in missing["error"]
        tally = await query(c, addr(b, f"tally:{uuid.uuid4()}"))  # no access comes first
        assert "ACCESS_DENIED" in tally["error"]
        assert "view" not in denied and "view" not in missing
        assert b.db.read_one("SELECT count(*) FROM relay_nonces")[0] == 1  # only 'missing'


async def test_unknown_tallies_and_lifts_are_not_found(tmp_path):
    def settings(keys):
        return [{}, {"access": (("*", "tally:*"), ("*", "lift:*"))}, {}]

    async with relays(tmp_path, settings) as net:
        a, b = net[0], net[1]
        for view in (f"tally:{uuid.uuid4()}", f"tally:{uuid.uuid4()}:chits",
                     f"lift:{uuid.uuid4()}"):
            done = await query(a, addr(b, view))
            assert done["status"] == "ERROR", view
            assert "NOT_FOUND" in done["error"] and view.split(":")[1] in done["error"]


async def test_bad_parameters_are_invalid_params_naming_the_problem(tmp_path):
    async with relays(tmp_path) as net:
        a, b = net[0], net[1]
        cases = [
            ({"address": "no-slashes"}, "RELAY/NETWORK/VIEW"),
            ({"address": "127.0.0.1:99999/agentd/node:info"}, "port"),
            ({"address": f"{b.listen_address}/bad net/node:info"}, "network"),
            ({"address": addr(b, "bogus:view")}, "unknown view"),
            ({"address": addr(b, "user:bob:balance"), "policy": "not-an-agent"},
             'policy must be one or more agent ids, comma-separated or a list: "not-an-agent" '
             "is not an agent id"),
            ({"address": addr(b, "node:info"), "policy": f"{b.agent_id}, {'x' * 99}"},
             f'a list: "{"x" * 56}... is not an agent id'),  # the bad one, cut short
            ({"address": addr(b, "node:info"), "policy": []}, "or a list, not []"),
            ({"address": addr(b, "node:info"), "policy": ""}, 'a list: "" is not an agent id'),
            ({"address": addr(b, "node:info"), "confidential": "yes"}, "confidential"),
            ({"address": addr(b, "node:info"), "timeout_s": 0}, "timeout_s"),
        ]
        for params, words in cases:
            error = await rpc_error(a, "relay.query", params)
            assert error.code == INVALID_PARAMS, params
            assert words in error.message, (params, error.message)
        nowhere = {"address": "127.0.0.1:1/agentd/node:info"}
        unknown_peer = await rpc_error(a, "relay.query", nowhere)
        assert unknown_peer.code == NOT_FOUND and "127.0.0.1:1" in unknown_peer.message
        for method in ("relay.state", "relay.wait", "relay.delete"):
            bad = await rpc_error(a, method, {"request_id": "nope"})
            assert bad.code == INVALID_PARAMS and "request_id" in bad.message
            unknown = await rpc_error(a, method, {"request_id": str(uuid.uuid4())})
            assert unknown.code == NOT_FOUND and unknown.reason == "UNKNOWN_REQUEST"
        assert a.db.read_one("SELECT count(*) FROM relay_requests")[0] == 0


async def test_a_peer_that_only_connected_to_us_is_reached_by_agent_id_not_by_address(
        tmp_path):
    """n1 knows n0 and opens a channel to it; n0 never learned n1. Its listen address is what
    n1 claims, so HOST:PORT does not resolve to it; its agent id works over that channel."""
    keys = [SigningKey.generate() for _ in range(2)]
    async with trio.open_nursery() as nursery:
        net = Network(nursery, tmp_path)
        dest = await _start(net, 0, keys[0])
        source = await _start(net, 1, keys[1],
                              access=((keys[0].agent_id, "node:*"),))
        net.nodes += [dest, source]
        try:
            by_agent = {"address": f"{source.agent_id}/agentd/node:info"}
            unknown = await rpc_error(dest, "relay.query", by_agent)  # no channel yet
            assert (unknown.code, unknown.reason) == (NOT_FOUND, "UNKNOWN_PEER")
            assert source.agent_id in unknown.message and "peers.add" in unknown.message

            source.learn_peer(dest.agent_id, dest.listen_address, "n0")
            await source.rpc.call("peers.ping", {"agent": dest.agent_id})
            assert dest.connected(source.agent_id) and dest.address_of(source.agent_id) is None

            by_address = await rpc_error(dest, "relay.query", {"address": addr(source,
                                                                               "node:info")})
            assert (by_address.code, by_address.reason) == (NOT_FOUND, "UNKNOWN_PEER")
            assert source.listen_address in by_address.message
            assert "agent id" in by_address.message and "peers.add" in by_address.message

            done = await query(dest, by_agent["address"])
            assert done["status"] == "COMPLETED", done
            assert done["view"]["payload"]["agent"] == source.agent_id
            assert dest.address_of(source.agent_id) is None  # still not dialled, nor stored
        finally:
            for node in net.nodes:
                node.stop()


async def test_source_refuses_bad_signatures_other_requestors_unknown_views_and_replays(
        tmp_path):
    async with relays(tmp_path) as net:
        a, b, c = net[0], net[1], net[2]
        address = f"{b.agent_id}/agentd/node:info"

        def signed(key: SigningKey, view_address: str = address, nonce: str | None = None):
            return make_query(NetworkQuery(address=view_address), request_id=str(uuid.uuid4()),
                              nonce=nonce or new_nonce(os.urandom(16)), node_key=key,
                              network="agentd")

        forged = dataclasses.replace(
            signed(a.key), requestor_signature=c.key.sign(b"something else entirely"))
        assert "BAD_SIGNATURE" in await send_raw(a, b, "query", forged.to_map())
        borrowed = signed(a.key)  # a's valid query, relayed by c
        assert "NOT_REQUESTOR" in await send_raw(c, b, "query", borrowed.to_map())
        unknown = signed(a.key, f"{b.agent_id}/agentd/bogus:view")
        assert "UNKNOWN_VIEW" in await send_raw(a, b, "query", unknown.to_map())
        elsewhere = signed(a.key, f"{c.agent_id}/agentd/node:info")
        assert "WRONG_RELAY" in await send_raw(a, b, "query", elsewhere.to_map())
        malformed = {**signed(a.key).to_map(), "nonce": "short"}
        assert "BAD_QUERY" in await send_raw(a, b, "query", malformed)
        assert b.db.read_one("SELECT count(*) FROM relay_nonces")[0] == 0

        done = await query(a, address)
        assert done["status"] == "COMPLETED"
        replay = signed(a.key, nonce=row(a, done["request_id"])["nonce"])
        assert "REPLAYED_NONCE" in await send_raw(a, b, "query", replay.to_map())
        assert b.db.read_one("SELECT count(*) FROM relay_nonces")[0] == 1


# -- answers: only from the source asked, verified, monotonic ----------------------------


def _view(source: SigningKey, query_: Query, payload: dict) -> View:
    return make_view(canonical(payload), query_.address, query_.nonce, query_.certificate,
                     False, source, 1_700_000_000_000)


async def test_only_the_queried_source_may_answer_and_late_acks_change_nothing(tmp_path):
    async with relays(tmp_path) as net:
        a, b, c = net[0], net[1], net[2]
        recorder = Recorder(b)
        b.dispatcher.register(recorder)
        started = await a.rpc.call("relay.query", {"address": addr(b, "node:info")})
        request_id = started["request_id"]
        await wait_for(lambda: len(recorder.queries) == 1)
        asked = recorder.queries[0]
        assert asked.request_id == request_id

        from_c = ViewPayload(request_id, view=_view(c.key, asked, {"forged": True}))
        assert "NOT_ASKED" in await send_raw(c, a, "view", from_c.to_map())
        ack_c = Ack(AckStatus.OK, request_id)
        assert "NOT_ASKED" in await send_raw(c, a, "ack", ack_c.to_map())
        stray = ViewPayload(str(uuid.uuid4()), view=_view(b.key, asked, {"x": 1}))
        assert "UNKNOWN_REQUEST" in await send_raw(b, a, "view", stray.to_map())
        state = await a.rpc.call("relay.state", {"request_id": request_id})
        assert state == {"request_id": request_id, "status": "PENDING_ACK", "status_code": 0}

        # the view overtakes the ack; the late ack (PENDING) must not overwrite COMPLETED
        answer = ViewPayload(request_id, view=_view(b.key, asked, {"answer": 42}))
        assert await send_raw(b, a, "view", answer.to_map()) is None
        done = await a.rpc.call("relay.state", {"request_id": request_id})
        assert done["status"] == "COMPLETED" and done["view"]["payload"] == {"answer": 42}
        assert await send_raw(b, a, "ack", Ack(AckStatus.OK, request_id).to_map()) is None
        refused = Ack(AckStatus.ERROR, request_id, "too late")
        assert await send_raw(b, a, "ack", refused.to_map()) is None
        again = ViewPayload(request_id, view=_view(b.key, asked, {"answer": 43}))
        assert await send_raw(b, a, "view", again.to_map()) is None
        assert await a.rpc.call("relay.state", {"request_id": request_id}) == done


async def test_an_ack_moves_to_pending_and_an_error_ack_to_error(tmp_path):
    async with relays(tmp_path) as net:
        a, b = net[0], net[1]
        recorder = Recorder(b)
        b.dispatcher.register(recorder)
        first = (await a.rpc.call("relay.query", {"address": addr(b, "node:info")}))["request_id"]
        second = (await a.rpc.call("relay.query", {"address": addr(b, "node:info")}))["request_id"]
        await wait_for(lambda: len(recorder.queries) == 2)
        assert await send_raw(b, a, "ack", Ack(AckStatus.OK, first).to_map()) is None
        assert (await a.rpc.call("relay.state", {"request_id": first}))["status"] == "PENDING"
        no = Ack(AckStatus.ERROR, second, "driver offline")
        assert await send_raw(b, a, "ack", no.to_map()) is None
        state = await a.rpc.call("relay.wait", {"request_id": second})
        assert state["status"] == "ERROR" and "driver offline" in state["error"]
        # relay.wait on a request still pending returns its state when the wait times out
        pending = await a.rpc.call("relay.wait", {"request_id": first, "timeout_s": 0.05})
        assert pending["status"] == "PENDING"


async def test_views_signed_by_the_wrong_key_or_nested_too_deep_are_rejected(tmp_path):
    async with relays(tmp_path) as net:
        a, b = net[0], net[1]
        intruder = SigningKey.generate()
        recorder = Recorder(b)
        b.dispatcher.register(recorder)
        ids = [(await a.rpc.call("relay.query", {"address": addr(b, "node:info")}))["request_id"]
               for _ in range(4)]
        await wait_for(lambda: len(recorder.queries) == 4)
        asked = {q.request_id: q for q in recorder.queries}

        # notarized by another key: the required signer (the source) is missing
        wrong = ViewPayload(ids[0], view=_view(intruder, asked[ids[0]], {"x": 1}))
        assert await send_raw(b, a, "view", wrong.to_map()) is None
        # claims the source as signer, but the signature is the intruder's
        interop = InteropPayload(canonical({"x": 1}), asked[ids[1]].address, asked[ids[1]].nonce,
                                 a.agent_id, False)
        proof = {"signer": b.agent_id, "signature": intruder.sign(digest(interop.to_map()))}
        forged = View(Meta("agentd", 1, "Notarization", "MSGPACK"),
                      canonical({"interop_payload": interop.to_map(), "proofs": [proof]}))
        assert await send_raw(b, a, "view", ViewPayload(ids[1], view=forged).to_map()) is None
        # a genuine view, but for another request's nonce
        swapped = ViewPayload(ids[2], view=_view(b.key, asked[ids[0]], {"x": 1}))
        assert await send_raw(b, a, "view", swapped.to_map()) is None

        # well signed by the source, but its payload nests lists ~1,000 deep: stored, it
        # could never be shown as JSON again
        deep, deep_id = b"\x91" * 950 + b"\xc0", ids[3]
        nested = make_view(deep, asked[deep_id].address, asked[deep_id].nonce,
                           asked[deep_id].certificate, False, b.key, 1_700_000_000_000)
        assert await send_raw(b, a, "view", ViewPayload(deep_id, view=nested).to_map()) is None
        deep_state = await a.rpc.call("relay.state", {"request_id": deep_id})
        assert deep_state["status"] == "ERROR" and "nested deeper" in deep_state["error"]

        states = [await a.rpc.call("relay.state", {"request_id": i}) for i in ids[:3]]
        assert all(s["status"] == "ERROR" and "view" not in s for s in states)
        assert "required signer(s) " + b.agent_id in states[0]["error"]
        assert f"notarization by {b.agent_id} does not verify" in states[1]["error"]
        assert "nonce" in states[2]["error"]


async def test_verification_policy_requires_every_listed_signer(tmp_path):
    def settings(keys):
        a, b, c = (k.agent_id for k in keys)
        return [{"verify": (("node:*", (b, c)),)}, {"access": ((a, "node:*"),)}, {}]

    async with relays(tmp_path, settings) as net:
        a, b, c = net[0], net[1], net[2]
        configured = await query(a, addr(b, "node:info"))
        assert configured["status"] == "ERROR"
        assert f"required signer(s) {c.agent_id}" in configured["error"]
        # policy= on the request replaces the configured policy for that request
        relaxed = await query(a, addr(b, "node:info"), policy=b.agent_id)
        assert relaxed["status"] == "COMPLETED"
        strict = await query(a, addr(b, "node:info"), policy=[b.agent_id, c.agent_id])
        assert f"required signer(s) {c.agent_id}" in strict["error"]


# -- a source that is down, deadlines, cleanup ------------------------------------------


async def test_source_down_stays_pending_ack_and_completes_when_it_returns(tmp_path):
    async with relays(tmp_path) as net:
        a, b = net[0], net[1]
        address = addr(b, "node:info")
        await net.net.stop(1)
        failures = dial_failures(a)
        started = await a.rpc.call("relay.query", {"address": address, "timeout_s": 30})
        request_id = started["request_id"]
        await wait_for(lambda: failures, timeout=10)  # the pump tried to dial, and keeps it
        state = await a.rpc.call("relay.state", {"request_id": request_id})
        assert state["status"] == "PENDING_ACK"
        assert a.pump.depth == 1
        await net.restart(1)
        done = await a.rpc.call("relay.wait", {"request_id": request_id, "timeout_s": 15})
        assert done["status"] == "COMPLETED"


async def test_deadline_or_delete_ends_an_unanswered_request_and_withdraws_it(tmp_path):
    async with relays(tmp_path) as net:
        a = net[0]
        await net.net.stop(1)
        started = await a.rpc.call("relay.query", {"address": addr(net[1], "node:info"),
                                                   "timeout_s": 0.3})
        request_id = started["request_id"]
        done = await a.rpc.call("relay.wait", {"request_id": request_id, "timeout_s": 10})
        assert done["status"] == "ERROR"
        assert "deadline passed" in done["error"] and "did not acknowledge" in done["error"]
        assert a.pump.depth == 0  # the query was withdrawn from the outbox
        withdrawn = a.db.read_one("SELECT state, error FROM outbox WHERE id = ?",
                                  (row(a, request_id)["query_id"],))
        assert tuple(withdrawn) == ("failed", "relay request expired")

        # deleting a request that is still pending withdraws its query too
        started = await a.rpc.call("relay.query", {"address": addr(net[1], "node:info")})
        assert a.pump.depth == 1
        deleted = await a.rpc.call("relay.delete", started)
        assert deleted["status"] == "DELETED" and a.pump.depth == 0
        withdrawn = a.db.read_one("SELECT state, error FROM outbox WHERE id = ?",
                                  (row(a, started["request_id"])["query_id"],))
        assert tuple(withdrawn) == ("failed", "relay request deleted")


async def test_delete_and_the_ttl_sweep(tmp_path):
    async with relays(tmp_path) as net:
        a, b = net[0], net[1]
        first, second = [await query(a, addr(b, "node:info")) for _ in range(2)]
        deleted = await a.rpc.call("relay.delete", {"request_id": first["request_id"]})
        assert deleted == {"request_id": first["request_id"], "status": "DELETED",
                           "status_code": 7}
        assert row(a, first["request_id"])["view"] is None
        assert await a.rpc.call("relay.wait", {"request_id": first["request_id"]}) == deleted
        assert await a.rpc.call("relay.delete", {"request_id": first["request_id"]}) == deleted

        await trio.sleep(0.01)
        assert (await a.relay.sweep())["retired"] == 0  # within the TTL: kept
        a.relay.result_ttl_ms = 0
        swept = await a.relay.sweep()
        assert swept["retired"] == 1 and swept["pruned"] == 0
        state = await a.rpc.call("relay.state", {"request_id": second["request_id"]})
        assert state["status"] == "DELETED" and "view" not in state
        await trio.sleep(0.01)
        a.relay.deleted_ttl_ms = 0
        assert (await a.relay.sweep())["pruned"] == 2
        error = await rpc_error(a, "relay.state", {"request_id": second["request_id"]})
        assert error.code == NOT_FOUND
        b.relay.nonce_ttl_ms = 0
        assert (await b.relay.sweep())["nonces"] == 2


def test_bad_relay_config_is_a_startup_error_naming_the_key(tmp_path):
    config = node_config(tmp_path, "n0")
    key = SigningKey.generate()
    cases = [
        ({"relay_access": (AccessRule("*", "user:*:balance*"),)}, "relay.access[0]"),
        ({"relay_verify": (VerifyPolicy("node:*", ()),)}, "relay.verify[0]"),
    ]  # a network no address can name is the config's to refuse (tests/test_config.py)
    for change, words in cases:
        with pytest.raises(UserError, match=re.escape(words)):
            Node(dataclasses.replace(config, **change), key)


