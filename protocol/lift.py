"""Lifts: credit moved along a path of tallies, all or nothing, by a referee's two-phase commit.

The payor's node signs a **record** ``{lift, kind, units, path, referee, deadline, date, memo,
public, sign}``: ``path[i] = {cuid, agent, tally}`` where ``tally`` joins ``path[i]`` (the
payer of hop *i*) and ``path[i + 1]``; the last entry's tally is nil. A linear lift (a payment)
has no repeated user; a circular one (clearing) ends where it starts and has >= 3 entries.
``public`` is the payor's user key and ``sign`` its signature over :func:`record_digest`.

Participants (one state per node and lift; each hop's chits come from ``chit_lift.lift_chit``):

==========  ==========  =========  ==================================================
state       event       new state  meaning
==========  ==========  =========  ==================================================
(none)      originate   pend       the payor holds hop 0's chit and sends ``promise``
(none)      promise     pend       we hold pending chits on our incoming/outgoing hops
(none)      refuse      pend       we could not take part (no chits): cancel sent
(none)      void        void       a void decision before any promise reached us
pend        promise     pend       a circle's payor, promised its last hop
pend        refuse      pend       a circle's payor, unable to take its last hop
pend        good/void   good/void  the referee's decision: apply it to every chit
good/void   same again  same       a repeated decision changes nothing
==========  ==========  =========  ==================================================

A decision contradicting ours (good after void, void after good) is ``conflict`` here; when
both are the referee's, it equivocated, and ``protocol.lift_equivocation`` settles the lift
(good wins, on every node that sees both). Each hop's
payer records its pending chit, then sends ``promise`` to the next user; the terminus (the
payee, or the payor again for a circle) sends ``commit`` to the referee; a hop that cannot
take part sends ``cancel``; a node still pending after the deadline sends ``query``, and so
does a node that takes part while no channel joins it to the referee (the runtime's call): its
question opens the channel the decision is pushed on, or is answered with the decision.

Referee (:func:`decide`): ``commit`` before the deadline -> good; ``cancel`` -> void; any event
at or after the deadline with no decision -> void; ``query`` before it -> no decision yet. A
decision ``{lift, state, date, referee, record, sign}`` (``record``: the digest of the record
decided; signed by the referee's agent key) never changes: asking again returns it, to the
asker only. The referee decides each record once, not each lift uuid: a record made up with a
real lift's uuid gets a decision of its own, which no participant of the real lift applies
(``check_decision`` wants the digest of the record it holds: ``other_record``). Only agents on
the path may ask, and only the terminus's agent commits. A ``lift/decision`` message carries
``{record, decision}``, so a node that never saw the lift can check it too (and refuse a late
promise of that record, but not of another record with the same uuid, whose decision was on a
record made up: the runtime's call).

Addresses: a path entry may say where its node listens (``host``, ``port``, as the route search
found it), and a promise goes there. A decision is addressed to an agent alone: the runtime
pushes it only to a node it knows or that is connected to it, never to an address a record
names, so a record made up by anyone cannot make a referee dial where it says.

Public API: ``PEND``, ``GOOD``, ``VOID``, ``TRANSITIONS``, ``advance(state, event)``;
``make_record``, ``check_record``, ``record_digest``, ``check_promise``, ``check_room``,
``referee_at``, ``check_held`` (``MAX_HELD``, ``MAX_UNANSWERED``), ``evidence_pid``;
messages ``promise``, ``commit``, ``cancel``, ``query``; referee ``decide``, ``check_decision``.
Refusal codes: ``bad_field``, ``bad_signature``, ``bad_state``, ``conflict``, ``expired``,
``not_on_path``, ``wrong_referee``, ``other_record``, ``over_limit``, ``referee_refused``.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from typing import Any

from .chit_local import LocalChit
from .chit_states import ISSUE_STATES
from .codec import digest
from .errors import Refusal
from .keys import (
    ChipAddress,
    IdentityError,
    SigningKey,
    format_hostport,
    verify,
    verify_by_agent,
)
from .messages import Send
from .route import (
    ADDRESS_FIELDS,
    KINDS,
    MAX_DEPTH,
    check_where,
    hop_capacity,
    hop_kind,
    receive_capacity,
)
from .tally_fields import MAX_MEMO, MAX_UNITS, check_uuid
from .tally_local import LocalTally

PEND = "pend"
GOOD = "good"
VOID = "void"
STATES = (PEND, GOOD, VOID)
DECISIONS = (GOOD, VOID)
# A hop takes part only in a lift decided within a day: its pending chits hold capacity until
# the decision, so a payor cannot lock a tally for years with a far deadline.
MAX_LIFE_MS = 86_400_000
# What promises over one incoming tally may make a node hold, pending, at once (a hop cannot
# void a lift on its own: its referee may have decided good): lifts, and among the places
# their referees are asked at (agent, HOST:PORT), those where the referee never answered.
MAX_HELD = 1024
MAX_UNANSWERED = 4  # among the lifts pending or decided in the last UNANSWERED_WINDOW_MS
UNANSWERED_WINDOW_MS = 3_600_000  # a partner voiding its own lifts frees no place sooner

TRANSITIONS: dict[tuple[str | None, str], str] = {
    (None, "originate"): PEND,
    (None, "promise"): PEND,
    (None, "refuse"): PEND,
    (None, "void"): VOID,
    (PEND, "promise"): PEND,
    (PEND, "refuse"): PEND,
    (PEND, "good"): GOOD,
    (PEND, "void"): VOID,
    (GOOD, "good"): GOOD,
    (VOID, "void"): VOID,
}

_RECORD_FIELDS = {
    "lift", "kind", "units", "path", "referee", "deadline", "date", "memo", "public", "sign",
}
_DECISION_FIELDS = {"lift", "state", "date", "referee", "record", "sign"}
EVENTS = ("commit", "cancel", "query")  # what the referee is asked


def advance(state: str | None, event: str) -> str:
    """The participant's next state (see the table)."""
    if state in DECISIONS and event in DECISIONS and event != state:
        raise Refusal("conflict", f"the lift is already {state}: a {event} decision contradicts it")
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise Refusal("bad_state", f"cannot {event} a lift in state {state or 'none'}") from None


