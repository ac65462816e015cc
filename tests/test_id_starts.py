"""``-H`` shows tally, chit and lift ids by their start (``cdfd881a…``): the methods take
that start (with or without the ``…``) when one id of the user's (a lift: of the node's)
starts so, so a person can copy what the table shows."""

from __future__ import annotations

import re

import pytest

from agentd.human import render
from agentd.rpc import NOT_FOUND, RpcError
from agentd.services.credit.params import param_id
from tests.netfixture import network, wait_for
from tests.test_credit_service import refused, rpc
from tests.test_lifts import triangle


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
        for given in (start, start[:-1], tally[:4], tally):
            assert (await rpc(ann, "tally.show", cuid="ann", tally=given))["tally"] == tally
        paid = await rpc(ann, "chit.pay", cuid="ann", tally=tally[:6] + "…", units=5)
        chits = await rpc(ann, "chit.list", cuid="ann", tally=start)
        assert paid["chit"] in [chit["chit"] for chit in chits]

        invoice = await rpc(users["bob"], "chit.invoice", cuid="bob", tally=ab, units=7)
        await wait_for(lambda: ann.db.read(
            "SELECT 1 FROM chits WHERE cuid = 'ann' AND uuid = ? AND state = 'L.pend'",
            (invoice["chit"],)))
        refused_now = await rpc(ann, "chit.refuse", cuid="ann", chit=invoice["chit"][:8] + "…")
        assert refused_now["chit"] == invoice["chit"]

        lift = (await rpc(ann, "lift.clear", cuid="ann"))["lift"]
        assert (await rpc(ann, "lift.wait", lift=lift[:8] + "…", timeout_s=30))["lift"] == lift
        assert (await rpc(ann, "lift.show", lift=lift[:5]))["state"] == "good"

        none = "0000" if not lift.startswith("0000") else "ffff"
        missing = await refused(ann, "lift.show", lift=none + "…")
        assert (missing.code, missing.reason, missing.message) == (
            NOT_FOUND, "UNKNOWN_LIFT", f"this node knows no lift whose id starts {none} (the "
            "whole id is a uuid like 3f2a5b1c-9d4e-4f7a-8b6c-1d2e3f4a5b6c)")
        elsewhere = await refused(ann, "tally.show", cuid="ann", tally=bc[:8])  # bob's
        assert (elsewhere.reason, elsewhere.message) == ("UNKNOWN_TALLY", (
            f"user ann holds no tally whose id starts {bc[:8]} (the whole id is a uuid like "
            "3f2a5b1c-9d4e-4f7a-8b6c-1d2e3f4a5b6c)"))
        assert (await refused(ann, "tally.show", cuid="zed", tally=start)).reason == \
            "UNKNOWN_USER"
        for too_short in ("abc", "abc…", "ghij", 1234):  # not a start: a bad id, as before
            assert (await refused(ann, "tally.show", cuid="ann",
                                  tally=too_short)).reason == "INVALID_PARAMS"


def test_a_start_two_ids_share_asks_for_more_of_it():
    with pytest.raises(RpcError, match=re.escape(
            "tally 3f2a… is the start of 3f2a5b1c-9d4e-4f7a-8b6c-1d2e3f4a5b6c and "
            "3f2a0000-9d4e-4f7a-8b6c-1d2e3f4a5b6c (and maybe more): give more of it, or the "
            "whole id")) as asked:
        param_id("3f2a…", "tally", lambda start: ["3f2a5b1c-9d4e-4f7a-8b6c-1d2e3f4a5b6c",
                                                   "3f2a0000-9d4e-4f7a-8b6c-1d2e3f4a5b6c"],
                 "user ann holds")
    assert asked.value.reason == "INVALID_PARAMS"
