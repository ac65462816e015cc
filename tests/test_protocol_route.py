"""Route discovery: hop capacity, the originator's start, forwarding, and the Search count."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import lift as lf
from protocol import route as rt
from protocol.keys import ChipAddress
from tests.liftdata import REFEREE_ADDRESS, USERS, user_map, uuid_of
from tests.test_credit_tally import NOW, code_of, refusal

A, B, C, D, E = (user.address for user in USERS[:5])
ORIGIN = ChipAddress(agent=A.agent, host="127.0.0.1", port=65010)
QUERY = uuid_of(900)


def cand(n: int, partner: ChipAddress, capacity: int) -> rt.Candidate:
    return rt.Candidate(uuid_of(n), partner, capacity)


def started(kind: str = "linear", find: ChipAddress = D, *candidates: rt.Candidate,
            fan_out: int = 10, depth: int = 6) -> rt.Started:
    return rt.start(query=QUERY, kind=kind, payor=A, find=find, units=100, depth=depth,
                    deadline=NOW + 1_000, origin=ORIGIN, candidates=candidates, fan_out=fan_out)


def where(user) -> dict[str, Any]:
    """A user in a found route: its map and where its node listens."""
    return {**user_map(user), "host": user.address.host, "port": user.address.port}


def hop(user: ChipAddress, n: int | None, capacity: int | None) -> dict[str, Any]:
    """A path entry: the user, where its node listens (the fixtures' users all say), a hop."""
    return {"cuid": user.cuid, "agent": user.agent, "host": user.host, "port": user.port,
            "tally": None if n is None else uuid_of(n), "capacity": capacity}


def query_obj(*path: dict[str, Any], kind: str = "linear", find: ChipAddress = D,
              depth: int = 6) -> dict[str, Any]:
    return {"query": QUERY, "kind": kind, "find": {"cuid": find.cuid, "agent": find.agent},
            "units": 100, "path": list(path), "depth": depth, "deadline": NOW + 1_000,
            "origin": {"agent": A.agent, "host": "127.0.0.1", "port": 65010}}


def forward(obj: dict[str, Any], here: ChipAddress, *candidates: rt.Candidate,
            now: int = NOW, fan_out: int = 10) -> list[Any]:
    return rt.forward(obj, here=here, now_ms=now, candidates=candidates, fan_out=fan_out).messages


# -- capacity -----------------------------------------------------------------------------------


def test_hop_capacity() -> None:
    assert rt.hop_capacity("linear", balance=0, partner_limit=1_000, lift_out=0) == 1_000
    assert rt.hop_capacity("linear", balance=200, partner_limit=1_000, lift_out=300) == 900
    assert rt.hop_capacity("linear", balance=-900, partner_limit=1_000, lift_out=200) == 0
    assert rt.hop_capacity("circular", balance=200, partner_limit=1_000, lift_out=50) == 150
    assert rt.hop_capacity("circular", balance=-200, partner_limit=1_000, lift_out=0) == 0
    assert rt.receive_capacity("linear", balance=100, limit=1_000, lift_in=100) == 800
    assert rt.receive_capacity("circular", balance=-300, limit=1_000, lift_in=100) == 200
    assert code_of(rt.hop_capacity, "both", balance=0, partner_limit=0, lift_out=0) == "bad_field"


@given(
    kind=st.sampled_from(rt.KINDS),
    balance=st.integers(-10**6, 10**6),
    limit=st.integers(0, 10**6),
    reserved=st.integers(0, 10**6),
)
def test_payer_and_payee_see_the_same_capacity(
    kind: str, balance: int, limit: int, reserved: int
) -> None:
    payer = rt.hop_capacity(kind, balance=balance, partner_limit=limit, lift_out=reserved)
    payee = rt.receive_capacity(kind, balance=-balance, limit=limit, lift_in=reserved)
    assert payer == payee >= 0


# -- the originator -----------------------------------------------------------------------------


def test_start_queries_the_best_partners_and_finds_a_direct_one_at_once() -> None:
    out = started("linear", D, cand(1, B, 500), cand(2, C, 50), cand(3, E, 900), cand(4, D, 300))
    assert [send.to for send in out.messages] == [E, B]  # best first; C cannot carry 100
    assert out.outstanding == 2
    first = out.messages[0]
    assert (first.target, first.action, first.from_cuid) == ("route", "query", A.cuid)
    assert first.object["path"] == [hop(A, 3, 900)]
    assert first.object["origin"] == {"agent": A.agent, "host": "127.0.0.1", "port": 65010}
    assert out.found == [{"query": QUERY, "path": [hop(A, 4, 300), hop(D, None, None)],
                          "capacity": 300}]


def test_start_respects_fan_out_and_depth() -> None:
    assert len(started("linear", D, cand(1, B, 500), cand(2, C, 500), fan_out=1).messages) == 1
    assert started("linear", D, cand(1, B, 500), depth=1).messages == []


def test_a_circular_search_looks_for_the_payor_and_a_linear_one_does_not() -> None:
    out = started("circular", A, cand(1, B, 500))
    assert out.messages[0].object["find"] == user_map(USERS[0])
    assert code_of(started, "linear", A) == "bad_field"
    assert code_of(started, "circular", D) == "bad_field"


# -- forwarding ---------------------------------------------------------------------------------


def test_the_found_user_answers_good_with_the_whole_path() -> None:
    [answer] = forward(query_obj(hop(A, 1, 500), hop(B, 2, 200)), D)
    assert (answer.to, answer.action, answer.from_cuid) == (ORIGIN, "good", D.cuid)
    assert answer.object == {"query": QUERY, "capacity": 200,
                             "path": [hop(A, 1, 500), hop(B, 2, 200), hop(D, None, None)]}


def test_a_partner_of_find_answers_good_through_its_best_tally() -> None:
    obj = query_obj(hop(A, 1, 500))
    [answer] = forward(obj, B, cand(2, D, 150), cand(3, D, 400), cand(4, C, 900))
    assert answer.action == "good"
    assert answer.object["path"] == [hop(A, 1, 500), hop(B, 3, 400), hop(D, None, None)]
    assert answer.object["capacity"] == 400


def test_forwarding_skips_users_and_tallies_on_the_path() -> None:
    obj = query_obj(hop(A, 1, 500), hop(B, 2, 500))
    answer, *sends = forward(obj, C, cand(3, A, 900), cand(4, B, 900), cand(2, E, 900),
                             cand(5, E, 800), cand(6, C, 900), cand(7, USERS[5].address, 50))
    assert answer.object == {"query": QUERY, "forwarded": 1}
    assert answer.action == "none" and answer.to == ORIGIN
    [send] = sends
    assert send.to == E and send.from_cuid == C.cuid
    assert send.object["path"] == [hop(A, 1, 500), hop(B, 2, 500), hop(C, 5, 800)]


def test_forwarding_respects_fan_out() -> None:
    obj = query_obj(hop(A, 1, 500))
    answer, *sends = forward(obj, B, cand(2, C, 300), cand(3, E, 400), fan_out=1)
    assert answer.object["forwarded"] == 1 and [s.to for s in sends] == [E]


def test_past_the_deadline_or_the_depth_the_answer_is_none() -> None:
    obj = query_obj(hop(A, 1, 500))
    assert [m.object for m in forward(obj, B, cand(2, D, 900), now=NOW + 1_000)] == [
        {"query": QUERY, "forwarded": 0}]
    deep = query_obj(hop(A, 1, 500), hop(B, 2, 500), depth=2)
    [answer] = forward(deep, C, cand(3, D, 900))  # a third hop would pass the depth
    assert answer.object == {"query": QUERY, "forwarded": 0}
    at_depth = query_obj(hop(A, 1, 500), depth=2)  # one more hop reaches find, no further
    assert forward(at_depth, B, cand(2, D, 900))[0].action == "good"
    assert forward(at_depth, B, cand(3, C, 900))[0].object["forwarded"] == 0


def test_a_query_that_came_round_to_a_user_on_its_path_stops() -> None:
    obj = query_obj(hop(A, 1, 500), hop(B, 2, 500))
    assert forward(obj, B, cand(3, C, 900))[0].object == {"query": QUERY, "forwarded": 0}


def test_a_two_hop_circle_through_two_tallies() -> None:
    obj = query_obj(hop(A, 1, 500), kind="circular", find=A)
    [same] = forward(obj, B, cand(1, A, 900))  # the tally it came by does not count
    assert same.object == {"query": QUERY, "forwarded": 0}
    [answer] = forward(obj, B, cand(2, A, 300))
    assert answer.object["path"] == [hop(A, 1, 500), hop(B, 2, 300), hop(A, None, None)]


def test_a_repeat_is_answered_none() -> None:
    [answer] = rt.repeat(query_obj(hop(A, 1, 500)), here=B).messages
    assert answer.object == {"query": QUERY, "forwarded": 0}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda q: q.update(kind="zigzag"), "kind"),
        (lambda q: q.update(units=0), "units"),
        (lambda q: q.update(depth=33), "depth"),
        (lambda q: q.update(path=[]), "path"),
        (lambda q: q.update(path=[hop(A, 1, 5)] * 33), "query.path"),
        (lambda q: q["path"][0].update(capacity=-1), "path[0].capacity"),
        (lambda q: q["path"][0].update(tally="t"), "path[0].tally"),
        (lambda q: q["find"].update(cuid=None), "find"),
        (lambda q: q["origin"].update(cuid="x"), "origin"),
        (lambda q: q.pop("deadline"), "fields"),
    ],
)
def test_a_malformed_query_is_refused_naming_the_field(change: Any, field: str) -> None:
    obj = query_obj(hop(A, 1, 500))
    change(obj)
    caught = refusal(forward, copy.deepcopy(obj), B)
    assert caught.code == "bad_field" and field in caught.message


