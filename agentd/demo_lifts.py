"""The demo's lifts: alice pays carol through bob (a linear lift), then a debt triangle is
cleared (a circular lift). Runs after the credit part, on its alice-bob tally."""

from __future__ import annotations

from pathlib import Path

from agentd.config import Config
from agentd.demo_steps import open_tally, until
from agentd.errors import UserError
from agentd.rpc import call


def _balance(sock: Path, cuid: str, tally: str) -> int:
    return call(sock, "tally.show", {"cuid": cuid, "tally": tally})["balance"]


def lifts_demo(configs: dict[str, Config], infos: dict[str, dict], ab: str) -> None:
    sock = {name: config.socket_path for name, config in configs.items()}
    print("\nlifts: credit along a path of tallies, all or nothing, refereed by the clearing"
          " house:")
    call(sock["carol"], "users.add", {"cuid": "carol"})
    bc = open_tally(sock["bob"], "bob", sock["carol"], "carol")
    print(f"  bob and carol open a tally ({bc[:8]}…); alice and carol share none")
    carol = f"carol:{infos['carol']['agent']}"
    routes = call(sock["alice"], "route.find", {"cuid": "alice", "find": carol, "units": 700})
    path = " -> ".join(hop["cuid"] for hop in routes[0]["path"])
    print(f"  route.find alice -> carol, 700 mCHIP: {path} (capacity {routes[0]['capacity']})")
    before = {"ab": _balance(sock["alice"], "alice", ab), "bc": _balance(sock["carol"], "carol",
                                                                         bc)}
    lift = call(sock["alice"], "lift.pay", {"cuid": "alice", "find": carol, "units": 700,
                                            "memo": "rent"})
    done = call(sock["alice"], "lift.wait", {"lift": lift["lift"], "timeout_s": 10})
    print(f"  lift.pay 700 mCHIP (rent): lift {lift['lift'][:8]}… {lift['state']} -> "
          f"{done['state']}, decided by the referee {done['decision']['referee'][:8]}…")
    if done["state"] != "good":
        raise UserError(f"the linear lift ended {done['state']}: {done.get('error')}")
    for name in ("bob", "carol"):
        until(f"{name} applying the decision", lambda name=name: call(
            sock[name], "lift.show", {"lift": lift["lift"]})["state"] == "good")
    until("the chains taking the lift chits", lambda: _balance(
        sock["carol"], "carol", bc) == before["bc"] + 700)
    print(f"  alice's balance with bob {before['ab']:+} -> "
          f"{_balance(sock['alice'], 'alice', ab):+}; carol's with bob {before['bc']:+} -> "
          f"{_balance(sock['carol'], 'carol', bc):+}; bob passed 700 on (his net is unchanged)")

    # A debt triangle: bob owes alice, carol owes bob, alice owes carol.
    ca = open_tally(sock["carol"], "carol", sock["alice"], "alice")
    call(sock["carol"], "chit.pay", {"cuid": "carol", "tally": bc, "units": 1000})
    call(sock["alice"], "chit.pay", {"cuid": "alice", "tally": ca, "units": 400})
    until("the triangle's payments", lambda: _balance(sock["bob"], "bob", bc) == 300
           and _balance(sock["carol"], "carol", ca) == 400)
    print(f"  carol and alice open a tally ({ca[:8]}…); carol pays bob 1000 (he owed her 700"
          f" after the lift: now she owes him 300); alice pays carol 400")
    owed = {"bob owes alice": _balance(sock["alice"], "alice", ab),
            "carol owes bob": _balance(sock["bob"], "bob", bc),
            "alice owes carol": _balance(sock["carol"], "carol", ca)}
    print("  a debt triangle: " + ", ".join(f"{who} {units}" for who, units in owed.items()))
    cleared = call(sock["alice"], "lift.clear", {"cuid": "alice"})
    done = call(sock["alice"], "lift.wait", {"lift": cleared["lift"], "timeout_s": 10})
    cycle = " -> ".join(hop["cuid"] for hop in cleared["path"])
    print(f"  lift.clear alice: {cycle}, {cleared['units']} mCHIP -> {done['state']}")
    if done["state"] != "good":
        raise UserError(f"the circular lift ended {done['state']}: {done.get('error')}")
    until("the cycle clearing everywhere", lambda: _balance(sock["bob"], "bob", bc) == 0
           and _balance(sock["carol"], "carol", ca) == 100)
    after = {"bob owes alice": _balance(sock["alice"], "alice", ab),
             "carol owes bob": _balance(sock["bob"], "bob", bc),
             "alice owes carol": _balance(sock["carol"], "carol", ca)}
    print("  after: " + ", ".join(f"{who} {units}" for who, units in after.items())
          + " — every debt fell by the same amount; nobody's net position changed")
