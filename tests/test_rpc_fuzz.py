"""Every RPC method, any params: an answer, or an error that is the caller's (-32602 naming
the param, a refusal naming its reason), never an internal error (-32603), and the node
works on. Hypothesis draws the calls; they run on real nodes (a clearing house, two clients
with a user each and an open tally between them) through the control socket's line handler.
"""

from __future__ import annotations

import json

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentd.methods import describe, registry
from agentd.rpc import INTERNAL_ERROR
from tests.netfixture import network, wait_for

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False,
                                                                          allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=6)
ZERO_UUID = "00000000-0000-4000-8000-000000000000"
LONE_SURROGATE = "a\ud800"  # valid JSON ("\\ud800"), but not text UTF-8 can carry
# params that make a call wait: always given, and then never long (see ``values``)
WAITING = {"timeout_s", "count", "life_s"}


async def _open_tally(a, b) -> str:
    invited = await a.rpc.call("tally.invite", {"cuid": "alice", "limit": 10_000})
    await b.rpc.call("tally.request", {"cuid": "bob", "ticket": invited["ticket"]})
    tally = invited["tally"]
    await wait_for(lambda: a.db.read_one("SELECT state FROM tallies WHERE uuid = ?",
                                         (tally,))["state"] == "P.draft")
    await a.rpc.call("tally.offer", {"cuid": "alice", "tally": tally})
    await wait_for(lambda: (row := b.db.read_one("SELECT state FROM tallies WHERE uuid = ?",
                                                 (tally,))) is not None
                   and row["state"] == "P.offer")
    await b.rpc.call("tally.accept", {"cuid": "bob", "tally": tally})
    await wait_for(lambda: a.db.read_one("SELECT state FROM tallies WHERE uuid = ?",
                                         (tally,))["state"] == "open")
    return tally


async def test_any_call_is_answered_or_refused_as_the_callers_mistake(tmp_path):
    async with network(tmp_path, n=3, clearinghouse=0) as net:
        house, a, b = net.nodes
        await a.rpc.call("users.add", {"cuid": "alice"})
        await b.rpc.call("users.add", {"cuid": "bob"})
        tally = await _open_tally(a, b)
        ticket = (await a.rpc.call("tally.invite", {"cuid": "alice"}))["ticket"]
        relay = f"{b.listen_address}/agentd/user:bob"
        values = {  # per param: (values that make a call do real work, values it refuses)
            "cuid": (["alice", "bob"], ["carol", "", LONE_SURROGATE]),
            "tally": ([tally], [ZERO_UUID, "t"]),
            "chit": ([ZERO_UUID], ["c"]), "lift": ([ZERO_UUID], ["l"]),
            "request_id": ([ZERO_UUID], ["r"]),
            "find": ([f"bob:{b.agent_id}", f"alice:{a.agent_id}", str(b.own_address("bob"))],
                     ["bob", f"nobody:{house.agent_id}"]),
            "units": ([1, 100], [10**15, 10**16, 0, -1, 2**63, 2.5]),
            "limit": ([5000], [0, 10**15, -3]), "partner_limit": ([5000], [0, -3]),
            "agent": ([a.agent_id, b.agent_id, house.agent_id], ["x"]),
            "name": (["b2"], ["", "x" * 300, LONE_SURROGATE]),
            "address": ([relay, b.listen_address], ["127.0.0.1:1", "nowhere", f"{relay}:x"]),
            "pid": (["deal-1", tally], ["default", ""]), "id": (["0" * 64], ["2"]),
            "ticket": ([ticket], ["junk"]), "payload": (["a", {"n": 1}], ["x" * 100_000]),
            "entries": ([[{"pid": "deal-1", "payload": "a"}]], [[], [{}], [{"pid": 1}]]),
            "state": (["open", ["open", "void"]], ["opne", []]),
            "owners": ([[b.agent_id]], [["x"]]),
            "memo": (["rent", ""], ["m" * 1001, LONE_SURROGATE]),
            "side": (["stock", "foil"], ["both"]), "mode": (["full", "header", "hash"], ["all"]),
            "method": (["getinfo"], ["nope"]), "sort": (["asc", "desc"], ["up"]),
            "page": ([1], [0]), "size": ([1, 1000], [1001]), "policy": ([[b.agent_id]], ["x"]),
            "chain": ([True, False], []), "timeout_s": ([0, 0.01], [-1, "soon", 10**9, [1]]),
            "count": ([1, 2], [0, -1, 1001, "3", 2.5]), "life_s": ([1, None], [0, -5, "x"]),
        }
        methods = sorted(set(registry()) - {"stop"})
        names_of = {method: [param["name"] for param in describe(method, registry()[method])[
            "params"]] for method in methods}  # outside the strategy: building them draws random
        token = trio.lowlevel.current_trio_token()
        answers: list[dict] = []

        async def ask(line: bytes) -> dict:
            with trio.fail_after(20):
                return await a.rpc.handle_line(line)

        @st.composite
        def calls(draw) -> tuple[str, dict]:
            method = draw(st.sampled_from(methods))
            params = {}
            for name in names_of[method]:
                good, bad = values.get(name, ([], []))
                if name not in WAITING and not draw(st.integers(0, 7)):
                    continue  # left out now and then (a call that waits never omits its bound)
                if good and draw(st.integers(0, 3)):
                    params[name] = draw(st.sampled_from(good))
                else:
                    params[name] = draw(st.sampled_from(bad) | JSON if bad else JSON)
            if draw(st.integers(0, 9)) == 0:
                params[draw(st.text(min_size=1, max_size=8))] = draw(JSON)
            return method, params

        @settings(max_examples=1000, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(calls())
        def call_once(call: tuple[str, dict]) -> None:
            method, params = call
            line = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                               "params": params}).encode()
            answer = trio.from_thread.run(ask, line, trio_token=token)
            assert "result" in answer or answer["error"]["code"] != INTERNAL_ERROR, (
                method, params, answer)
            answers.append(answer)

        await trio.to_thread.run_sync(call_once)
        assert any("result" in answer for answer in answers)
        assert any("error" in answer for answer in answers)
        info = await a.rpc.call("getinfo", {})
        assert info["counters"]["db_errors"] == 0
        assert (await b.rpc.call("tally.show", {"cuid": "bob", "tally": tally}))["state"] in (
            "open", "C.open", "close")
