"""What ``lift.show`` says of a lift on a referee that takes no part in it (its record and
decision, no payor, no chits), and why a void one is void, as the decision's date tells."""

from __future__ import annotations

from agentd.services.credit.lift_views import refereed_view
from protocol import lift as lf
from tests.liftdata import REFEREE, USERS, record, uuid_of

RECORD = record(USERS[:3], [uuid_of(1), uuid_of(2)])


def decided(event: str, at_ms: int) -> dict:
    decision, _ = lf.decide(None, event, RECORD, now_ms=at_ms, key=REFEREE,
                            asker=USERS[2].address.agent)
    assert decision is not None
    return decision


def test_a_good_lift_on_its_referee_has_no_payor_no_chits_no_error() -> None:
    shown = refereed_view(RECORD, decided("commit", RECORD["deadline"] - 1))
    assert (shown["state"], shown["payor"], shown["error"], shown["chits"]) == (
        "good", None, None, [])
    assert shown["decision"]["referee"] == REFEREE.agent_id
    assert [hop["cuid"] for hop in shown["path"]] == [user.address.cuid for user in USERS[:3]]


def test_a_void_lift_on_its_referee_says_whether_a_hop_cancelled_or_time_ran_out() -> None:
    cancelled = refereed_view(RECORD, decided("cancel", RECORD["deadline"] - 1))
    assert cancelled["state"] == "void" and "cancelled" in cancelled["error"]
    late = refereed_view(RECORD, decided("query", RECORD["deadline"]))
    assert late["state"] == "void" and "deadline passed" in late["error"]
