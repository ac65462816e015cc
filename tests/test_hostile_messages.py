"""Every kind of message a peer can send, captured from real traffic between real nodes (loopback,
Noise, SQLite), then given again to the receiving node's dispatcher as its channel would (encoded
and parsed from bytes) with each field in turn removed or replaced by a hostile value: the wrong
type, out of range, a float, empty, huge, deeply nested. Each must be taken or refused as the
message's fault, never left unacked as if we had failed: a failure of ours is retried by its
sender again and again, which nobody else must be able to cause. Lift records are also signed
again after the change (anyone can sign a record with a key of their own), so the checks behind
the signature are reached too. Afterwards the nodes still pay one another."""

from __future__ import annotations

import copy
import dataclasses
import os
import uuid
from collections.abc import Iterator
from typing import Any

import trio

from agentd.runtime.dispatch import _Heard
from agentd.runtime.node import Node
from protocol import lift as lf
from protocol.codec import CodecError
from protocol.envelope import Envelope, EnvelopeError, parse_frame
from tests.netfixture import network
from tests.test_credit_service import rpc, user_key
from tests.test_lifts import line, who


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


HOSTILE = [None, -1, 2**64 + 5, 1.5, "", "x" * 5000, b"\x00" * 64, [], {"a": 1}, [1, "a"], True,
           nested(200), nested(1000)]
Sample = tuple[Node, Envelope, str]  # the receiving node, the message, the sending agent


def field_paths(value: Any, prefix: tuple = (), depth: int = 0) -> Iterator[tuple]:
    """The path of every map entry and of the first list items, three levels down."""
    items = value.items() if isinstance(value, dict) else (
        enumerate(value[:3]) if isinstance(value, list) else ())
    for key, inner in items:
        yield (*prefix, key)
        if depth < 3:
            yield from field_paths(inner, (*prefix, key), depth + 1)


def changed(obj: dict, path: tuple, value: Any = None, *, remove: bool = False) -> dict:
    obj = copy.deepcopy(obj)
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    if remove:
        parent.pop(path[-1])
    else:
        parent[path[-1]] = value
    return obj


def mutations(sample: Sample, payor_key: Any, referee_key: Any) -> Iterator[dict]:
    obj = sample[1].object
    yield {}
    yield {**obj, "unknown": 1}
    for path in sorted(set(field_paths(obj)), key=repr):
        yield changed(obj, path, remove=True)
        for value in HOSTILE:
            bad = changed(obj, path, value)
            yield bad
            if isinstance(bad.get("record"), dict) and path[:2] != ("record", "sign"):
                yield resigned(bad, path, payor_key, referee_key)


def resigned(obj: dict, path: tuple, payor_key: Any, referee_key: Any) -> dict:
    """The changed record as a new lift, signed again by the payor's key (and its decision
    by the referee's), so only the checks after the signature's can refuse it."""
    record = {**obj["record"], "public": payor_key.public}
    if path[:2] != ("record", "lift"):
        record["lift"] = str(uuid.uuid4())
    try:
        record["sign"] = payor_key.sign(lf.record_digest(record))
        out = {**obj, "record": record}
        if isinstance(obj.get("decision"), dict) and path[:1] != ("decision",):
            decision = {**obj["decision"], "lift": record.get("lift")}
            decision["sign"] = referee_key.sign(lf._decision_digest(decision))
            out["decision"] = decision
    except (TypeError, ValueError, CodecError):  # a value canonical encoding refuses
        return obj
    return out


def capture(nodes: list[Node]) -> dict[tuple, Sample]:
    """The first message of each (target, action, chain command) that reaches any node."""
    captured: dict[tuple, Sample] = {}
    for node in nodes:
        start = node.dispatcher._start

        def recording(envelope, agent, share=None, *, start=start, node=node):
            cmd = envelope.object.get("cmd")
            key = (envelope.target, envelope.action, cmd if isinstance(cmd, str) else None)
            captured.setdefault(key, (node, envelope, agent))
            return start(envelope, agent, share)

        node.dispatcher._start = recording
    return captured


