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
from tests.test_credit_tally import NOW, code_of, party, refusal

A, B, C, D, E = (user.address for user in USERS[:5])
QUERY = uuid_of(900)
SALT = bytes(range(16))


def bare(user: ChipAddress) -> ChipAddress:
    """A user as answers are addressed: no address to dial."""
    return ChipAddress(agent=user.agent, cuid=user.cuid)


def cand(n: int, partner: ChipAddress, capacity: int) -> rt.Candidate:
    return rt.Candidate(uuid_of(n), partner, capacity)


def started(kind: str = "linear", find: ChipAddress = D, *candidates: rt.Candidate,
            fan_out: int = 10, depth: int = 6) -> rt.Started:
    return rt.start(query=QUERY, kind=kind, payor=A, find=find, units=100, depth=depth,
                    deadline=NOW + 1_000, candidates=candidates, fan_out=fan_out)


def where(user) -> dict[str, Any]:
    """A user in a found route: its map and where its node listens."""
    return {**user_map(user), "host": user.address.host, "port": user.address.port}


def hop(user: ChipAddress, n: int | None, capacity: int | None) -> dict[str, Any]:
    """A path entry: the user, where its node listens (the fixtures' users all say), a hop."""
    return {"cuid": user.cuid, "agent": user.agent, "host": user.host, "port": user.port,
            "tally": None if n is None else uuid_of(n), "capacity": capacity}


def query_obj(*path: dict[str, Any], kind: str = "linear", find: ChipAddress = D,
              depth: int = 6, last: tuple[ChipAddress, ...] = ()) -> dict[str, Any]:
    return {"query": QUERY, "kind": kind, "find": {"cuid": find.cuid, "agent": find.agent},
            "units": 100, "path": list(path), "depth": depth, "deadline": NOW + 1_000,
            "salt": SALT, "last": [rt.last_digest(SALT, user) for user in last]}


def last_hop(user: ChipAddress, n: int, capacity: int) -> rt.LastHop:
    return rt.LastHop(rt.last_digest(SALT, user), uuid_of(n), capacity)


def sender_of(obj: dict[str, Any]) -> ChipAddress:
    """The user a query comes from: the last on its path."""
    last = obj["path"][-1] if obj.get("path") else {"agent": A.agent, "cuid": A.cuid}
    return ChipAddress(agent=last["agent"], cuid=last["cuid"])


def forwarded(obj: dict[str, Any], here: ChipAddress, *candidates: rt.Candidate,
              now: int = NOW, fan_out: int = 10) -> rt.Forwarded:
    """``forward`` at ``here``, which also holds the tally the query came by (with no room
    back to its sender, unless ``candidates`` name it)."""
    sender = sender_of(obj)
    came_by = obj["path"][-1]["tally"] if obj.get("path") else None
    if came_by is not None and all(cand.tally != came_by for cand in candidates):
        candidates = (*candidates, rt.Candidate(came_by, sender, 0))
    return rt.forward(obj, here=here, sender=sender, now_ms=now, candidates=candidates,
                      fan_out=fan_out)


def forward(obj: dict[str, Any], here: ChipAddress, *candidates: rt.Candidate,
            now: int = NOW, fan_out: int = 10) -> list[Any]:
    return forwarded(obj, here, *candidates, now=now, fan_out=fan_out).messages


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
    first = out.messages[0]
    assert (first.target, first.action, first.from_cuid) == ("route", "query", A.cuid)
    assert first.object["path"] == [hop(A, 3, 900)]
    assert "origin" not in first.object  # answers come back the way it went
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


def test_the_found_user_answers_good_with_the_whole_path_which_ends_its_part() -> None:
    out = forwarded(query_obj(hop(A, 1, 500), hop(B, 2, 200)), D)
    [answer] = out.messages  # the good, and the none that ends D's part, in one message
    assert out.relay is None
    assert (answer.to, answer.action, answer.from_cuid) == (bare(B), "good", D.cuid)  # sender
    assert answer.object == {"query": QUERY, "capacity": 200, **none(1), "path": [
        hop(A, 1, 500), hop(B, 2, 200), hop(D, None, None)]}


def test_a_partner_of_find_answers_good_through_its_best_tally() -> None:
    obj = query_obj(hop(A, 1, 500))
    [answer] = forward(obj, B, cand(2, D, 150), cand(3, D, 400), cand(4, C, 900))
    assert answer.action == "good" and answer.object["goods"] == 1
    assert answer.object["path"] == [hop(A, 1, 500), hop(B, 3, 400), hop(D, None, None)]
    assert answer.object["capacity"] == 400


