"""Clearing-house protocol: the access matrix, the hash chain and client log modes (receipts:
test_protocol_receipts.py)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import clearing as ch
from protocol import receipts as rc
from protocol.clearing_chain import ChainError, next_entry, verify_chain
from protocol.codec import CodecError, canonical, pack, unpack
from protocol.evidence import LOG_MODES, log_object
from protocol.keys import SigningKey
from tests.chaindata import (
    ALICE,
    BOB,
    CAROL,
    MAX_PAYLOAD,
    T0,
    chain,
    keyring,
    log_request,
)


def rejection(code: ch.Reason, call: Any, *args: Any, **kwargs: Any) -> str:
    """Run ``call`` expecting a ``Rejection`` with ``code``; return its message."""
    with pytest.raises(ch.Rejection) as info:
        call(*args, **kwargs)
    assert info.value.code is code, info.value
    return info.value.message


# --- create_process ----------------------------------------------------------------------


def test_create_adds_the_caller_and_deduplicates_owners() -> None:
    request = ch.parse_create_process({"pid": "tally-1", "owners": [BOB, BOB, ALICE]})
    assert ch.decide_create(request, ALICE, None) == sorted([ALICE, BOB])


def test_create_without_owners_makes_the_caller_sole_owner() -> None:
    request = ch.parse_create_process({"pid": "tally-1"})
    assert ch.decide_create(request, BOB, None) == [BOB]


@pytest.mark.parametrize(
    ("caller", "code"), [(ALICE, ch.Reason.BAD_PARAMETERS), (CAROL, ch.Reason.NOT_AUTHORIZED)]
)
def test_creating_an_existing_pid_depends_on_ownership(caller: str, code: ch.Reason) -> None:
    request = ch.parse_create_process({"pid": "tally-1", "owners": []})
    message = rejection(code, ch.decide_create, request, caller, {ALICE, BOB})
    assert "tally-1" in message


def test_create_refuses_owners_that_are_not_agent_ids() -> None:
    message = rejection(
        ch.Reason.BAD_PARAMETERS, ch.parse_create_process, {"pid": "p", "owners": [BOB, "bob"]}
    )
    assert "owners[1]" in message


def test_create_refuses_owners_that_are_not_a_list() -> None:
    message = rejection(
        ch.Reason.MALFORMED_MESSAGE, ch.parse_create_process, {"pid": "p", "owners": BOB}
    )
    assert "create_process.owners" in message


def test_create_caps_the_number_of_owners() -> None:
    owners = [SigningKey(bytes([n]) * 32).agent_id for n in range(10, 10 + ch.MAX_OWNERS)]
    request = ch.parse_create_process({"pid": "p", "owners": owners})
    rejection(ch.Reason.BAD_PARAMETERS, ch.decide_create, request, ALICE, None)
    assert len(ch.decide_create(request, owners[0], None)) == ch.MAX_OWNERS


def test_an_unauthenticated_caller_is_refused() -> None:
    request = ch.parse_create_process({"pid": "p"})
    rejection(ch.Reason.NOT_AUTHENTICATED, ch.decide_create, request, "alice", None)
    rejection(ch.Reason.NOT_AUTHENTICATED, ch.authorize, "log", "p", "", None)


# --- pids, common to every action ----------------------------------------------------------

PARSERS = {
    "create_process": (ch.parse_create_process, {}),
    "log": (
        lambda obj: ch.parse_log(obj, max_payload=MAX_PAYLOAD),
        {k: v for k, v in log_object("x", b"data").items() if k != "pid"},
    ),
    "query": (ch.parse_query, {}),
    "get": (ch.parse_get, {"id": "a" * 64}),
}


@pytest.mark.parametrize("action", sorted(PARSERS))
@pytest.mark.parametrize("pid", ["", "default", "has space", "x" * 129, "tab\there"])
def test_reserved_empty_or_unprintable_pid_is_bad_parameters(action: str, pid: str) -> None:
    parse, rest = PARSERS[action]
    message = rejection(ch.Reason.BAD_PARAMETERS, parse, {"pid": pid, **rest})
    assert message.startswith(f"{action}.pid:")


@pytest.mark.parametrize("action", sorted(PARSERS))
@pytest.mark.parametrize("pid", [None, 7, b"p1"])
def test_pid_that_is_not_text_is_malformed(action: str, pid: object) -> None:
    parse, rest = PARSERS[action]
    rejection(ch.Reason.MALFORMED_MESSAGE, parse, {"pid": pid, **rest})


@pytest.mark.parametrize("action", sorted(PARSERS))
def test_requests_name_missing_and_unknown_fields(action: str) -> None:
    parse, rest = PARSERS[action]
    assert "missing field(s) pid" in rejection(ch.Reason.MALFORMED_MESSAGE, parse, rest)
    message = rejection(ch.Reason.MALFORMED_MESSAGE, parse, {"pid": "p", **rest, "sise": 1})
    assert message == f"{action}: unknown field(s) sise"
    rejection(ch.Reason.MALFORMED_MESSAGE, parse, ["p"])


def test_a_uuid_pid_is_accepted() -> None:
    pid = "6cd44064-5f4b-4c8e-9d0a-3a8a9f6f1c2e"
    assert ch.parse_query({"pid": pid})["pid"] == pid


# --- log ---------------------------------------------------------------------------------


def test_log_to_an_unknown_pid_creates_it_with_the_caller_as_sole_owner() -> None:
    assert ch.authorize("log", "p1", BOB, None) == [BOB]


@pytest.mark.parametrize("caller", [ALICE, BOB])
def test_log_by_an_owner_creates_nothing(caller: str) -> None:
    assert ch.authorize("log", "p1", caller, {ALICE, BOB}) is None


def test_log_by_a_non_owner_is_not_authorized() -> None:
    message = rejection(ch.Reason.NOT_AUTHORIZED, ch.authorize, "log", "p1", CAROL, [ALICE])
    assert message == "log.pid: you are not an owner of 'p1'"


def test_a_pid_in_an_agents_namespace_is_that_agents_alone_to_create() -> None:
    """``AGENT/...`` (an agent id, then '/') only AGENT may create, by create_process or by a
    first log; once it exists, its owners read and write it as any other."""
    pid = f"{ALICE}/lift-1"
    assert ch.namespace_of(pid) == ALICE
    assert ch.namespace_of("deal/1") is None and ch.namespace_of(f"{ALICE}x/1") is None
    assert ch.namespace_of(ALICE) is None  # the id alone is no namespace
    request = ch.parse_create_process({"pid": pid, "owners": [BOB]})
    assert ch.decide_create(request, ALICE, None) == sorted([ALICE, BOB])
    message = rejection(ch.Reason.NOT_AUTHORIZED, ch.decide_create, request, BOB, None)
    assert message == (f"create_process.pid: {pid!r} is in the namespace of agent {ALICE} (a "
                       "pid that begins with an agent id and '/'): only that agent may create it")
    assert ch.authorize("log", pid, ALICE, None) == [ALICE]
    assert "only that agent may create it" in rejection(
        ch.Reason.NOT_AUTHORIZED, ch.authorize, "log", pid, BOB, None)
    assert ch.authorize("log", pid, BOB, {ALICE, BOB}) is None
    # existing: as for any pid (an owner's create is a mistake, anyone else's not allowed)
    rejection(ch.Reason.BAD_PARAMETERS, ch.decide_create, request, BOB, {ALICE, BOB})
    rejection(ch.Reason.NOT_AUTHORIZED, ch.decide_create, request, CAROL, {ALICE, BOB})


def valid_log() -> dict[str, Any]:
    return log_object("p1", b"evidence", header={"event": "tally.open"})


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"header": None}, "log.header"),
        ({"header": [1, 2]}, "log.header"),
        ({"payload": "text"}, "log.payload"),
        ({"payload_type": 5}, "log.payload_type"),
        ({"payload_sha256": b"\x00" * 32}, "log.payload_sha256"),
        ({"sig": b""}, "unknown field(s) sig"),
    ],
)
def test_malformed_log_is_refused(change: dict[str, Any], where: str) -> None:
    message = rejection(
        ch.Reason.MALFORMED_MESSAGE, ch.parse_log, {**valid_log(), **change}, max_payload=100
    )
    assert where in message


def test_log_without_a_header_is_malformed() -> None:
    obj = valid_log()
    del obj["header"]
    assert "missing field(s) header" in rejection(
        ch.Reason.MALFORMED_MESSAGE, ch.parse_log, obj, max_payload=100
    )


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"header": {"amount": 1.5}}, "log.header: $.amount: float"),
        ({"payload_sha256": "AB" * 32}, "log.payload_sha256"),
        ({"payload_sha256": "ab" * 31}, "log.payload_sha256"),
        ({"payload_type": ""}, "log.payload_type"),
        ({"payload": b""}, "log.payload: is empty"),
        ({"header": {"notes": "x" * 200}}, "log.header: 2"),  # over max_payload bytes
        ({"header": _nested(1100)}, "log.header: nested too deeply"),
    ],
)
def test_log_with_bad_values_is_bad_parameters(change: dict[str, Any], where: str) -> None:
    message = rejection(
        ch.Reason.BAD_PARAMETERS, ch.parse_log, {**valid_log(), **change}, max_payload=100
    )
    assert message.startswith(where)


def test_payload_over_the_limit_is_bad_parameters() -> None:
    obj = log_object("p1", b"x" * 101)
    message = rejection(ch.Reason.BAD_PARAMETERS, ch.parse_log, obj, max_payload=100)
    assert message.startswith("log.payload: 101 bytes exceed the limit of 100")
    assert ch.parse_log(log_object("p1", b"x" * 100), max_payload=100)["payload"] == b"x" * 100


def test_payload_hash_must_match_the_payload() -> None:
    obj = {**valid_log(), "payload_sha256": hashlib.sha256(b"other").hexdigest()}
    message = rejection(ch.Reason.BAD_PARAMETERS, ch.parse_log, obj, max_payload=100)
    assert message.startswith("log.payload_sha256:")
    assert hashlib.sha256(b"evidence").hexdigest() in message


def test_a_nil_payload_means_no_payload() -> None:
    request = ch.parse_log({**valid_log(), "payload": None}, max_payload=100)
    assert request["payload"] is None


# --- query and get -----------------------------------------------------------------------


@pytest.mark.parametrize("action", ["query", "get"])
def test_reading_an_unknown_pid_is_not_found(action: str) -> None:
    message = rejection(ch.Reason.NOT_FOUND, ch.authorize, action, "p9", ALICE, None)
    assert message == f"{action}.pid: there is no process 'p9'"


@pytest.mark.parametrize("action", ["query", "get"])
def test_reading_someone_elses_pid_is_not_authorized(action: str) -> None:
    rejection(ch.Reason.NOT_AUTHORIZED, ch.authorize, action, "p1", CAROL, {ALICE, BOB})


@pytest.mark.parametrize("action", ["query", "get"])
def test_every_owner_may_read(action: str) -> None:
    assert ch.authorize(action, "p1", BOB, {ALICE, BOB}) is None


def test_query_defaults() -> None:
    assert ch.parse_query({"pid": "p1"}) == {
        "pid": "p1",
        "page": 1,
        "size": ch.DEFAULT_PAGE_SIZE,
        "sort": "desc",
        "date_from": None,
        "date_to": None,
    }
    explicit = {"pid": "p1", "page": 2, "size": ch.MAX_PAGE_SIZE, "sort": "asc"}
    assert ch.parse_query(explicit) == {**explicit, "date_from": None, "date_to": None}


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"page": 0}, "query.page: 0 is below 1"),
        ({"page": -3}, "query.page"),
        ({"size": 1001}, "query.size: 1001 is above the maximum of 1000"),
        ({"size": 0}, "query.size"),
        ({"page": 2**62}, "query.page"),
        ({"sort": "newest"}, "query.sort"),
        ({"sort": ""}, "query.sort"),
    ],
)
def test_bad_paging_is_bad_parameters(change: dict[str, Any], where: str) -> None:
    message = rejection(ch.Reason.BAD_PARAMETERS, ch.parse_query, {"pid": "p1", **change})
    assert message.startswith(where)


@pytest.mark.parametrize("change", [{"page": "1"}, {"size": True}, {"size": 10.0}])
def test_paging_that_is_not_an_integer_is_malformed(change: dict[str, Any]) -> None:
    rejection(ch.Reason.MALFORMED_MESSAGE, ch.parse_query, {"pid": "p1", **change})


def test_dates_are_inclusive_utc_days_or_ms() -> None:
    day = ch.parse_query({"pid": "p", "date_from": "2024-01-02", "date_to": "2024-01-02"})
    assert (day["date_from"], day["date_to"]) == (1_704_153_600_000, 1_704_239_999_999)
    ms = ch.parse_query({"pid": "p", "date_from": 5, "date_to": 5})
    assert (ms["date_from"], ms["date_to"]) == (5, 5)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"date_from": "2024-13-01"}, "query.date_from"),
        ({"date_from": "yesterday"}, "query.date_from"),
        ({"date_from": "2024-W01-1"}, "query.date_from"),
        ({"date_from": "\uff12\uff10\uff12\uff14-01-01"}, "query.date_from"),
        ({"date_to": "1969-12-31"}, "query.date_to"),
        ({"date_to": -1}, "query.date_to"),
        ({"date_to": 2**63}, "query.date_to"),
        ({"date_to": 1.5}, "query.date_to"),
        ({"date_to": True}, "query.date_to"),
        ({"date_to": [2024, 1, 1]}, "query.date_to"),
        ({"date_from": "2024-01-02", "date_to": "2024-01-01"}, "query.date_from"),
        ({"date_from": 10, "date_to": 9}, "query.date_from"),
    ],
)
def test_bad_dates_are_bad_parameters(change: dict[str, Any], where: str) -> None:
    message = rejection(ch.Reason.BAD_PARAMETERS, ch.parse_query, {"pid": "p1", **change})
    assert message.startswith(where)


@pytest.mark.parametrize(
    ("page", "size", "count", "has_more"),
    [(1, 2, 2, True), (2, 2, 2, True), (3, 2, 1, False), (4, 2, 0, False), (1, 5, 5, False)],
)
def test_query_result_pages(page: int, size: int, count: int, has_more: bool) -> None:
    entries = chain(5)
    request = ch.parse_query({"pid": "p1", "page": page, "size": size, "sort": "asc"})
    rows = entries[(page - 1) * size : page * size]
    action, result = ch.query_result(request, rows, 5, max_bytes=1 << 20)
    assert action == "result"
    assert len(result["entries"]) == count
    assert (result["total"], result["page"], result["size"]) == (5, page, size)
    assert result["has_more"] is has_more


def test_a_page_too_big_for_a_reply_is_too_many_results() -> None:
    request = ch.parse_query({"pid": "p1", "size": 5})
    entries = chain(5)
    message = rejection(
        ch.Reason.TOO_MANY_RESULTS, ch.query_result, request, entries, 5, max_bytes=500
    )
    assert message.startswith("query.size: page 1 of 5 entries is ")
    assert ch.query_result(request, entries[:1], 5, max_bytes=500)[0] == "result"


def test_get_returns_one_entry_or_not_found() -> None:
    entry = chain(1)[0]
    request = ch.parse_get({"pid": "p1", "id": entry["entry_hash"]})
    assert ch.get_result(request, entry, max_bytes=10_000) == (
        "result",
        {"entries": [entry], "total": 1, "page": 1, "size": 1, "has_more": False},
    )
    message = rejection(ch.Reason.NOT_FOUND, ch.get_result, request, None, max_bytes=10_000)
    assert message == f"get.id: process 'p1' has no entry {entry['entry_hash']}"
    # an entry too large to answer with (one logged before headers were bounded)
    message = rejection(ch.Reason.TOO_MANY_RESULTS, ch.get_result, request, entry, max_bytes=100)
    assert message.startswith(f"get.id: entry {entry['entry_hash']} is ")


def test_get_refuses_an_id_that_is_no_document_id() -> None:
    assert rejection(ch.Reason.BAD_PARAMETERS, ch.parse_get, {"pid": "p", "id": "42"}).startswith(
        "get.id"
    )
    rejection(ch.Reason.MALFORMED_MESSAGE, ch.parse_get, {"pid": "p", "id": 42})


def test_keys_takes_no_fields() -> None:
    assert ch.parse_keys({}) is None
    rejection(ch.Reason.MALFORMED_MESSAGE, ch.parse_keys, {"all": True})


def test_replies_are_msgpack_maps() -> None:
    refusal = ch.Rejection(ch.Reason.NOT_FOUND, "get.id: nothing")
    assert refusal.reply() == ("rejection", {"code": "NOT_FOUND", "message": "get.id: nothing"})
    assert unpack(pack(refusal.reply()[1])) == {"code": "NOT_FOUND", "message": "get.id: nothing"}
    assert ch.processed() == ("processed", {})
    assert ch.processed("a.b.c") == ("processed", {"receipt": "a.b.c"})


# --- the hash chain ----------------------------------------------------------------------


def test_first_entry_links_to_zero_and_hashes_the_documented_fields() -> None:
    request = log_request(header={"event": "tally.open"}, payload_type="application/x")
    entry = next_entry(None, request, client_id=BOB, now_ms=T0)
    assert (entry["seq"], entry["prev_hash"], entry["timestamp"]) == (1, "0" * 64, T0)
    hashed = {
        "pid": "p1",
        "seq": 1,
        "prev_hash": "0" * 64,
        "timestamp": T0,
        "client_id": BOB,
        "header": {"event": "tally.open"},
        "payload_sha256": hashlib.sha256(b"evidence").hexdigest(),
        "payload_type": "application/x",
    }
    assert entry["entry_hash"] == hashlib.sha256(canonical(hashed)).hexdigest()
    assert entry["payload"] == b"evidence"


def test_entries_never_go_back_in_time() -> None:
    first = next_entry(None, log_request(), client_id=ALICE, now_ms=T0)
    second = next_entry(first, log_request(), client_id=ALICE, now_ms=T0 - 5000)
    assert (second["seq"], second["timestamp"], second["prev_hash"]) == (
        2,
        T0,
        first["entry_hash"],
    )


def test_next_entry_refuses_a_predecessor_from_another_process() -> None:
    first = chain(1, pid="p1")[0]
    with pytest.raises(ValueError, match="from process 'p1', not 'p2'"):
        next_entry(first, log_request("p2"), client_id=ALICE, now_ms=T0)


def test_a_chain_survives_msgpack_and_verifies_in_windows() -> None:
    entries = unpack(pack(chain(6)))
    verify_chain(entries)
    verify_chain(entries[3:], prev=entries[2])
    with pytest.raises(ChainError, match="seq 4 where 1 is due"):
        verify_chain(entries[3:])


def chain_problem(entries: list[Any], prev: Any = None) -> ChainError:
    with pytest.raises(ChainError) as info:
        verify_chain(entries, prev)
    return info.value


def test_a_dropped_entry_is_reported_where_the_gap_is() -> None:
    entries = chain(4)
    error = chain_problem([entries[0], entries[1], entries[3]])
    assert error.index == 2
    assert "seq 4 where 3 is due" in error.reason


def test_swapped_entries_are_reported() -> None:
    entries = chain(3)
    assert chain_problem([entries[0], entries[2], entries[1]]).index == 1


def test_a_first_entry_with_a_nonzero_prev_hash_is_reported() -> None:
    entries = chain(2)
    error = chain_problem([entries[1]], prev={**entries[0], "entry_hash": "1" * 64})
    assert "prev_hash" in error.reason


def test_a_payload_swapped_for_another_is_reported() -> None:
    entries = chain(2)
    entries[1] = {**entries[1], "payload": b"forged"}
    error = chain_problem(entries)
    assert (error.index, error.reason) == (1, "seq 2: the payload does not hash to payload_sha256")


def test_a_withheld_payload_still_verifies() -> None:
    entries = chain(2)
    entries[0] = {**entries[0], "payload": None}
    verify_chain(entries)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"extra": 1}, "unexpected ['extra']"),
        ({"seq": True}, "seq is a bool"),
        ({"header": {"amount": 1.5}}, "cannot be hashed"),
        ({"entry_hash": "X" * 64}, "entry_hash 'XXX"),
    ],
)
def test_malformed_entries_are_reported(change: dict[str, Any], reason: str) -> None:
    entries = chain(1)
    assert reason in chain_problem([{**entries[0], **change}]).reason


def test_an_entry_that_is_not_a_map_is_reported() -> None:
    assert chain_problem([["not", "an", "entry"]]).reason == "is a list, not a map"


headers = st.dictionaries(
    st.text(max_size=6),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.text(max_size=8)
        | st.binary(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
        max_leaves=6,
    ),
    max_size=3,
)
appends = st.lists(
    st.tuples(
        st.sampled_from([ALICE, BOB, CAROL]),
        headers,
        st.binary(min_size=1, max_size=40),
        st.sampled_from(LOG_MODES),
        st.integers(0, 2**45),
    ),
    min_size=1,
    max_size=8,
)


def build(steps: list[tuple[str, dict[str, Any], bytes, str, int]]) -> list[ch.Entry]:
    entries: list[ch.Entry] = []
    for client, header, payload, mode, now_ms in steps:
        obj = log_object("pid", payload, mode=mode, header=None if mode == "hash" else header)
        request = ch.parse_log(obj, max_payload=MAX_PAYLOAD)
        entries.append(
            next_entry(
                entries[-1] if entries else None, request, client_id=client, now_ms=now_ms
            )
        )
    return entries


@settings(deadline=None)
@given(appends)
def test_any_sequence_of_appends_verifies(steps: list[Any]) -> None:
    entries = build(steps)
    verify_chain(entries)
    assert [entry["seq"] for entry in entries] == list(range(1, len(entries) + 1))


def tampered(draw: st.DrawFn, entry: ch.Entry, name: str) -> Any:
    """A different value for one field of an entry, of the kind an attacker would write."""
    value = entry[name]  # type: ignore[literal-required]
    if name in ("prev_hash", "payload_sha256", "entry_hash"):
        at = draw(st.integers(0, 63))
        digit = draw(st.sampled_from("0123456789abcdef").filter(lambda d: d != value[at]))
        return value[:at] + digit + value[at + 1 :]
    if name == "payload":
        if value is None:  # disclosing the true payload is no forgery

            def unlike(data: bytes) -> bool:
                return hashlib.sha256(data).hexdigest() != entry["payload_sha256"]

            return draw(st.binary(min_size=1, max_size=8).filter(unlike))
        at = draw(st.integers(0, len(value) - 1))
        byte = draw(st.integers(0, 255).filter(lambda b: b != value[at]))
        return value[:at] + bytes([byte]) + value[at + 1 :]
    if name == "header":
        return draw(headers.filter(lambda h: canonical(h) != canonical(value)))
    if isinstance(value, int):
        return draw(st.integers(0, 2**63 - 1).filter(lambda n: n != value))
    return draw(st.text(max_size=50).filter(lambda t: t != value))


@settings(deadline=None)
@given(appends, st.data())
def test_any_changed_field_is_detected_at_its_entry(steps: list[Any], data: st.DataObject) -> None:
    entries = build(steps)
    index = data.draw(st.integers(0, len(entries) - 1))
    name = data.draw(st.sampled_from(sorted(entries[index])))
    forged = {**entries[index], name: tampered(data.draw, entries[index], name)}
    with pytest.raises(ChainError) as info:
        verify_chain([*entries[:index], forged, *entries[index + 1 :]])
    assert info.value.index == index


@settings(deadline=None)
@given(appends, st.data())
def test_any_changed_byte_of_a_stored_chain_is_detected(
    steps: list[Any], data: st.DataObject
) -> None:
    packed = pack(build(steps))
    at = data.draw(st.integers(0, len(packed) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != packed[at]))
    try:
        decoded = unpack(packed[:at] + bytes([byte]) + packed[at + 1 :])
    except CodecError:
        return  # no longer msgpack: the damage is plain to see
    if decoded == unpack(packed):
        return  # another encoding of the same values (e.g. a wider integer type)
    assert isinstance(decoded, list)
    with pytest.raises(ChainError):
        verify_chain(decoded)


# --- client log modes --------------------------------------------------------------------


def test_full_mode_sends_the_payload_and_its_hash() -> None:
    obj = log_object("p1", b"\x00\x01", header={"event": "chit.good"})
    assert obj == {
        "pid": "p1",
        "header": {"event": "chit.good"},
        "payload": b"\x00\x01",
        "payload_sha256": hashlib.sha256(b"\x00\x01").hexdigest(),
        "payload_type": "application/octet-stream",
    }
    assert ch.parse_log(obj, max_payload=64)["payload"] == b"\x00\x01"


def test_header_mode_keeps_the_payload_at_home() -> None:
    obj = log_object("p1", "secret terms", mode="header", header={"event": "tally.open"})
    assert "payload" not in obj
    assert obj["header"] == {"event": "tally.open"}
    assert obj["payload_sha256"] == hashlib.sha256(b"secret terms").hexdigest()
    assert obj["payload_type"] == "text/plain; charset=utf-8"
    entry = next_entry(None, ch.parse_log(obj, max_payload=64), client_id=ALICE, now_ms=T0)
    assert entry["payload"] is None
    verify_chain([entry])


def test_hash_mode_sends_the_hash_alone() -> None:
    obj = log_object("p1", {"units": 500}, mode="hash")
    assert obj == {
        "pid": "p1",
        "header": {},
        "payload_sha256": hashlib.sha256(canonical({"units": 500})).hexdigest(),
        "payload_type": "application/msgpack",
    }
    with pytest.raises(ValueError, match="hash alone"):
        log_object("p1", b"x", mode="hash", header={"event": "tally.open"})


def test_client_helper_refuses_unknown_modes_and_floats() -> None:
    with pytest.raises(ValueError, match="log mode 'all'"):
        log_object("p1", b"x", mode="all")
    with pytest.raises(CodecError):
        log_object("p1", {"units": 1.5})


def test_log_round_trip_from_client_to_verified_receipt() -> None:
    ring = keyring()
    store: dict[str, Any] = {"owners": None, "entries": []}
    receipts = []
    for n in range(3):
        obj = unpack(pack(log_object("tally-9", {"chit": n}, header={"n": n})))
        request = ch.parse_log(obj, max_payload=MAX_PAYLOAD)
        new_owners = ch.authorize("log", request["pid"], BOB, store["owners"])
        if new_owners:
            store["owners"] = set(new_owners)
        prev = store["entries"][-1] if store["entries"] else None
        entry = next_entry(prev, request, client_id=BOB, now_ms=T0 + n)
        store["entries"].append(entry)
        action, reply = ch.processed(ring.receipts([entry])[0])
        assert action == "processed"
        receipts.append((obj, unpack(pack(reply))["receipt"]))
    assert store["owners"] == {BOB}
    batch = ring.receipts(unpack(pack(store["entries"])))  # the same entries as one log_batch
    jwks = unpack(pack(ring.jwks()))
    for (obj, receipt), batched, entry in zip(receipts, batch, store["entries"], strict=True):
        expect = {
            "process_id": "tally-9",
            "client_id": BOB,
            "payload_sha256": obj["payload_sha256"],
        }
        for token in (receipt, batched):
            assert rc.verify_receipt(token, jwks, expect=expect)["seq"] == entry["seq"]
            rc.verify_receipt(token, jwks, expect=rc.entry_claims(entry))
    verify_chain(unpack(pack(store["entries"])))


def test_a_houses_answer_with_receipts_too_long_for_one_is_malformed_and_not_stored() -> None:
    """A hostile clearing house answered a 256-entry batch with 1 MB of "signed" text: each
    entry's receipt repeats it, and the client stored 256 MB of receipts it had found invalid.
    Such an answer is malformed before anything of it is stored (red team)."""
    from protocol import evidence as ev
    from protocol import receipts as rc

    big = {"signed": "x" * (rc.MAX_SIGNED + 1), "results": [{"entry": "y"}] * 256}
    with pytest.raises(ev.MalformedAnswer, match="longer than a receipt's"):
        ev.batch_results(big, 256)
    long_part = {"signed": "x", "results": [{"entry": "y" * (rc.MAX_ENTRY_PART + 1)}]}
    with pytest.raises(ev.MalformedAnswer, match="longer than a receipt's"):
        ev.batch_results(long_part, 1)
    assert ev.batch_results({"signed": "x", "results": [{"entry": "y"}]}, 1) == ("x", ["y"])
    huge = "z" * (rc.MAX_RECEIPT + 1)
    refused = ev.judge("log", "processed", {"receipt": huge})
    assert refused is not None and refused.code == ev.MALFORMED
    assert ev.judge("log", "processed", {"receipt": "z" * rc.MAX_RECEIPT}) is None
