"""What the payor's node remembers of the routes its users' lifts took (in memory): only
routes of good lifts, forgotten when a lift along one goes void or a check finds nothing
(then its payee floods for a while), with the units our undecided lifts hold counted."""

from __future__ import annotations

from agentd.services.credit import known_routes as kr
from tests.liftdata import USERS, record, uuid_of

ANN, BOB, CAT, DAN = USERS[:4]
LINE = record([ANN, BOB, CAT, DAN], [uuid_of(1), uuid_of(2), uuid_of(3)], units=100)
KEY = kr.lift_key(LINE)
VIA = kr.route_users(LINE)


def lift(n: int, units: int = 100, users=(ANN, BOB, CAT, DAN)) -> dict:
    return record(list(users), [uuid_of(i) for i in range(1, len(users))], units=units,
                  lift_uuid=uuid_of(600 + n))


def test_only_a_good_lifts_route_is_remembered_and_a_void_one_forgets_it() -> None:
    known = kr.KnownRoutes(longest=10)
    assert (ANN.address.cuid, "linear", (DAN.address.cuid, DAN.address.agent)) == KEY
    assert ((BOB.address.cuid, BOB.address.agent), (CAT.address.cuid, CAT.address.agent)) == VIA
    known.started(lift(1), took_s=0.05)
    assert known.to_check(KEY, now=0) is None  # not before it is good
    known.decided(lift(1)["lift"], "good", now=0)
    assert known.to_check(KEY, now=0) == kr.Known(VIA, 0.05)
    known.started(lift(2), took_s=0.01)
    known.decided(lift(2)["lift"], "void", now=0)
    assert known.to_check(KEY, now=0) is None
    known.decided(lift(3)["lift"], "good", now=0)  # not ours (never started here): nothing
    assert known.to_check(KEY, now=0) is None


def test_a_check_that_found_nothing_leaves_the_payee_to_the_flood_for_a_while() -> None:
    known = kr.KnownRoutes(longest=10)
    known.started(lift(1), took_s=0.05)
    known.decided(lift(1)["lift"], "good", now=0)
    known.failed(KEY, now=100.0)
    assert known.to_check(KEY, now=100.0) is None
    known.started(lift(2), took_s=0.05)  # the flood found it again, and it was good
    known.decided(lift(2)["lift"], "good", now=0)
    assert known.to_check(KEY, now=100.0 + kr.COOL_S - 1) is None  # still cooling
    assert known.to_check(KEY, now=100.0 + kr.COOL_S) == kr.Known(VIA, 0.05)


def test_undecided_lifts_hold_their_units_on_their_route_until_decided() -> None:
    known = kr.KnownRoutes(longest=10)
    known.started(lift(1, units=300), took_s=0.05)
    known.started(lift(2, units=200), took_s=0.05)
    assert known.held(KEY, VIA) == 500
    known.decided(lift(1)["lift"], "good", now=0)
    assert known.held(KEY, VIA) == 200
    known.decided(lift(2)["lift"], "void", now=0)
    assert known.held(KEY, VIA) == 0


def test_the_users_on_a_void_lifts_route_are_suspects_for_its_payee_a_while() -> None:
    """A void lift's users come last in that payee's searches for SUSPECT_S; a good lift
    through one clears it; another payee's searches do not suspect them."""
    known = kr.KnownRoutes(longest=10)
    known.started(lift(1), took_s=0.05)
    known.decided(lift(1)["lift"], "void", now=100.0)
    assert known.suspects(KEY, now=100.0) == frozenset(VIA)
    assert known.suspects((*KEY[:2], ("eve", "x")), now=100.0) == frozenset()
    assert known.suspects(KEY, now=100.0 + kr.SUSPECT_S) == frozenset()
    known.started(lift(2), took_s=0.05)
    known.decided(lift(2)["lift"], "void", now=200.0)
    known.started(lift(3, users=(ANN, BOB, DAN)), took_s=0.05)
    known.decided(lift(3)["lift"], "good", now=210.0)
    assert known.suspects(KEY, now=210.0) == {VIA[1]}  # bob made it good: cat is left


def test_no_route_without_a_user_between_or_longer_than_the_search_goes() -> None:
    known = kr.KnownRoutes(longest=2)
    direct = lift(1, users=(ANN, DAN))
    known.started(direct, took_s=0.01)
    known.decided(direct["lift"], "good", now=0)
    assert known.to_check(KEY, now=0) is None  # a partner: found at once, nothing to check
    known.started(lift(2), took_s=0.01)  # three hops, where the search goes two
    known.decided(lift(2)["lift"], "good", now=0)
    assert known.to_check(KEY, now=0) is None


def test_what_it_holds_is_bounded() -> None:
    known = kr.KnownRoutes(longest=10)
    for n in range(kr.KNOWN + 5):
        known.failed((f"u{n}", "linear", ("x", "y")), now=0)
        start = lift(n)
        start["path"][-1] = {**start["path"][-1], "cuid": f"p{n}"}
        known.started(start, took_s=0.01)
        known.decided(start["lift"], "good" if n % 2 else "void", now=0)
    assert len(known._known) == (kr.KNOWN + 5) // 2 and len(known._cool) == kr.KNOWN
    assert len(known._suspects) <= kr.KNOWN
    for batch in range(3):  # 90 users on void routes to one payee
        crowd = lift(9000 + batch)
        crowd["path"][1:-1] = [{"cuid": f"s{batch}.{n}", "agent": "x", "tally": uuid_of(n)}
                               for n in range(30)]
        known.started(crowd, took_s=0.01)
        known.decided(crowd["lift"], "void", now=0)
    assert len(known.suspects(KEY, now=0)) == kr.SUSPECTS
    assert known._flying == {} and known._held == {}