def test_a_hops_room_shows_in_anothers_payment_search_rounded_down_to_two_digits() -> None:
    """Room of 1,234 shows as 1,200 in a payment query B forwards, but never below the units
    asked for, so a payment of 1,234 still goes that way (and 1,235 does not); a circle's
    debts show whole."""
    assert [rt.shown_capacity(n, 1) for n in (0, 7, 99, 100, 105, 999, 1234, 98_765,
                                              10**9 + 1)
            ] == [0, 7, 99, 100, 100, 990, 1200, 98_000, 10**9]
    assert [rt.shown_capacity(1234, units) for units in (1200, 1201, 1234, 1235)] == [
        1200, 1201, 1234, 1234]
    obj = query_obj(hop(A, 1, 5000))
    [send] = forward(obj, B, cand(2, C, 1234))
    assert send.object["path"][-1]["capacity"] == 1200
    [answer] = forward(obj, B, cand(2, D, 1234))
    assert answer.object["capacity"] == answer.object["path"][1]["capacity"] == 1200
    [near] = forward({**obj, "units": 1234}, B, cand(2, D, 1234))
    assert near.action == "good" and near.object["capacity"] == 1234
    [none_only] = forward({**obj, "units": 1235}, B, cand(2, D, 1234), cand(3, C, 1234))
    assert none_only.action == "none"
    [circle] = forward(query_obj(hop(A, 1, 5000), kind="circular", find=A), B,
                       cand(2, C, 1234))
    assert circle.object["path"][-1]["capacity"] == 1234


def test_forwarding_skips_users_and_tallies_on_the_path() -> None:
    obj = query_obj(hop(A, 1, 500), hop(B, 2, 500))
    out = forwarded(obj, C, cand(3, A, 900), cand(4, B, 900), cand(2, B, 900),
                    cand(5, E, 800), cand(6, C, 900), cand(7, USERS[5].address, 50))
    [send] = out.messages  # no answer yet: the relay answers once E has
    assert out.relay is not None and out.relay.upstream == bare(B)
    assert send.to == E and send.from_cuid == C.cuid
    assert send.object["path"] == [hop(A, 1, 500), hop(B, 2, 500), hop(C, 5, 800)]


def test_a_query_that_did_not_come_over_a_tally_with_its_sender_is_refused() -> None:
    """Only a tally partner searches through a node: a stranger naming a made-up tally, or
    one of ours with someone else, makes it send nothing on."""
    obj = query_obj(hop(A, 1, 500), hop(B, 2, 500))
    for candidates in ((cand(3, E, 900),),  # tally 2 is not C's
                       (cand(2, E, 900), cand(3, D, 900))):  # C's tally 2 is with E, not B
        with pytest.raises(rt.Refusal) as refused:
            rt.forward(obj, here=C, sender=bare(B), now_ms=NOW, candidates=candidates)
        assert refused.value.code == "unknown_tally"
        assert "query.path[-1].tally" in refused.value.message


def test_forwarding_respects_fan_out() -> None:
    obj = query_obj(hop(A, 1, 500))
    sends = forward(obj, B, cand(2, C, 300), cand(3, E, 400), fan_out=1)
    assert [s.to for s in sends] == [E]


def test_past_the_deadline_or_the_depth_the_answer_is_none() -> None:
    obj = query_obj(hop(A, 1, 500))
    assert [m.object for m in forward(obj, B, cand(2, D, 900), now=NOW + 1_000)] == [
        {"query": QUERY, "goods": 0, "frontier": 0}]
    deep = query_obj(hop(A, 1, 500), hop(B, 2, 500), depth=2)
    [answer] = forward(deep, C, cand(3, D, 900), cand(4, E, 900))  # a third hop would pass it
    assert answer.object == {"query": QUERY, "goods": 0, "frontier": 2}  # D, E left to ask
    at_depth = query_obj(hop(A, 1, 500), depth=2)  # one more hop reaches find, no further
    assert forward(at_depth, B, cand(2, D, 900))[0].action == "good"
    assert forward(at_depth, B, cand(3, C, 900), cand(4, E, 900))[0].object == {
        "query": QUERY, "goods": 0, "frontier": 2}


def test_a_query_goes_on_held_to_this_nodes_own_depth_and_time() -> None:
    """A partner asking for a deeper or longer search than ours gets ours: the query goes on
    with our depth and a deadline no further than our budget away."""
    obj = query_obj(hop(A, 1, 500), depth=32)
    obj["deadline"] = NOW + 10**9
    sender = sender_of(obj)
    candidates = (cand(2, C, 300), cand(3, E, 400), rt.Candidate(uuid_of(1), sender, 0))
    sends = rt.forward(obj, here=B, sender=sender, now_ms=NOW, candidates=candidates,
                       depth=10, budget_ms=30_000).messages
    assert {(s.object["depth"], s.object["deadline"]) for s in sends} == {(10, NOW + 30_000)}
    deep = query_obj(*(hop(A, n, 500) for n in range(1, 21)), depth=32)  # 20 hops already
    [answer] = rt.forward(deep, here=B, sender=sender_of(deep), now_ms=NOW, depth=10,
                          candidates=(cand(30, C, 300), rt.Candidate(uuid_of(20), A, 0))
                          ).messages
    assert answer.action == "none"