# -- the search ---------------------------------------------------------------------------------


def good(*path: dict[str, Any]) -> dict[str, Any]:
    return {"query": QUERY, "path": list(path),
            "capacity": min(entry["capacity"] for entry in path[:-1])}


def test_the_search_counts_answers_until_none_is_outstanding() -> None:
    direct = good(hop(A, 4, 300), hop(D, None, None))
    search = rt.Search(QUERY, 100, 2, [direct])
    assert not search.done
    search.on_answer("none", {"query": QUERY, "forwarded": 2})
    search.on_answer("none", {"query": uuid_of(901), "forwarded": 0})  # another search's
    search.on_answer("good", good(hop(A, 1, 900), hop(B, 2, 800), hop(D, None, None)))
    search.on_answer("good", good(hop(A, 1, 900), hop(C, 3, 300), hop(D, None, None)))
    assert not search.done
    search.on_answer("none", {"query": QUERY, "forwarded": 0})
    assert search.done
    assert [route["capacity"] for route in search.routes] == [800, 300, 300]
    assert [len(route["hops"]) for route in search.routes] == [2, 1, 2]
    best = search.routes[0]
    assert best["path"] == [where(USERS[0]), where(USERS[1]), where(USERS[3])]
    assert best["hops"] == [{"tally": uuid_of(1), "capacity": 900},
                            {"tally": uuid_of(2), "capacity": 800}]