def add_the_rest(captured: dict[tuple, Sample]) -> None:
    """Actions the traffic did not produce, made from a message of the same target."""
    def like(target: str, action: str) -> Sample:
        return next(sample for key, sample in captured.items() if key[:2] == (target, action))

    def make(key: tuple, donor: Sample, obj: dict) -> None:
        node, envelope, agent = donor
        captured[key] = (node, dataclasses.replace(envelope, action=key[1], object=obj), agent)

    commit, offer, query = like("lift", "commit"), like("tally", "offer"), like("relay", "query")
    make(("lift", "cancel", None), commit, commit[1].object)
    make(("lift", "query", None), commit, commit[1].object)
    make(("tally", "draft", None), offer, offer[1].object)
    make(("tally", "void", None), offer, offer[1].object)
    chain = like("chit", "chain")
    for cmd in ("new", "nak", "req", "upd", "ack"):
        captured.setdefault(("chit", "chain", cmd), (
            chain[0], dataclasses.replace(chain[1], object={**chain[1].object, "cmd": cmd}),
            chain[2]))
    make(("relay", "ack", None), query, {"request_id": str(uuid.uuid4()), **query[1].object})
    make(("relay", "view", None), query,
         {"request_id": str(uuid.uuid4()), "view": {"data": b"x"}, **query[1].object})
    log = like("ch", "log")
    make(("ch", "get", None), log, {"pid": log[1].object["pid"], "id": "0" * 64})
    make(("ch", "query", None), log, {"pid": log[1].object["pid"], "page": 1, "size": 10})
    make(("node", "note", None), like("node", "ping"), {"text": "hello"})


async def feed(sample: Sample, objects: list[dict]) -> tuple[int, int, int]:
    """Dispatch each object as a fresh message, as if from the sample's sender, 64 at once
    (they share commits); returns how many were taken, refused and left unacked."""
    node, envelope, agent = sample
    dispatcher = node.dispatcher
    taken = refused = unacked = 0
    for first in range(0, len(objects), 64):
        started = []
        for obj in objects[first:first + 64]:
            fresh = dataclasses.replace(envelope, id=os.urandom(16), object=obj)
            try:
                fresh = parse_frame(fresh.encode())  # as the channel would have read it
            except (CodecError, EnvelopeError):
                refused += 1  # refused by the envelope's own checks
                continue
            started.append((fresh, dispatcher._start(fresh, agent)))
        for fresh, pending in started:
            ack = await dispatcher._finish(_Heard.of(fresh), pending)
            if ack is None:
                unacked += 1
            elif parse_frame(ack).error is None:
                taken += 1
            else:
                refused += 1
    return taken, refused, unacked


async def test_every_message_mangled_field_by_field_is_taken_or_refused(tmp_path):
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        captured = capture(net.nodes)
        world = await line(net)
        u, tl = world["users"], world["tallies"]
        ann, bob, dan = u["ann"], u["bob"], u["dan"]
        paid = await rpc(ann, "lift.pay", cuid="ann", find=who(dan, "dan"), units=50)
        await rpc(ann, "lift.wait", lift=paid["lift"], timeout_s=20)
        await rpc(ann, "chit.pay", cuid="ann", tally=tl["annbob"], units=5)
        invoice = await rpc(bob, "chit.invoice", cuid="bob", tally=tl["annbob"], units=3)
        await rpc(ann, "peers.ping", agent=bob.agent_id, count=1)
        with trio.fail_after(20):
            while ("chit", "pend", None) not in captured:
                await trio.sleep(0.05)
        await rpc(ann, "chit.refuse", cuid="ann", chit=invoice["chit"])
        await rpc(u["cat"], "tally.close", cuid="cat", tally=tl["catdan"])
        await rpc(ann, "relay.query", address=f"{bob.agent_id}/agentd/user:bob:balance")
        await rpc(ann, "ch.log", pid="hostile", payload="a lone entry goes as log")
        with trio.fail_after(20):
            while not {("chit", "void", None), ("tally", "close", None), ("relay", "query", None),
                       ("ch", "log", None), ("ch", "processed_batch", None)} <= set(captured):
                await trio.sleep(0.05)
        add_the_rest(captured)

        payor_key, referee_key = user_key(ann, "ann"), net.nodes[0].key
        totals = {"taken": 0, "refused": 0}
        for key, sample in sorted(captured.items(), key=repr):
            node = sample[0]
            failures = node.counters.unacked_failures
            taken, refused, unacked = await feed(
                sample, list(mutations(sample, payor_key, referee_key)))
            assert unacked == 0 and node.counters.unacked_failures == failures, key
            totals["taken"] += taken
            totals["refused"] += refused
        # every target and action a peer can send was tried, and most of it was refused
        actions = {(target, action) for target, action, _ in captured}
        for node in net.nodes:
            for target, service in node.dispatcher.services.items():
                assert {(target, action) for action in service.actions or ()} <= actions
        assert totals["refused"] > 2 * totals["taken"] > 0
        again = await rpc(ann, "lift.pay", cuid="ann", find=who(u["cat"], "cat"), units=7)
        assert (await rpc(ann, "lift.wait", lift=again["lift"], timeout_s=20))["state"] == "good"