def test_a_chain_is_followed_to_twice_the_depth() -> None:
    """A user with exactly one tally onward is on a chain (a ring, a line), where a query costs
    one message a hop: there the depth is twice the query's, so a payee a little beyond the
    depth needs no deeper round. The query itself is passed on unchanged."""
    at_depth = query_obj(hop(A, 1, 500), depth=2)
    [on] = forward(at_depth, B, cand(3, C, 900))
    assert (on.to, on.object["depth"]) == (C, 2)
    assert on.object["path"] == [hop(A, 1, 500), hop(B, 3, 900)]
    deep = query_obj(hop(A, 1, 500), hop(B, 2, 500), depth=2)
    [good_answer] = forward(deep, C, cand(3, D, 900))  # D is find, one hop past the depth
    assert good_answer.object["path"][-1] == hop(D, None, None)
    chain = [party(40 + n, f"chain{n}").address for n in range(8)]
    along = [hop(user, n + 1, 900) for n, user in enumerate(chain)]
    [on] = forward(query_obj(*along[:4], depth=3), chain[4], cand(9, chain[5], 900))
    assert on.action == "query"  # four hops along, within twice three
    [stop] = forward(query_obj(*along[:5], depth=3), chain[5], cand(9, chain[6], 900))
    assert stop.object == none(0, frontier=1)  # the next user would pass six hops
    [fork] = forward(query_obj(*along[:4], depth=3), chain[4], cand(9, chain[5], 900),
                     cand(10, chain[6], 900))
    assert fork.object == none(0, frontier=2)  # a fork past the depth: a deeper round's part
    ten = query_obj(*along[:4], depth=rt.MAX_DEPTH)
    assert forward(ten, chain[4], cand(9, chain[5], 900))[0].action == "query"


def test_a_lift_search_that_finds_its_route_at_the_payor_sends_no_query() -> None:
    direct = rt.start(query=QUERY, kind="linear", payor=A, find=D, units=100, depth=3,
                      deadline=NOW + 1_000, candidates=[cand(1, D, 900), cand(2, B, 900)],
                      first=True)
    assert direct.messages == [] and len(direct.found) == 1
    every = started("linear", D, cand(1, D, 900), cand(2, B, 900))  # route.find: all routes
    assert [send.to for send in every.messages] == [B] and len(every.found) == 1


def test_a_query_that_came_round_to_a_user_on_its_path_stops() -> None:
    obj = query_obj(hop(A, 1, 500), hop(B, 2, 500))
    assert forward(obj, B, cand(3, C, 900))[0].object == {"query": QUERY, "goods": 0, "frontier": 0}


def test_a_two_hop_circle_through_two_tallies() -> None:
    obj = query_obj(hop(A, 1, 500), kind="circular", find=A)
    [same] = forward(obj, B, cand(1, A, 900))  # the tally it came by does not count
    assert same.object == {"query": QUERY, "goods": 0, "frontier": 0}
    [answer] = forward(obj, B, cand(2, A, 300))
    assert answer.object["path"] == [hop(A, 1, 500), hop(B, 2, 300), hop(A, None, None)]


def test_a_repeat_is_answered_none() -> None:
    [answer] = rt.repeat(query_obj(hop(A, 1, 500)), here=B, sender=A).messages
    assert (answer.to, answer.object) == (bare(A), {"query": QUERY, "goods": 0, "frontier": 0})


def test_a_query_must_come_from_the_last_user_on_its_path() -> None:
    obj = query_obj(hop(A, 1, 500), hop(C, 2, 500))
    caught = refusal(rt.forward, obj, here=B, sender=A, now_ms=NOW, candidates=())
    assert caught.code == "bad_field" and "sent it" in caught.message


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
        (lambda q: q.update(origin={"agent": A.agent}), "fields"),
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


def none(goods: int, query: str = QUERY, frontier: int = 0) -> dict[str, Any]:
    return {"query": query, "goods": goods, "frontier": frontier}


def test_the_search_waits_for_a_none_from_each_partner_and_every_good_announced() -> None:
    direct = good(hop(A, 4, 300), hop(D, None, None))
    search = rt.Search(QUERY, 100, [B, C], [direct])
    assert not search.done
    search.on_answer("none", none(2), B)  # B's part is over: two goods, still on their way
    search.on_answer("none", none(0, uuid_of(901)), C)  # another search's
    search.on_answer("good", good(hop(A, 1, 900), hop(B, 2, 800), hop(D, None, None)), B)
    search.on_answer("good", good(hop(A, 1, 900), hop(B, 3, 300), hop(D, None, None)), B)
    assert not search.done  # C has not answered
    search.on_answer("none", none(0), C)
    assert search.done
    assert [route["capacity"] for route in search.routes] == [800, 300, 300]
    assert [len(route["hops"]) for route in search.routes] == [2, 1, 2]
    best = search.routes[0]
    assert best["path"] == [where(USERS[0]), where(USERS[1]), where(USERS[3])]
    assert best["hops"] == [{"tally": uuid_of(1), "capacity": 900},
                            {"tally": uuid_of(2), "capacity": 800}]