def test_the_search_keeps_one_copy_of_a_route() -> None:
    same = good(hop(A, 1, 900), hop(D, None, None))
    search = rt.Search(QUERY, 100, 2, [])
    search.on_answer("good", same)
    search.on_answer("good", copy.deepcopy(same))
    assert search.done and len(search.routes) == 1


@pytest.mark.parametrize(
    ("action", "obj"),
    [
        ("good", {"query": QUERY, "path": [], "capacity": 1}),
        ("good", {**good(hop(A, 1, 900), hop(D, None, None)), "capacity": 5}),
        ("good", good(hop(A, 1, 50), hop(D, None, None))),  # cannot carry the units
        ("good", good(hop(A, 1, 500), hop(D, 2, 500))),
        ("none", {"query": QUERY, "forwarded": -1}),
        ("none", {"query": QUERY}),
        ("maybe", {"query": QUERY}),
        ("none", None),
    ],
)
def test_a_malformed_answer_is_refused(action: str, obj: Any) -> None:
    search = rt.Search(QUERY, 100, 1, [])
    assert code_of(search.on_answer, action, obj) == "bad_field"
    assert search.outstanding == 1


def test_a_route_rebuilds_the_lift_path() -> None:
    search = rt.Search(QUERY, 100, 1, [])
    search.on_answer("good", good(hop(A, 1, 900), hop(B, 2, 800), hop(D, None, None)))
    path = rt.lift_path(search.routes[0])
    assert path == [{**where(USERS[0]), "tally": uuid_of(1)},
                    {**where(USERS[1]), "tally": uuid_of(2)},
                    {**where(USERS[3]), "tally": None}]
    record = lf.make_record(lift_uuid=uuid_of(700), kind="linear", units=100, path=path,
                            referee=REFEREE_ADDRESS, date_ms=NOW, life_ms=1_000, memo="",
                            key=USERS[0].key)
    lf.check_record(record)
