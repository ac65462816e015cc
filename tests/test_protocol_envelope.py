"""protocol/envelope.py: the message envelope and ack frames, validated field by field."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.codec import CodecError, pack
from protocol.envelope import (
    ATTEMPT_ROOM,
    MAX_ERROR_CODE,
    MAX_ERROR_MESSAGE,
    MAX_NESTING,
    Ack,
    Envelope,
    EnvelopeError,
    ack_frame,
    attempt_prefix,
    parse_frame,
    unsendable,
    with_attempt,
)
from protocol.keys import ChipAddress, SigningKey, b64u

ALICE = SigningKey(bytes(range(32))).agent_id
BOB = SigningKey(bytes(range(32, 64))).agent_id
MID = bytes(range(16))
TARGETS = ["tally", "chit", "route", "lift", "relay", "ch", "node"]


def envelope_map(**changes: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "v": 1,
        "id": MID,
        "target": "tally",
        "action": "offer",
        "object": {"units": 500, "memo": "rent"},
        "try": 1,
        "last": 1_700_000_000_000,
        "to": {"agent": BOB, "cuid": "bob", "host": "127.0.0.1", "port": 7001},
        "from": {"agent": ALICE, "cuid": "alice"},
    }
    value.update(changes)
    return value


def body(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


# -- envelopes ------------------------------------------------------------------------------


def test_valid_envelope_parses() -> None:
    message = parse_frame(body(envelope_map(re=bytes(16))))
    assert isinstance(message, Envelope)
    assert message.id == MID
    assert (message.target, message.action) == ("tally", "offer")
    assert message.object == {"units": 500, "memo": "rent"}
    assert (message.try_, message.last, message.re) == (1, 1_700_000_000_000, bytes(16))
    assert message.to == ChipAddress(agent=BOB, cuid="bob", host="127.0.0.1", port=7001)
    assert message.from_ == ChipAddress(agent=ALICE, cuid="alice")


@given(st.integers(1, 2**40), st.integers(0, 2**62), st.booleans())
def test_an_attempt_spliced_onto_the_encoded_envelope_parses_as_the_whole(
        tries: int, last: int, with_re: bool) -> None:
    """Each attempt appends its try and last to the envelope encoded once: the same message
    as encoding it all again."""
    value = envelope_map(re=bytes(16)) if with_re else envelope_map()
    body = with_attempt(attempt_prefix(value), tries, last)
    assert parse_frame(body) == parse_frame(pack({**value, "try": tries, "last": last}))
    assert msgpack.unpackb(body) == {**value, "try": tries, "last": last}


def test_envelope_round_trip_with_and_without_re() -> None:
    for re in (None, b"\x01" * 16):
        envelope = Envelope(
            id=MID,
            target="chit",
            action="pay",
            object={"nested": {"list": [1, b"\x00", None, True]}},
            to=ChipAddress(agent=BOB, host="::1", port=7000),
            from_=ChipAddress(agent=ALICE, cuid="alice"),
            try_=3,
            last=42,
            re=re,
        )
        as_map = envelope.to_map()
        assert ("re" in as_map) == (re is not None)
        assert (as_map["v"], as_map["try"], as_map["last"]) == (1, 3, 42)
        assert as_map["from"] == {"agent": ALICE, "cuid": "alice"}
        assert as_map["to"] == {"agent": BOB, "host": "::1", "port": 7000}
        assert parse_frame(envelope.encode()) == envelope


@pytest.mark.parametrize("field", ["target", "action", "object", "try", "last", "to", "from"])
def test_missing_field_is_named_and_carries_the_id(field: str) -> None:
    value = envelope_map()
    del value[field]
    with pytest.raises(EnvelopeError, match=f"missing field\\(s\\) \\['{field}'\\]") as info:
        parse_frame(body(value))
    assert info.value.message_id == MID


def test_missing_id_has_no_message_id() -> None:
    value = envelope_map()
    del value["id"]
    with pytest.raises(EnvelopeError, match="'id'") as info:
        parse_frame(body(value))
    assert info.value.message_id is None


@pytest.mark.parametrize("bad_id", [b"", bytes(15), bytes(17), "x" * 16, 16, None, [0] * 16])
def test_unreadable_id_is_named_and_has_no_message_id(bad_id: Any) -> None:
    with pytest.raises(EnvelopeError, match="'id' must be 16 bytes") as info:
        parse_frame(body(envelope_map(id=bad_id)))
    assert info.value.message_id is None


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("target", "bank"),
        ("target", ""),
        ("target", 1),
        ("target", b"tally"),
        ("target", ["tally"]),
        ("target", {"tally": 1}),
        ("target", None),
        ("action", ""),
        ("action", "x" * 65),
        ("action", 7),
        ("action", b"offer"),
        ("object", [1, 2]),
        ("object", "map"),
        ("object", None),
        ("try", 0),
        ("try", -1),
        ("try", True),
        ("try", "1"),
        ("try", 1.0),
        ("last", -1),
        ("last", True),
        ("last", 1.5),
        ("last", None),
        ("to", "not a map"),
        ("to", {"agent": "short"}),
        ("to", {"agent": BOB, "host": "h"}),
        ("to", {"agent": BOB, "host": "h", "port": 70000}),
        ("from", {"agent": ALICE, "extra": 1}),
        ("from", {"agent": ALICE, "cuid": "no spaces"}),
        ("from", None),
        ("re", bytes(15)),
        ("re", "x" * 16),
        ("v", 2),
        ("v", 0),
        ("v", "1"),
        ("v", True),
        ("v", 1.0),
        ("v", None),
    ],
)
def test_mistyped_field_is_named_and_carries_the_id(field: str, bad: Any) -> None:
    with pytest.raises(EnvelopeError, match=f"'{field}'") as info:
        parse_frame(body(envelope_map(**{field: bad})))
    assert info.value.message_id == MID


def test_action_of_64_characters_is_accepted() -> None:
    message = parse_frame(body(envelope_map(action="x" * 64)))
    assert isinstance(message, Envelope) and message.action == "x" * 64


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_is_accepted(target: str) -> None:
    message = parse_frame(body(envelope_map(target=target)))
    assert isinstance(message, Envelope) and message.target == target


def test_unknown_field_is_named_and_carries_the_id() -> None:
    with pytest.raises(EnvelopeError, match="unknown field\\(s\\) \\['extra'\\]") as info:
        parse_frame(body(envelope_map(extra=1)))
    assert info.value.message_id == MID


def test_missing_v_is_named() -> None:
    value = envelope_map()
    del value["v"]
    with pytest.raises(EnvelopeError, match="'v'") as info:
        parse_frame(body(value))
    assert info.value.message_id == MID


@pytest.mark.parametrize("value", [[1, 2], 5, "text", None, b"bytes", True])
def test_non_map_bodies(value: Any) -> None:
    with pytest.raises(EnvelopeError, match="expected a map") as info:
        parse_frame(body(value))
    assert info.value.message_id is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x81",
        body(envelope_map()) + b"\x00",
        body({1: 2}),
        body({b"v": 1}),
        body(envelope_map(object={b"k": 1})),
    ],
)
def test_malformed_msgpack_is_a_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        parse_frame(data)


# -- acks -----------------------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_a_body_nested_past_the_limit_is_malformed() -> None:
    """msgpack decodes ~1,000 levels, more than code that walks them can recurse: a peer's
    frame nested deeper than MAX_NESTING (the envelope map counts as one) is refused."""
    assert parse_frame(body(envelope_map(object={"x": nested(MAX_NESTING - 2)})))
    with pytest.raises(CodecError, match=f"nested deeper than {MAX_NESTING}"):
        parse_frame(body(envelope_map(object={"x": nested(MAX_NESTING - 1)})))


def test_what_a_peer_would_refuse_is_not_sendable() -> None:
    """A message whose frame could pass max_frame, or whose nesting passes MAX_NESTING, is
    refused where it is made: queued, it would be sent and refused again and again."""
    fine = envelope_map()
    prefix = attempt_prefix(fine)
    assert unsendable(prefix, fine, len(prefix) + ATTEMPT_ROOM) is None
    assert "over max_frame" in unsendable(prefix, fine, len(prefix) + ATTEMPT_ROOM - 1)
    assert len(with_attempt(prefix, 2**64 - 1, 2**63 - 1)) <= len(prefix) + ATTEMPT_ROOM
    deep = envelope_map(object={"x": nested(MAX_NESTING - 1)})
    assert "deeper than" in unsendable(attempt_prefix(deep), deep, 1 << 20)


def test_an_error_ack_echoing_a_huge_value_is_cut_short() -> None:
    ack = parse_frame(ack_frame(MID, "BAD_FIELD", "x" * 100_000))
    assert isinstance(ack, Ack) and ack.error is not None
    assert len(ack.error["message"]) == MAX_ERROR_MESSAGE
    assert ack.error["message"].endswith("...")


def test_a_peers_error_ack_is_cut_as_ours_are() -> None:
    """A peer's refusal of our message is kept (its outbox row, the log, a tally's error):
    one whose code or message is a frame's worth is cut on receipt, as ours are when sent,
    and nothing but the code and message is kept."""
    huge = {"code": "BAD_FIELD" * 10_000, "message": "x" * 500_000, "also": "y" * 1000}
    ack = parse_frame(body({"v": 1, "ack": MID, "error": huge}))
    assert isinstance(ack, Ack) and ack.error is not None
    assert set(ack.error) == {"code", "message"}
    assert len(ack.error["code"]) == MAX_ERROR_CODE and ack.error["code"].endswith("...")
    assert len(ack.error["message"]) == MAX_ERROR_MESSAGE


def test_ack_without_error() -> None:
    frame = ack_frame(MID)
    assert msgpack.unpackb(frame) == {"v": 1, "ack": MID}
    assert parse_frame(frame) == Ack(MID, None)


def test_ack_with_error() -> None:
    frame = ack_frame(MID, "NOT_FOUND", "no such tally")
    assert msgpack.unpackb(frame) == {
        "v": 1,
        "ack": MID,
        "error": {"code": "NOT_FOUND", "message": "no such tally"},
    }
    ack = parse_frame(frame)
    assert ack == Ack(MID, {"code": "NOT_FOUND", "message": "no such tally"})
    assert parse_frame(Ack(MID, {"code": "X", "message": ""}).encode()) == Ack(
        MID, {"code": "X", "message": ""}
    )


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"v": 1, "ack": bytes(15)}, "ack"),
        ({"v": 1, "ack": "x" * 16}, "ack"),
        ({"v": 1, "ack": None}, "ack"),
        ({"v": 1, "ack": MID, "error": "boom"}, "error"),
        ({"v": 1, "ack": MID, "error": {"code": "X"}}, "error"),
        ({"v": 1, "ack": MID, "error": {"code": 1, "message": "m"}}, "error"),
        ({"v": 1, "ack": MID, "error": {"code": "X", "message": None}}, "error"),
        ({"v": 1, "ack": MID, "extra": 1}, "extra"),
        ({"v": 2, "ack": MID}, "v"),
        ({"ack": MID}, "v"),
    ],
)
def test_bad_acks_are_named_and_never_acked(value: dict[str, Any], field: str) -> None:
    with pytest.raises(EnvelopeError, match=f"'{field}'") as info:
        parse_frame(body(value))
    assert info.value.message_id is None  # nobody acks an ack


# -- properties -----------------------------------------------------------------------------

agent_ids = st.binary(min_size=32, max_size=32).map(b64u)
cuids = st.none() | st.from_regex(r"[A-Za-z0-9_.\-]{1,64}", fullmatch=True)
addresses = st.builds(
    lambda agent, cuid, where: ChipAddress(agent, cuid, *where),
    agent_ids,
    cuids,
    st.just((None, None))
    | st.tuples(
        st.from_regex(r"[A-Za-z0-9_.\-]{1,20}", fullmatch=True) | st.just("::1"),
        st.integers(min_value=0, max_value=65535),
    ),
)
plain_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.binary(max_size=20)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=15,
)
envelopes = st.builds(
    Envelope,
    id=st.binary(min_size=16, max_size=16),
    target=st.sampled_from(TARGETS),
    action=st.text(min_size=1, max_size=64),
    object=st.dictionaries(st.text(max_size=6), plain_values, max_size=4),
    to=addresses,
    from_=addresses,
    try_=st.integers(min_value=1, max_value=2**63),
    last=st.integers(min_value=0, max_value=2**63),
    re=st.none() | st.binary(min_size=16, max_size=16),
)


@settings(deadline=None, max_examples=200)
@given(envelopes)
def test_any_valid_envelope_round_trips(envelope: Envelope) -> None:
    assert parse_frame(envelope.encode()) == envelope


any_msgpack = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.binary(max_size=20)
    | st.text(max_size=10)
    | st.sampled_from(TARGETS),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=6) | st.binary(max_size=4) | st.integers(-(2**63), 2**63 - 1),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    ["v", "id", "target", "action", "object", "try", "last", "to", "from", "re", "ack", "error"]
)


@st.composite
def near_envelopes(draw: st.DrawFn) -> dict[Any, Any]:
    """A valid envelope or ack map with some fields replaced, removed or added."""
    value: dict[Any, Any] = draw(
        st.sampled_from(
            [envelope_map(), {"v": 1, "ack": MID, "error": {"code": "X", "message": ""}}]
        )
    ).copy()
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        name = draw(field_names | st.binary(max_size=2))
        if draw(st.booleans()):
            value.pop(name, None)
        else:
            value[name] = draw(any_msgpack)
    return value


def _parse_quietly(data: bytes) -> Envelope | Ack | None:
    try:
        return parse_frame(data)
    except (CodecError, EnvelopeError):
        return None


@settings(deadline=None, max_examples=400)
@given(any_msgpack | near_envelopes())
def test_arbitrary_msgpack_raises_only_codec_or_envelope_errors(value: Any) -> None:
    message = _parse_quietly(pack(value))
    if message is not None:
        assert parse_frame(message.encode()) == message


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_codec_or_envelope_errors(data: bytes) -> None:
    _parse_quietly(data)