# -- the record -------------------------------------------------------------------------------


def record_digest(record: dict[str, Any]) -> bytes:
    return digest({key: value for key, value in record.items() if key != "sign"})


def make_record(
    *,
    lift_uuid: str,
    kind: str,
    units: int,
    path: list[dict[str, Any]],
    referee: ChipAddress,
    date_ms: int,
    life_ms: int,
    memo: str,
    key: SigningKey,
) -> dict[str, Any]:
    """A lift record signed by ``key``, the payor's (path[0]'s) user key."""
    if not isinstance(life_ms, int) or life_ms <= 0:
        raise Refusal("bad_field", "life_ms must be a positive integer")
    record = {
        "lift": lift_uuid,
        "kind": kind,
        "units": units,
        "path": [{key: hop[key] for key in ("cuid", "agent", *sorted(ADDRESS_FIELDS), "tally")
                  if key in hop} for hop in path],
        "referee": {k: v for k, v in referee.to_map().items() if k != "cuid"},
        "deadline": date_ms + life_ms,
        "date": date_ms,
        "memo": memo,
        "public": key.public,
        "sign": bytes(64),
    }
    _check_form(record)
    record["sign"] = key.sign(record_digest(record))
    return record


def _bad(where: str, rule: str) -> Refusal:
    return Refusal("bad_field", f"lift record {where} {rule}")


