"""What a stranger can make a referee keep: a void decision is forgotten a month after its
record's deadline (asked again, the referee decides void again), a record whose deadline no hop
would take is refused, and a good decision is kept and answered again the same."""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any

from agentd.runtime.context import Reject
from protocol import lift as lf
from protocol.codec import pack
from protocol.keys import SigningKey
from store import lifts as lift_store
from store.schema import migrate
from tests.netfixture import network, wait_for
from tests.test_credit_service import processed, refusal_of, send_raw
from tests.test_lift_pruning import AMonthLater
from tests.test_lifts import line, rpc, settled_everywhere, who

STRANGERS = 20


def decisions(node) -> dict[tuple[str, bytes], tuple[str, bytes]]:
    return {(row["lift"], row["record_hash"]): (row["state"], row["decision"])
            for row in node.db.read("SELECT * FROM lift_decisions")}


async def test_a_strangers_void_decisions_go_a_month_on_and_honest_ones_answer_the_same(
        tmp_path):
    async with network(tmp_path, n=6, clearinghouse=0) as net:
        world = await line(net)
        u = world["users"]
        ann, cat, dan, house, mallory = u["ann"], u["cat"], u["dan"], net.nodes[0], net.nodes[5]
        await rpc(mallory, "users.add", cuid="me")
        good = await rpc(ann, "lift.pay", cuid="ann", find=who(dan, "dan"), units=100)
        await settled_everywhere(list(u.values()), good["lift"], "good")

        def no_room(tx, envelope):
            raise Reject("OVER_LIMIT", "no room (a test)")

        cat.credit.lifts._on_promise = no_room
        void = await rpc(ann, "lift.pay", cuid="ann", find=who(dan, "dan"), units=100)
        await settled_everywhere([ann], void["lift"], "void")

        def made_up(life_ms: int = 60_000) -> dict[str, Any]:
            path = [{"cuid": "x", "agent": SigningKey.generate().agent_id,
                     "tally": str(uuid.uuid4())},
                    {"cuid": "me", "agent": mallory.agent_id, "tally": None}]
            return lf.make_record(lift_uuid=str(uuid.uuid4()), kind="linear", units=5,
                                  path=path, referee=house.own_address(),
                                  date_ms=mallory.clock.now_ms(), life_ms=life_ms, memo="",
                                  key=SigningKey.generate())

        strangers = [made_up() for _ in range(STRANGERS)]
        for record in strangers:
            await processed(mallory, await send_raw(
                mallory, house, None, "lift", "cancel", {"record": record, "reason": "x"},
                None))
        far = made_up(life_ms=lf.MAX_LIFE_MS + 60_000)  # no hop takes it; kept, it could
        assert "BAD_FIELD" in await refusal_of(mallory, await send_raw(  # not be forgotten
            mallory, house, None, "lift", "cancel", {"record": far, "reason": "x"}, None))
        kept = decisions(house)
        assert sorted(state for state, _ in kept.values()) == ["good"] + ["void"] * (
            STRANGERS + 1)
        assert far["lift"] not in {lift for lift, _ in kept}

        house.clock = AMonthLater()
        await house._maintenance()
        good_key = next(key for key, (state, _) in kept.items() if state == "good")
        assert decisions(house) == {good_key: kept[good_key]}  # every void one went

        heard: list[dict[str, Any]] = []
        handle = ann.credit.lifts.decisions.handle

        def hearing(tx, envelope):
            heard.append(envelope.object["decision"])
            handle(tx, envelope)

        ann.credit.lifts.decisions.handle = hearing
        records = {lift: lift_store.record_of(ann.db.read_one(
            "SELECT record FROM lifts WHERE lift = ?", (lift,)))
            for lift in (good["lift"], void["lift"])}
        for lift in (good["lift"], void["lift"]):  # asked again, a month on
            await send_raw(ann, house, None, "lift", "query", {"record": records[lift]}, "ann")
            await wait_for(lambda lift=lift: any(d["lift"] == lift for d in heard))
        answers = {d["lift"]: d for d in heard}
        assert pack(answers[good["lift"]]) == kept[good_key][1]  # the same, signed once
        assert answers[void["lift"]]["state"] == "void"  # void again, signed anew
        for lift, state in ((good["lift"], "good"), (void["lift"], "void")):
            shown = await rpc(ann, "lift.show", lift=lift)
            assert shown["state"] == state
        assert ann.db.read("SELECT * FROM equivocators") == []
        assert lift_store.contradiction_of(ann.db.read_one(
            "SELECT * FROM lifts WHERE lift = ?", (void["lift"],))) is None

        # the terminus of a forgotten record commits: past its deadline, void again
        await processed(mallory, await send_raw(mallory, house, None, "lift", "commit",
                                                {"record": strangers[0]}, None))
        again = [state for (lift, _), (state, _) in decisions(house).items()
                 if lift == strangers[0]["lift"]]
        assert again == ["void"]


def test_the_hourly_look_for_old_void_decisions_reads_only_void_rows() -> None:
    """A referee keeps every good decision for ever: the prune's query goes through the
    index of void rows (migration 020), not through all of them."""
    conn = sqlite3.connect(":memory:")
    migrate(conn)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    assert lift_store.prune_void_decisions(conn, 10**13) == 0
    conn.set_trace_callback(None)
    select = next(sql for sql in statements if sql.startswith("SELECT"))
    plan = conn.execute(f"EXPLAIN QUERY PLAN {select}").fetchall()
    assert "USING INDEX lift_decisions_void" in plan[0][3]
