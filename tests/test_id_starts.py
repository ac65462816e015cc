"""``-H`` shows tally, chit and lift ids by their start (``cdfd881a…``): the methods take
that start (with or without the ``…``, 8 characters or more) when one id of the user's (a
lift: of the node's) starts so, so a person can copy what the table shows."""

from __future__ import annotations

import re
import sqlite3

import pytest

from agentd.human import render
from agentd.rpc import NOT_FOUND
from store import id_starts
from store.schema import migrate
from tests.netfixture import network, wait_for
from tests.test_credit_service import refused, rpc
from tests.test_lifts import triangle

WHOLE = "a uuid like 3f2a5b1c-9d4e-4f7a-8b6c-1d2e3f4a5b6c"


def shown(method: str, result: object, column: int) -> str:
    """The first row's cell in ``column`` as ``-H`` prints it."""
    return render(method, result).splitlines()[1].split()[column]


async def test_the_start_of_an_id_as_a_table_shows_it_names_the_tally_chit_and_lift(tmp_path):
    async with network(tmp_path, n=4, clearinghouse=0) as net:
        users, ab, bc, _ = await triangle(net)
        ann = users["ann"]
        start = shown("tally.list", await rpc(ann, "tally.list", cuid="ann"), 0)
        assert start.endswith("…") and len(start) == 9
        tally = next(t["tally"] for t in await rpc(ann, "tally.list", cuid="ann")
                     if t["tally"].startswith(start[:-1]))
        for given in (start, start[:-1], start[:-1] + "...", start.upper(), tally[:12],
                      tally, tally + "…", tally.upper()):
            assert (await rpc(ann, "tally.show", cuid="ann", tally=given))["tally"] == tally
        paid = await rpc(ann, "chit.pay", cuid="ann", tally=start, units=5)
        chits = await rpc(ann, "chit.list", cuid="ann", tally=start[:-1])
        assert paid["chit"] in [chit["chit"] for chit in chits]

        invoice = await rpc(users["bob"], "chit.invoice", cuid="bob", tally=ab, units=7)
        await wait_for(lambda: ann.db.read(
            "SELECT 1 FROM chits WHERE cuid = 'ann' AND uuid = ? AND state = 'L.pend'",
            (invoice["chit"],)))
        refused_now = await rpc(ann, "chit.refuse", cuid="ann", chit=invoice["chit"][:8] + "…")
        assert refused_now["chit"] == invoice["chit"]

        lift = (await rpc(ann, "lift.clear", cuid="ann"))["lift"]
        assert (await rpc(ann, "lift.wait", lift=lift[:8] + "…", timeout_s=30))["lift"] == lift
        assert (await rpc(ann, "lift.show", lift=lift[:10]))["state"] == "good"
        referee = net.nodes[0]  # the clearing house: it decided the lift, holding no chit
        assert (await rpc(referee, "lift.show", lift=lift[:8] + "…"))["lift"] == lift

        none = "00000000" if not lift.startswith("00000000") else "ffffffff"
        missing = await refused(ann, "lift.show", lift=none + "…")
        assert (missing.code, missing.reason, missing.message) == (
            NOT_FOUND, "UNKNOWN_LIFT", f"this node knows no lift whose id starts {none} (the "
            f"whole id is {WHOLE})")
        elsewhere = await refused(ann, "tally.show", cuid="ann", tally=bc[:8])  # bob's
        assert (elsewhere.reason, elsewhere.message) == ("UNKNOWN_TALLY", (
            f"user ann holds no tally whose id starts {bc[:8]} (the whole id is {WHOLE})"))
        assert (await refused(ann, "tally.show", cuid="zed", tally=start)).reason == \
            "UNKNOWN_USER"
        # too short to be safe (a mistyped 4 could name another tally), or no id's shape
        for not_one in (tally[:7], tally[:4] + "…", tally.replace("-", "")[:12], "ghijklmn",
                        "xxxxxxxx", "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", tally[:-2] + "xx"):
            bad = await refused(ann, "chit.pay", cuid="ann", tally=not_one, units=1)
            assert (bad.reason, bad.message) == ("INVALID_PARAMS", (
                f"chit.pay: tally must be {WHOLE}, or its start as -H shows it (8 characters "
                f"or more: 3f2a5b1c…), not {not_one!r}"))


def test_a_start_searches_the_users_ids_by_the_id_and_finds_two_at_most():
    conn = sqlite3.connect(":memory:")
    migrate(conn)
    rows = [("cdfd881a-0000-4000-8000-000000000000", "ann"),
            ("cdfd881a-1111-4000-8000-000000000000", "ann"),
            ("cdfd881a-2222-4000-8000-000000000000", "ann"),
            ("cdfd881a-3333-4000-8000-000000000000", "bob"),
            ("cdfe0000-0000-4000-8000-000000000000", "ann")]  # just past every cdfd start
    conn.executemany("INSERT INTO tallies (uuid, cuid, side, state, body, token, created,"
                     " updated) VALUES (?, ?, 'stock', 'open', x'', x'', 0, 0)", rows)
    conn.execute("INSERT INTO tally_requests (tally, cuid, inviter, created) VALUES"
                 " ('cdfd881b-0000-4000-8000-000000000000', 'ann', 'AGENT', 0)")
    assert id_starts.tallies(conn, "ann", "cdfd881a") == [
        "cdfd881a-0000-4000-8000-000000000000", "cdfd881a-1111-4000-8000-000000000000"]
    assert id_starts.tallies(conn, "ann", "cdfd881a-1") == [
        "cdfd881a-1111-4000-8000-000000000000"]
    assert id_starts.tallies(conn, "bob", "cdfd881a") == [
        "cdfd881a-3333-4000-8000-000000000000"]
    assert id_starts.tallies(conn, "ann", "cdfd881b") == [
        "cdfd881b-0000-4000-8000-000000000000"]  # presented, not held yet
    assert id_starts.tallies(conn, "ann", "cdfd881c") == []
    plan = " ".join(row[-1] for row in conn.execute(
        "EXPLAIN QUERY PLAN SELECT uuid FROM tallies WHERE uuid >= ? AND uuid < ?"
        " AND +cuid = ?", ("a", "ag", "ann")))
    assert re.search(r"PRIMARY KEY \(uuid>\? AND uuid<\?\)", plan), plan  # not every tally


@pytest.mark.parametrize("start", ["cdfd881a", "cdfd881a-1"])
def test_the_ids_two_users_share_a_start_of_are_told_apart(start):
    """The user's ids alone: bob's ``cdfd881a-3333…`` makes no start of ann's ambiguous."""
    conn = sqlite3.connect(":memory:")
    migrate(conn)
    conn.executemany("INSERT INTO tallies (uuid, cuid, side, state, body, token, created,"
                     " updated) VALUES (?, ?, 'stock', 'open', x'', x'', 0, 0)",
                     [("cdfd881a-1111-4000-8000-000000000000", "ann"),
                      ("cdfd881a-1111-4000-8000-000000000000", "bob")])
    assert id_starts.tallies(conn, "ann", start) == ["cdfd881a-1111-4000-8000-000000000000"]