def test_a_good_overtaken_by_its_none_is_still_waited_for() -> None:
    search = rt.Search(QUERY, 100, [B])
    search.on_answer("none", none(1), B)
    assert not search.done
    search.on_answer("good", good(hop(A, 1, 900), hop(B, 2, 800), hop(D, None, None)), B)
    assert search.done


def test_the_search_keeps_one_copy_of_a_route_and_counts_a_none_once() -> None:
    same = good(hop(A, 1, 900), hop(D, None, None))
    search = rt.Search(QUERY, 100, [B, C])
    search.on_answer("good", same, B)
    search.on_answer("good", copy.deepcopy(same), B)
    search.on_answer("none", none(2), B)  # B announced two goods, but they are one route
    search.on_answer("none", none(2), B)  # a duplicate none changes nothing
    assert not search.done and search.goods == 2
    search.on_answer("none", none(0), C)
    assert len(search.routes) == 1


def test_an_answer_from_a_user_not_asked_is_refused() -> None:
    search = rt.Search(QUERY, 100, [B])
    assert code_of(search.on_answer, "none", none(0), C) == "not_asked"
    assert search.waiting == {(B.cuid, B.agent)}


@pytest.mark.parametrize(
    ("action", "obj"),
    [
        ("good", {"query": QUERY, "path": [], "capacity": 1}),
        ("good", {**good(hop(A, 1, 900), hop(D, None, None)), "capacity": 5}),
        ("good", good(hop(A, 1, 50), hop(D, None, None))),  # cannot carry the units
        ("good", good(hop(A, 1, 500), hop(D, 2, 500))),
        ("good", {**good(hop(A, 1, 900), hop(D, None, None)), "goods": 1}),  # no frontier
        ("good", {**good(hop(A, 1, 900), hop(D, None, None)), **none(-1)}),
        ("good", {**good(hop(A, 1, 900), hop(D, None, None)), **none(1, frontier=True)}),
        ("good", good({**hop(A, 1, 900), "host": "not a host!"}, hop(D, None, None))),
        ("good", good(hop(A, 1, 900), {**hop(D, None, None), "port": 0})),
        ("none", {"query": QUERY, "goods": -1, "frontier": 0}),
        ("none", {"query": QUERY, "goods": 0, "frontier": -1}),
        ("none", {"query": QUERY, "goods": 0, "frontier": "1"}),
        ("none", {"query": QUERY, "goods": 0}),
        ("none", {"query": QUERY}),
        ("none", {"query": QUERY, "forwarded": 0}),
        ("maybe", {"query": QUERY}),
        ("none", None),
    ],
)
def test_a_malformed_answer_is_refused(action: str, obj: Any) -> None:
    search = rt.Search(QUERY, 100, [B])
    assert code_of(search.on_answer, action, obj, B) == "bad_field"
    assert not search.done


# -- the relay ----------------------------------------------------------------------------------


def test_a_relay_passes_goods_back_at_once_and_none_when_every_partner_answered() -> None:
    obj = query_obj(hop(A, 1, 900))
    out = forwarded(obj, B, cand(2, C, 800), cand(3, E, 700))
    relay = out.relay
    assert [send.to for send in out.messages] == [C, E] and relay is not None
    found = good(hop(A, 1, 900), hop(B, 2, 800), hop(C, 4, 500), hop(D, None, None))
    [up] = relay.on_answer("good", found, C)
    assert (up.to, up.action, up.object, up.from_cuid) == (bare(A), "good", found, B.cuid)
    assert relay.on_answer("none", none(1), C) == []  # E still owes its answer
    assert relay.on_answer("none", none(1), C) == []  # a duplicate
    [end] = relay.on_answer("none", none(2), E)
    assert (end.to, end.action, end.object) == (bare(A), "none", none(3))
    assert relay.done
    late = good(hop(A, 1, 900), hop(B, 3, 700), hop(E, 5, 600), hop(D, None, None))
    assert [m.object for m in relay.on_answer("good", late, E)] == [late]  # announced: sent on
    assert code_of(relay.on_answer, "none", none(0), D) == "not_asked"