def _integer(value: Any, where: str, low: int, high: int = 2**63 - 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _bad(where, f"must be an integer in [{low}, {high}]")


def _check_path(path: Any, kind: str) -> None:
    if not isinstance(path, list) or not 2 <= len(path) <= MAX_DEPTH + 1:
        raise _bad("path", f"must be a list of 2 to {MAX_DEPTH + 1} users")
    users = []
    for at, hop in enumerate(path):
        fields = {"cuid", "agent", "tally"}
        if not isinstance(hop, dict) or not fields <= set(hop) <= fields | ADDRESS_FIELDS:
            raise _bad(f"path[{at}]", "must be a map of exactly agent, cuid, tally (and "
                       "optionally host, port)")
        check_where(hop, f"lift record path[{at}]")
        try:
            address = ChipAddress.from_map({"cuid": hop["cuid"], "agent": hop["agent"]})
        except IdentityError as exc:
            raise _bad(f"path[{at}]", str(exc)) from exc
        if address.cuid is None:
            raise _bad(f"path[{at}].cuid", "must name a user")
        if at == len(path) - 1:
            if hop["tally"] is not None:
                raise _bad(f"path[{at}].tally", "must be nil: the last user pays nobody")
        else:
            check_uuid(hop["tally"], f"lift record path[{at}].tally")
        users.append((hop["cuid"], hop["agent"]))
    tallies = [hop["tally"] for hop in path[:-1]]
    if len(set(tallies)) != len(tallies):
        raise _bad("path", "uses a tally twice")
    if kind == "circular":
        if len(path) < 3 or users[-1] != users[0]:
            raise _bad("path", "of a circular lift must return to its first user in >= 2 hops")
        users.pop()
    if len(set(users)) != len(users):
        raise _bad("path", "visits a user twice")


def _check_form(record: Any) -> None:
    if not isinstance(record, dict) or set(record) != _RECORD_FIELDS:
        raise Refusal("bad_field", f"a lift record has exactly the fields {sorted(_RECORD_FIELDS)}")
    check_uuid(record["lift"], "lift record lift")
    if record["kind"] not in KINDS:
        raise _bad("kind", f"must be one of {KINDS}")
    _integer(record["units"], "units", 1, MAX_UNITS)
    _check_path(record["path"], record["kind"])
    try:
        referee = ChipAddress.from_map(record["referee"])
    except IdentityError as exc:
        raise _bad("referee", str(exc)) from exc
    if referee.cuid is not None:
        raise _bad("referee", "is an agent (a node): it has no cuid")
    _integer(record["date"], "date", 0)
    _integer(record["deadline"], "deadline", record["date"] + 1)
    if not isinstance(record["memo"], str) or len(record["memo"]) > MAX_MEMO:
        raise _bad("memo", f"must be text of at most {MAX_MEMO} characters")
    if not isinstance(record["public"], bytes) or len(record["public"]) != 32:
        raise _bad("public", "must be a 32-byte Ed25519 public key")
    if not isinstance(record["sign"], bytes) or len(record["sign"]) != 64:
        raise _bad("sign", "must be a 64-byte signature")


def check_record(record: Any) -> None:
    """Refuse a malformed record (naming the field), then one whose signature is wrong."""
    _check_form(record)
    if not _signed_by(record["public"], record["sign"], record_digest(record)):
        raise Refusal("bad_signature", f"lift {record['lift']}: the payor's signature is invalid")


@functools.lru_cache(maxsize=4096)
def _signed_by(public: bytes, signature: bytes, message: bytes) -> bool:
    """Ed25519 verification, remembered: one record is checked by every node it reaches,
    on the promise, the commit, the decision and every question to the referee."""
    return verify(public, signature, message)


def _address(hop: dict[str, Any]) -> ChipAddress:
    """A path entry's user, as a refusal names it and a promise goes to it: no message goes
    to the address a path entry may carry (a promise goes to a tally partner whose node we
    know, a decision to agents)."""
    return ChipAddress(agent=hop["agent"], cuid=hop["cuid"])


def _same(address: ChipAddress, hop: dict[str, Any]) -> bool:
    return (address.cuid, address.agent) == (hop["cuid"], hop["agent"])


# -- participants -----------------------------------------------------------------------------


def check_promise(
    record: Any, hop: Any, *, now_ms: int, sender: ChipAddress, here: ChipAddress
) -> None:
    """Whether ``here`` may take part in hop ``hop``, promised by ``sender``."""
    check_record(record)
    path = record["path"]
    if not isinstance(hop, int) or isinstance(hop, bool) or not 0 <= hop < len(path) - 1:
        raise Refusal("bad_field", f"promise hop must be an integer from 0 to {len(path) - 2}")
    if now_ms >= record["deadline"]:
        raise Refusal("expired", f"lift {record['lift']} passed its deadline")
    if record["deadline"] - now_ms > MAX_LIFE_MS:
        raise Refusal("bad_field", f"lift {record['lift']} has its deadline more than "
                      f"{MAX_LIFE_MS // 1000} s away: a hop holds capacity for a lift that long "
                      "at most")
    if not _same(sender, path[hop]) or not _same(here, path[hop + 1]):
        raise Refusal(
            "not_on_path",
            f"hop {hop} of lift {record['lift']} is from {_address(path[hop])} to "
            f"{_address(path[hop + 1])}, not from {sender} to {here}",
        )


def hop_room(kind: str, local: LocalTally, *, paying: bool, balance: int, reserved: int
             ) -> int:
    """How much more a lift of ``kind`` can move over ``local`` now, from this holder's view
    (``paying``: its user pays over it); the rest as for :func:`check_room`, and nothing on a
    tally that takes no chits."""
    if local.state not in ISSUE_STATES:
        return 0
    kind = hop_kind(kind, local.state)
    ours, partners = local.tally[local.side], local.tally[local.partner_side]
    if paying:
        return hop_capacity(kind, balance=balance, partner_limit=partners["terms"]["limit"],
                            lift_out=reserved)
    return receive_capacity(kind, balance=balance, limit=ours["terms"]["limit"],
                            lift_in=reserved)


def check_room(
    record: dict[str, Any], local_chit: LocalChit, local: LocalTally, *, balance: int,
    reserved: int,
) -> None:
    """Whether ``local`` can take its pending lift chit: the tally takes chits and the hop's
    capacity (``route``) from this holder's view covers the units. ``balance`` is ours;
    ``reserved`` the pending lift chits on this tally in the chit's direction. On a closing
    tally only a hop that moves the balance toward zero fits (circular capacity)."""
    if local.state not in ISSUE_STATES:
        raise Refusal("bad_state", f"tally {local.uuid} is {local.state}: no lift chits now")
    kind = hop_kind(record["kind"], local.state)
    room = hop_room(record["kind"], local, paying=local_chit.chit["by"] == local.side,
                    balance=balance, reserved=reserved)
    if room < record["units"]:
        raise Refusal(
            "over_limit",
            f"tally {local.uuid} can carry {room} more in this {kind} direction "
            f"({reserved} reserved by pending lift chits), not {record['units']}",
        )


def evidence_pid(record: dict[str, Any]) -> str:
    """The clearing-house process the referee logs its decision under: the lift's uuid in the
    referee's namespace (``REFEREE/LIFT``), which only the referee may create
    (``protocol.clearing.namespace_of``). Under the bare uuid, which every hop reads in its
    promise, a hop could create the process first, as its sole owner, and the referee's create
    and log would be refused: no evidence of the decision."""
    return f"{record['referee']['agent']}/{record['lift']}"


def referee_at(record: dict[str, Any]) -> str | None:
    """Where the record says its referee listens (``HOST:PORT``, as a message to it is sent
    there), or None when it says nowhere."""
    referee = ChipAddress.from_map(record["referee"])
    if referee.host is None or referee.port is None:
        return None
    return format_hostport(referee.host, referee.port)


def check_held(record: dict[str, Any], tally: str, *, held: int,
               unanswered: Collection[tuple[str, str | None]] | None) -> None:
    """Whether a promise over our incoming ``tally`` may make us hold one more lift, while
    ``held`` lifts that promises over it brought are pending here. ``unanswered``: the
    (referee, address) of those lifts, and of those decided in the last
    ``UNANSWERED_WINDOW_MS``, where the referee never answered a dial of ours, or None when
    the record's referee has answered at the address it names. Past ``MAX_UNANSWERED`` of
    them, a partner could make us dial addresses of its choice, naming a made-up referee at
    each (and voiding each lift itself, with the key it made up, to free its place)."""
    if held >= MAX_HELD:
        raise Refusal("over_limit", f"tally {tally} has {held} lifts pending here that came "
                      f"over it, the most a partner's promises may make this node hold at once: "
                      "another waits until some are decided")
    asked = (record["referee"]["agent"], referee_at(record))
    if unanswered is not None and asked not in unanswered and len(unanswered) >= MAX_UNANSWERED:
        raise Refusal("referee_refused", f"the lifts that came over tally {tally}, pending "
                      f"here or decided in the last hour, name {len(unanswered)} referees that "
                      f"have never answered this node at the address their records give (the "
                      f"most they may name: each is dialled until it answers), and {asked[0]} at"
                      f" {asked[1] or 'no address'} has not either: its lift waits until one of "
                      "them answers, or the hour passes")


def _to_referee(record: dict[str, Any], action: str, obj: dict, from_cuid: str | None) -> Send:
    return Send(ChipAddress.from_map(record["referee"]), "lift", action, obj, from_cuid)


def promise(record: dict[str, Any], hop: int) -> Send:
    """Hop ``hop``'s payer tells its payee: take part (the payer holds its pending chit).
    The payee is the payer's tally partner, whose node the payer knows already: the promise
    names no address, so the one a route answer put in the path never steers where an honest
    hop dials (nor, through the outbox, its other messages to that partner)."""
    path = record["path"]
    return Send(_address(path[hop + 1]), "lift", "promise", {"record": record, "hop": hop},
                path[hop]["cuid"])


def commit(record: dict[str, Any]) -> Send:
    """The terminus (path[-1]) holds its chit: every hop is promised."""
    return _to_referee(record, "commit", {"record": record}, record["path"][-1]["cuid"])


def cancel(record: dict[str, Any], reason: str, *, from_cuid: str | None = None) -> Send:
    """A hop cannot take part (``reason`` says why)."""
    return _to_referee(record, "cancel", {"record": record, "reason": reason[:MAX_MEMO]},
                       from_cuid)


def query(record: dict[str, Any], *, from_cuid: str | None = None) -> Send:
    """Still pending after the deadline: what did the referee decide?"""
    return _to_referee(record, "query", {"record": record}, from_cuid)


# -- the referee ------------------------------------------------------------------------------


def _decision_digest(decision: dict[str, Any]) -> bytes:
    return digest({key: value for key, value in decision.items() if key != "sign"})


def decide(
    decided: dict[str, Any] | None,
    event: str,
    record: Any,
    *,
    now_ms: int,
    key: SigningKey,
    asker: str,
) -> tuple[dict[str, Any] | None, list[Send]]:
    """The referee's answer to ``event`` from agent ``asker``: ``(decision, messages)``.
    ``decided`` is the decision kept for this lift, if any; it is returned unchanged."""
    if event not in EVENTS:
        raise Refusal("bad_field", f"a referee event is one of {EVENTS}")
    check_record(record)
    if record["referee"]["agent"] != key.agent_id:
        raise Refusal("wrong_referee", f"lift {record['lift']} names another referee")
    agents = list(dict.fromkeys(hop["agent"] for hop in record["path"]))
    if asker not in agents:
        raise Refusal("not_on_path", f"agent {asker} has no user on lift {record['lift']}")
    if decided is not None:
        if decided["lift"] != record["lift"]:
            raise Refusal("bad_field", f"the kept decision is for lift {decided['lift']}")
        if "record" not in decided:  # made before decisions named their record: name it now
            decided = _signed(decided["state"], decided["date"], record, key)
        return decided, [_decision_to(asker, record, decided)]
    if record["deadline"] - now_ms > MAX_LIFE_MS:  # no hop takes it (check_promise), and a
        # void decision on it could not be forgotten a month on (store.lifts): a commit
        # before so far a deadline would then be decided good
        raise Refusal("bad_field", f"lift {record['lift']} has its deadline more than "
                      f"{MAX_LIFE_MS // 1000} s away: no hop takes part in such a lift")
    expired = now_ms >= record["deadline"]
    if event == "commit" and not expired and asker != record["path"][-1]["agent"]:
        raise Refusal("not_on_path", "only the terminus's agent (path[-1]) commits a lift")
    if event == "query" and not expired:
        return None, []
    decision = _signed(GOOD if event == "commit" and not expired else VOID, now_ms, record, key)
    return decision, [_decision_to(agent, record, decision) for agent in agents]  # asker too


def _signed(state: str, date_ms: int, record: dict[str, Any], key: SigningKey
            ) -> dict[str, Any]:
    """A decision on ``record`` itself: its digest is signed with the state, so a decision on
    a made-up record that reuses the lift's uuid settles nothing of the real one."""
    decision = {"lift": record["lift"], "state": state, "date": date_ms,
                "referee": key.agent_id, "record": record_digest(record)}
    decision["sign"] = key.sign(_decision_digest(decision))
    return decision


def _decision_to(agent: str, record: dict[str, Any], decision: dict[str, Any]) -> Send:
    return Send(ChipAddress(agent=agent), "lift", "decision",
                {"record": record, "decision": decision})


def check_decision(decision: Any, record: dict[str, Any]) -> str:
    """The state (good or void) of a decision on ``record``'s lift signed by its referee."""
    if not isinstance(decision, dict) or set(decision) != _DECISION_FIELDS:
        raise Refusal("bad_field", f"a decision has exactly the fields {sorted(_DECISION_FIELDS)}")
    if decision["state"] not in DECISIONS:
        raise Refusal("bad_field", f"decision.state must be one of {DECISIONS}")
    if decision["lift"] != record["lift"]:
        raise Refusal("bad_field", f"the decision is for lift {decision['lift']!r}")
    if not isinstance(decision["date"], int) or isinstance(decision["date"], bool):
        raise Refusal("bad_field", "decision.date must be an integer")
    if decision["referee"] != record["referee"]["agent"]:
        raise Refusal("wrong_referee", f"lift {record['lift']} names another referee")
    if decision["record"] != record_digest(record):
        raise Refusal("other_record", f"the decision is on another record of lift "
                      f"{record['lift']} than the one held here")
    if not isinstance(decision["sign"], bytes) or not verify_by_agent(
        decision["referee"], decision["sign"], _decision_digest(decision)
    ):
        raise Refusal("bad_signature", f"the decision on lift {record['lift']} is not the "
                      "referee's")
    return decision["state"]
