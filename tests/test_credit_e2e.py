"""End to end through the command line: two `agentd run` processes that have never heard of
each other open a tally with an invitation ticket and pay across it."""

from __future__ import annotations

import json
import time

from tests.clihelpers import cli, init, running


def agentd(config: str, method: str, **params: object) -> object:
    args = [f"{key}={value}" for key, value in params.items()]
    return json.loads(cli("-c", config, method, *args).stdout)


def until(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not reached within {timeout} s"
        time.sleep(0.05)


def test_invite_request_offer_accept_pay_list(tmp_path):
    alice, bob = init(tmp_path, "alice"), init(tmp_path, "bob")  # no [[peers]] either way
    with running({"alice": alice, "bob": bob}):
        a, b = alice["config"], bob["config"]
        agentd(a, "users.add", cuid="alice")
        agentd(b, "users.add", cuid="bob")
        invited = agentd(a, "tally.invite", cuid="alice", limit=50000, memo="groceries")
        tally = invited["tally"]
        requested = agentd(b, "tally.request", cuid="bob", ticket=invited["ticket"])
        assert requested["tally"] == tally and requested["state"] == "requested"
        [asked] = agentd(b, "tally.list", cuid="bob")  # what bob asked for, before the offer
        assert (asked["tally"], asked["state"], asked["partner"], asked["balance"]) == (
            tally, "requested", requested["partner"], 0)
        [_, row] = cli("-H", "-c", b, "tally.list", "cuid=bob").stdout.splitlines()
        assert row.split() == [f"{tally[:8]}…", "bob", "-", "requested",
                               f"alice@{alice['agent'][:8]}", "0", "0", "0", "0/0"]
        agentd(a, "tally.offer", cuid="alice", tally=tally)
        until(lambda: [x["state"] for x in agentd(b, "tally.list", cuid="bob")] == ["P.offer"])
        agentd(b, "tally.accept", cuid="bob", tally=tally)
        until(lambda: agentd(a, "tally.show", cuid="alice", tally=tally)["state"]
              == agentd(b, "tally.show", cuid="bob", tally=tally)["state"] == "open")
        paid = agentd(b, "chit.pay", cuid="bob", tally=tally, units=1250, memo="apples")
        assert paid["state"] == "L.good"
        agentd(a, "chit.pay", cuid="alice", tally=tally, units=250)

        def settled() -> bool:
            mine = agentd(a, "tally.show", cuid="alice", tally=tally)
            theirs = agentd(b, "tally.show", cuid="bob", tally=tally)
            return mine["chain"] == theirs["chain"] and mine["chain"]["confirmed"] == 2

        until(settled)
        listed = agentd(a, "chit.list", cuid="alice", tally=tally)
        assert [(x["by"], x["units"], x["state"]) for x in listed] == [
            ("foil", 1250, "A.good"), ("stock", 250, "L.good")]
        assert [x["chit"] for x in agentd(b, "chit.list", cuid="bob", tally=tally)] == [
            x["chit"] for x in listed]
        assert agentd(a, "tally.show", cuid="alice", tally=tally)["balance"] == 1000
        assert agentd(b, "tally.show", cuid="bob", tally=tally)["balance"] == -1000
        over = cli("-c", b, "chit.pay", "cuid=bob", f"tally={tally}", "units=60000", check=False)
        assert over.returncode == 1 and "OVER_LIMIT" in over.stderr