def test_a_good_that_ends_a_partners_part_is_passed_on_alone_or_with_the_relays_none() -> None:
    """A good that also ends its sender's part counts as that partner's none: passed on as a
    plain good while other partners still owe their answer, and as a good that ends the
    relay's own part (with the sums of its partners' goods and frontier) once it is the
    last."""
    relay = forwarded(query_obj(hop(A, 1, 900)), B, cand(2, C, 800), cand(3, E, 700)).relay
    route_c = good(hop(A, 1, 900), hop(B, 2, 800), hop(C, 4, 500), hop(D, None, None))
    [up] = relay.on_answer("good", {**route_c, **none(1)}, C)
    assert up.object == route_c and not relay.done  # E still owes its answer
    route_e = good(hop(A, 1, 900), hop(B, 3, 700), hop(E, 5, 600), hop(D, None, None))
    [last] = relay.on_answer("good", {**route_e, **none(1, frontier=2)}, E)
    assert last.object == {**route_e, **none(2, frontier=2)} and relay.done
    again = relay.on_answer("good", {**route_e, **none(1)}, E)  # a repeat: its none is not
    assert [m.object for m in again] == [route_e]  # counted twice, nor ours sent again
    search = rt.Search(QUERY, 100, [B])
    for message in (up, last):
        search.on_answer(message.action, message.object, B)
    assert search.done and len(search.routes) == 2


def test_a_relay_drops_a_good_that_does_not_start_as_the_query_it_sent_that_partner() -> None:
    """B sent C the path A(1), B(2): a good from C that leaves C off (a route C made up that
    names others only), or says B's hop was another tally or had more room, goes no further
    and is not announced; one that ends C's part still ends B's, as a none."""
    relay = forwarded(query_obj(hop(A, 1, 900)), B, cand(2, C, 800)).relay
    made_up = [
        good(hop(A, 1, 900), hop(B, 2, 800), hop(E, 7, 800), hop(D, None, None)),
        good(hop(A, 1, 900), hop(B, 6, 800), hop(C, 3, 700), hop(D, None, None)),
        good(hop(A, 1, 900), hop(B, 2, 900), hop(C, 3, 900), hop(D, None, None)),
    ]
    for lie in made_up:
        assert relay.on_answer("good", lie, C) == []
    honest = good(hop(A, 1, 900), hop(B, 2, 800), hop(C, 3, 700), hop(D, None, None))
    assert [m.object for m in relay.on_answer("good", honest, C)] == [honest]
    [end] = relay.on_answer("good", {**made_up[0], **none(5)}, C)
    assert (end.action, end.object) == ("none", none(1)) and relay.dropped == 4


def test_relayed_answers_reach_the_originator_through_a_chain_of_relays() -> None:
    """A -> B -> C -> D: D is found; its good, which ends C's part and then B's, travels back
    C, B, A: one message a hop."""
    start = started("linear", D, cand(1, B, 900))
    search = rt.Search(QUERY, 100, [send.to for send in start.messages], start.found)
    [to_b] = start.messages
    at_b = forwarded(to_b.object, B, cand(2, C, 800))
    [to_c] = at_b.messages
    at_c = forwarded(to_c.object, C, cand(3, D, 700))
    [found] = at_c.messages  # C is a partner of D: it answers for the route through it
    [up] = at_b.relay.on_answer(found.action, found.object, C)
    assert (up.to, up.action, up.object["goods"]) == (bare(A), "good", 1)
    search.on_answer(up.action, up.object, B)
    assert search.done
    assert [len(route["hops"]) for route in search.routes] == [3]


def test_a_route_rebuilds_the_lift_path() -> None:
    search = rt.Search(QUERY, 100, [B])
    search.on_answer("good", good(hop(A, 1, 900), hop(B, 2, 800), hop(D, None, None)), B)
    path = rt.lift_path(search.routes[0])
    assert path == [{**where(USERS[0]), "tally": uuid_of(1)},
                    {**where(USERS[1]), "tally": uuid_of(2)},
                    {**where(USERS[3]), "tally": None}]
    record = lf.make_record(lift_uuid=uuid_of(700), kind="linear", units=100, path=path,
                            referee=REFEREE_ADDRESS, date_ms=NOW, life_ms=1_000, memo="",
                            key=USERS[0].key)
    lf.check_record(record)


def test_the_frontier_adds_up_through_relays_to_the_search() -> None:
    """A -> B, which asks C and E at the depth limit: C has two partners left to ask (one more
    than its fan-out lets it count), E none."""
    obj = query_obj(hop(A, 1, 900), depth=3)
    at_b = forwarded(obj, B, cand(2, C, 800), cand(3, E, 700))
    to_c, to_e = at_b.messages
    onward = cand(4, USERS[5].address, 600), cand(5, USERS[6].address, 600), cand(6, A, 600)
    [from_c] = forwarded(to_c.object, C, *onward, fan_out=2).messages
    [from_e] = forwarded(to_e.object, E, cand(3, B, 700)).messages  # only back the way it came
    assert (from_c.object["frontier"], from_e.object["frontier"]) == (2, 0)
    [up] = [*at_b.relay.on_answer("none", from_c.object, C),
            *at_b.relay.on_answer("none", from_e.object, E)]
    search = rt.Search(QUERY, 100, [B])
    search.on_answer(up.action, up.object, B)
    assert search.done and search.frontier == 2 and search.routes == []


def test_a_payor_held_back_by_a_depth_of_one_counts_in_the_frontier() -> None:
    assert started("linear", D, cand(1, B, 900)).frontier == 0
    held = rt.start(query=QUERY, kind="linear", payor=A, find=D, units=100, depth=1,
                    deadline=NOW + 1_000, candidates=[cand(1, B, 900), cand(2, C, 900)])
    assert (held.messages, held.frontier) == ([], 2)


@pytest.mark.parametrize(
    ("depth", "frontier", "following"),
    [
        (3, 0, None),  # nothing stopped at the depth: no deeper round can find more
        (3, 2, 10),  # a ring or a chain: the full depth is cheap
        (3, 10, 10),
        (3, 11, 4),  # a wide network: one hop more
        (9, 500, 10),
        (10, 500, None),  # already the deepest
    ],
)
def test_the_next_round_goes_one_hop_further_or_to_the_full_depth_where_thin(
        depth: int, frontier: int, following: int | None) -> None:
    assert rt.next_depth(depth, frontier, deepest=10, thin=10) == following


def test_a_partner_cannot_make_a_relay_carry_routes_without_end() -> None:
    relay = forwarded(query_obj(hop(A, 1, 900)), B, cand(2, C, 800)).relay
    found = good(hop(A, 1, 900), hop(B, 2, 800), hop(C, 3, 700), hop(D, None, None))
    for _ in range(rt.MAX_ROUTES):
        assert len(relay.on_answer("good", found, C)) == 1
    assert code_of(relay.on_answer, "good", found, C) == "bad_field"


# -- last hops: the hops into find the originator knows ------------------------------------------


def test_a_partner_that_is_a_last_hop_ends_the_route_for_the_originator_to_complete() -> None:
    obj = query_obj(hop(A, 1, 900), last=(C,))
    [answer] = forward(obj, B, cand(2, C, 800), cand(3, E, 700))
    assert answer.object["path"] == [hop(A, 1, 900), hop(B, 2, 800), hop(C, None, None)]
    assert rt.ends(answer.object) and answer.object["goods"] == 1
    search = rt.Search(QUERY, 100, [B], find=D, salt=SALT, last=[last_hop(C, 4, 600)])
    search.on_answer("good", answer.object, B)
    assert search.done
    [found] = search.routes
    assert [entry["cuid"] for entry in found["path"]] == [A.cuid, B.cuid, C.cuid, D.cuid]
    assert found["hops"][-1] == {"tally": uuid_of(4), "capacity": 600}
    assert found["capacity"] == 600


def test_with_last_hops_a_query_goes_one_hop_less_far() -> None:
    # depth 3: B (one hop from A) can still reach D through a last hop; a user two hops from A
    # could add nothing a last hop does not cover, so B stops, and counts in the frontier
    obj = query_obj(hop(A, 1, 900), depth=3, last=(USERS[5].address,))
    [stop] = forward(obj, B, cand(2, C, 800), cand(3, E, 800))
    assert stop.object == none(0, frontier=2)
    deeper = query_obj(hop(A, 1, 900), depth=4, last=(USERS[5].address,))
    assert [send.to for send in forward(deeper, B, cand(2, C, 800), cand(3, E, 800))] == [C, E]


def test_a_completed_route_that_would_use_a_tally_twice_is_dropped() -> None:
    search = rt.Search(QUERY, 100, [B], find=D, salt=SALT, last=[last_hop(C, 1, 600)])
    search.on_answer("good", good(hop(A, 1, 900), hop(B, 2, 800), hop(C, None, None)), B)
    search.on_answer("none", none(1), B)
    assert search.done and search.routes == []


def test_the_payor_finds_a_two_hop_route_through_its_own_partner_that_is_a_last_hop() -> None:
    into = [cand(3, B, 500), cand(4, A, 900), cand(5, E, 50)]
    last = rt.last_hops(SALT, into, 100)
    assert [hop.tally for hop in last] == [uuid_of(4), uuid_of(3)]  # best first; E's too small
    start = rt.start(query=QUERY, kind="linear", payor=A, find=D, units=100, depth=6,
                     deadline=NOW + 1_000, candidates=[cand(1, B, 900), cand(2, C, 800)],
                     salt=SALT, last=last)
    assert start.messages[0].object["last"] == [last[1].digest]  # not the payor's own
    assert [send.to for send in start.messages] == [C]
    search = rt.Search(QUERY, 100, [send.to for send in start.messages], start.found,
                       find=D, salt=SALT, last=last)
    assert [[entry["cuid"] for entry in route["path"]] for route in search.routes] == [
        [A.cuid, B.cuid, D.cuid]]


@pytest.mark.parametrize("last", [b"x" * 16, [b"short"], ["x" * 16], [b"x" * 16] * 17])
def test_a_malformed_last_is_refused(last: Any) -> None:
    obj = query_obj(hop(A, 1, 500))
    obj["last"] = last
    caught = refusal(forward, obj, B)
    assert caught.code == "bad_field" and "query.last" in caught.message


@pytest.mark.parametrize("salt", [b"short", "x" * 16, None])
def test_a_malformed_salt_is_refused(salt: Any) -> None:
    obj = query_obj(hop(A, 1, 500))
    obj["salt"] = salt
    caught = refusal(forward, obj, B)
    assert caught.code == "bad_field" and "query.salt" in caught.message


def test_the_payees_node_names_its_last_hops_by_digest_only() -> None:
    ask = rt.ask(query=QUERY, kind="linear", find=D, units=100, salt=SALT, payor_cuid=A.cuid)
    assert (ask.to, ask.action, ask.from_cuid) == (D, "ask", A.cuid)
    answer = rt.answer_ask(ask.object, here=D, sender=A,
                           into=[cand(3, B, 500), cand(4, C, 90), cand(5, E, 900)])
    assert (answer.to, answer.action, answer.from_cuid) == (bare(A), "hops", D.cuid)
    assert answer.object == {"query": QUERY, "last": [
        {"digest": rt.last_digest(SALT, E), "tally": uuid_of(5)},
        {"digest": rt.last_digest(SALT, B), "tally": uuid_of(3)}]}  # no partner, no capacity
    assert rt.read_hops(answer.object, 100) == [last_hop(E, 5, 100), last_hop(B, 3, 100)]


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"query": QUERY, "kind": "circular", "units": 1, "salt": SALT}, "payment"),
        ({"query": QUERY, "kind": "linear", "units": 0, "salt": SALT}, "ask.units"),
        ({"query": QUERY, "kind": "linear", "units": 1, "salt": b"x"}, "ask.salt"),
        ({"query": "q", "kind": "linear", "units": 1, "salt": SALT}, "ask.query"),
        ({"query": QUERY, "kind": "linear", "units": 1}, "fields"),
    ],
)
def test_a_malformed_ask_is_refused(obj: dict[str, Any], field: str) -> None:
    caught = refusal(rt.answer_ask, obj, here=D, sender=A, into=[])
    assert caught.code == "bad_field" and field in caught.message


@pytest.mark.parametrize(
    "obj",
    [{"query": QUERY}, {"query": QUERY, "last": [{"digest": b"x", "tally": uuid_of(1)}]},
     {"query": QUERY, "last": [{"digest": bytes(16), "tally": "t"}]},
     {"query": QUERY, "last": [{"digest": bytes(16)}]}, {"query": QUERY, "last": "x"}],
)
def test_malformed_hops_are_refused(obj: dict[str, Any]) -> None:
    assert refusal(rt.read_hops, obj, 100).code == "bad_field"


# -- a directed query (via) ---------------------------------------------------------------------


def test_a_directed_query_starts_only_toward_the_users_it_names() -> None:
    """A payor that knows a route checks it again along its users alone: the query goes to
    the partner it names though another can carry more, and carries the names on."""
    out = rt.start(query=QUERY, kind="linear", payor=A, find=D, units=100, depth=3,
                   deadline=NOW + 1_000, candidates=[cand(1, B, 500), cand(2, C, 900)],
                   salt=SALT, via=[B, E])
    assert [send.to for send in out.messages] == [B]
    assert out.messages[0].object["via"] == [rt.last_digest(SALT, B), rt.last_digest(SALT, E)]
    assert rt.start(query=QUERY, kind="linear", payor=A, find=D, units=100, depth=3,
                    deadline=NOW + 1_000, candidates=[cand(2, C, 900)], salt=SALT,
                    via=[B]).messages == []  # the route's first hop is gone: nothing to ask


def test_a_directed_query_goes_on_only_through_the_users_it_names_or_to_find() -> None:
    obj = {**query_obj(hop(A, 1, 500)), "via": [rt.last_digest(SALT, B), rt.last_digest(SALT, E)]}
    onward = forward(obj, B, cand(2, C, 900), cand(3, E, 400))
    assert [(send.action, send.to) for send in onward] == [("query", E)]
    assert onward[0].object["via"] == obj["via"]
    # find is a partner: good, though find is not named
    assert [send.action for send in forward(obj, B, cand(2, C, 900), cand(4, D, 300))] == [
        "good"]
    # the named user's hop cannot carry the units any more: the route is gone, none
    assert [send.action for send in forward(obj, B, cand(2, C, 900), cand(3, E, 50))] == [
        "none"]


@pytest.mark.parametrize("via", [[], [b"short"], b"x" * 16, [b"x" * 16] * 33])
def test_a_malformed_via_is_refused(via: Any) -> None:
    obj = {**query_obj(hop(A, 1, 500)), "via": via}
    caught = refusal(forward, obj, B)
    assert caught.code == "bad_field" and "query.via" in caught.message


def test_the_search_keeps_only_routes_to_find_or_through_a_last_hop() -> None:
    """A partner's answer that ends at someone else (its own user, say) is no route to the
    payee: it is dropped, though it counts as an answer. One through a last hop is completed;
    one that completed would pass the longest lift path is dropped too."""
    search = rt.Search(QUERY, 100, [B], find=D, salt=SALT, last=[last_hop(E, 7, 500)])
    elsewhere = good(hop(A, 1, 900), hop(B, 2, 800), hop(C, None, None))
    search.on_answer("good", elsewhere, B)
    assert search.routes == []
    via_last = good(hop(A, 1, 900), hop(B, 2, 800), hop(E, None, None))
    search.on_answer("good", {**via_last, **none(2)}, B)
    assert search.done
    assert [[entry["cuid"] for entry in route["path"]] for route in search.routes] == [
        [A.cuid, B.cuid, E.cuid, D.cuid]]
    longest = [hop(A, 1, 900)] + [hop(B, n, 800) for n in range(2, rt.MAX_DEPTH + 1)]
    too_long = rt.Search(QUERY, 100, [B], find=D, salt=SALT, last=[last_hop(E, 7, 500)])
    too_long.on_answer("good", good(*longest, hop(E, None, None)), B)
    assert too_long.routes == []


def test_a_directed_query_goes_exactly_as_far_as_its_route_even_along_a_chain() -> None:
    """At a node where ``via`` leaves one partner to go on to (a chain, for an undirected
    query, which runs to twice its depth), a directed query stops at its depth."""
    path = [hop(A, 1, 900), hop(B, 2, 900)]
    obj = {**query_obj(*path, depth=2), "via": [rt.last_digest(SALT, C), rt.last_digest(SALT, E)]}
    assert [send.action for send in forward(obj, C, cand(3, E, 900), cand(4, B, 900))] == [
        "none"]
    undirected = query_obj(*path, depth=2)
    assert [send.action for send in forward(undirected, C, cand(3, E, 900))] == ["query"]


def test_one_partners_goods_neither_use_up_nor_stand_in_for_anothers() -> None:
    """B sends as many goods as one partner may, none of them a route to find: C's good is
    still taken. And B's goods count only against what B announced: with C's none (one good)
    come before C's good, the search waits for that good though B sent more than enough."""
    search = rt.Search(QUERY, 100, [B, C], find=D)
    junk = [good(hop(A, 1, 900), hop(B, n, 800), hop(E, None, None))
            for n in range(2, rt.MAX_ROUTES + 2)]
    for answer in junk:
        search.on_answer("good", answer, B)
    assert code_of(search.on_answer, "good", junk[0], B) == "bad_field"  # B's own limit
    search.on_answer("good", good(hop(A, 3, 900), hop(C, 4, 700), hop(D, None, None)), C)
    assert [len(route["hops"]) for route in search.routes] == [2]

    waits = rt.Search(QUERY, 100, [B, C], find=D)
    waits.on_answer("good", junk[0], B)
    waits.on_answer("good", junk[1], B)
    waits.on_answer("none", none(1), B)  # B announced one, sent two
    waits.on_answer("none", none(1), C)  # C's good is still on its way
    assert not waits.done
    waits.on_answer("good", good(hop(A, 3, 900), hop(C, 4, 700), hop(D, None, None)), C)
    assert waits.done and len(waits.routes) == 1


def test_the_search_keeps_only_goods_that_start_as_the_query_it_sent_did() -> None:
    """With the payor's first hop sent to each partner, a good must start with that hop and
    that partner, and use no user or tally twice."""
    sent = {(B.cuid, B.agent): hop(A, 1, 900)}

    def kept(*path: dict[str, Any]) -> bool:
        search = rt.Search(QUERY, 100, [B], find=D, first_hops=sent)
        search.on_answer("good", good(*path), B)
        return bool(search.routes)

    assert kept(hop(A, 1, 900), hop(B, 2, 800), hop(D, None, None))
    assert not kept(hop(A, 5, 900), hop(B, 2, 800), hop(D, None, None))  # another tally
    assert not kept(hop(A, 1, 9_000), hop(B, 2, 800), hop(D, None, None))  # more room
    assert not kept(hop(A, 1, 900), hop(C, 2, 800), hop(D, None, None))  # not B next
    assert not kept(hop(A, 1, 900), hop(B, 2, 800), hop(B, 3, 800), hop(D, None, None))
    assert not kept(hop(A, 1, 900), hop(B, 1, 800), hop(D, None, None))  # a tally twice
