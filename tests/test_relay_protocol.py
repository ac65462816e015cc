"""The sans-IO relay: messages, addresses, signatures, policies, views and the state machine."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.codec import canonical, pack, unpack
from protocol.keys import SigningKey, b64u
from protocol.relay import APPLIES_FROM, TRANSITIONS, AckStatus, Status, parse_status
from protocol.relay_address import ViewAddress, parse_view
from protocol.relay_fields import (
    AccessDenied,
    AddressError,
    DecryptionError,
    MessageError,
    ProofError,
    RelayError,
    SignatureError,
)
from protocol.relay_messages import Ack, GetStateMessage, Meta, RequestState, View, ViewPayload
from protocol.relay_policy import AccessRule, VerificationPolicy, check_access, required_signers
from protocol.relay_query import (
    NetworkQuery,
    Query,
    admit_query,
    make_query,
    new_nonce,
    sign_request,
    verify_request,
)
from protocol.relay_seal import seal, unseal
from protocol.relay_views import MAX_PROOFS, Proof, make_view, open_view, verify_view

SOURCE = SigningKey(bytes([1]) * 32)
REQUESTOR = SigningKey(bytes([2]) * 32)
OTHER = SigningKey(bytes([3]) * 32)
TALLY = "6f1c2a6e-8d4b-4c57-9a0e-3b6f9f1d2c44"
REQUEST_ID = "0b9f3f5e-5d0c-4d6e-8a8e-2f4a7c1d9e01"
ADDRESS = f"{SOURCE.agent_id}/chipnet/tally:{TALLY}"
NONCE = new_nonce(bytes(range(16)))
RAND = bytes(range(100, 132))
NOW_MS = 1_700_000_000_000


def roundtrip(message):
    """Through the wire: to_map, msgpack, back."""
    return type(message).from_map(unpack(pack(message.to_map())))


def signed_query(address: str = ADDRESS, key: SigningKey = REQUESTOR) -> Query:
    return make_query(
        NetworkQuery(address=address),
        request_id=REQUEST_ID,
        nonce=NONCE,
        node_key=key,
        network="destnet",
    )


def view_for(
    *,
    address: str = ADDRESS,
    nonce: str = NONCE,
    requestor: str = REQUESTOR.agent_id,
    confidential: bool = False,
    source: SigningKey = SOURCE,
) -> View:
    return make_view(
        b"ledger answer", address, nonce, requestor, confidential, source, NOW_MS, RAND
    )


def view_data(view: View) -> dict:
    return unpack(view.data)


def with_data(view: View, data: dict) -> View:
    return dataclasses.replace(view, data=canonical(data))


# --- messages -----------------------------------------------------------------------------


def test_status_numbers_and_names_follow_weaver():
    assert {s.name: int(s) for s in Status} == {
        "PENDING_ACK": 0,
        "PENDING": 1,
        "ERROR": 2,
        "COMPLETED": 3,
        "DELETED": 7,
    }
    assert (AckStatus.OK, AckStatus.ERROR) == (0, 1)


def test_network_query_needs_only_an_address():
    query = NetworkQuery.from_map({"address": ADDRESS, "confidential": True})
    assert query.address == ADDRESS and query.confidential and query.policy == ()
    assert roundtrip(query) == query


def test_query_round_trips_and_carries_the_requestor():
    query = signed_query()
    assert query.certificate == REQUESTOR.agent_id == query.requesting_relay
    assert roundtrip(query) == query
    assert set(query.to_map()) == {
        "policy",
        "address",
        "requesting_relay",
        "requesting_network",
        "certificate",
        "requestor_signature",
        "nonce",
        "requesting_org",
        "confidential",
        "request_id",
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"nonce": "not-hex"}, "Query.nonce"),
        ({"request_id": "42"}, "Query.request_id"),
        ({"request_id": REQUEST_ID.upper()}, "Query.request_id"),
        ({"certificate": "someone"}, "Query.certificate"),
        ({"requestor_signature": b"short"}, "Query.requestor_signature"),
        ({"confidential": 1}, "Query.confidential"),
        ({"policy": ["not-an-agent"]}, "Query.policy"),
        ({"address": "nowhere"}, "Query.address"),
        ({"requesting_network": "9net"}, "Query.requesting_network"),
        ({"requesting_relay": ""}, "Query.requesting_relay"),
        ({"surprise": 1}, "Query.surprise"),
    ],
)
def test_query_validation_names_the_bad_field(change, field):
    with pytest.raises(MessageError) as error:
        Query.from_map({**signed_query().to_map(), **change})
    assert error.value.field == field
    assert str(error.value).startswith(field)


def test_query_requires_the_requestor_fields():
    fields = signed_query().to_map()
    del fields["nonce"]
    with pytest.raises(MessageError, match=r"Query\.nonce: missing"):
        Query.from_map(fields)


def test_ack_view_payload_request_state_and_get_state_round_trip():
    view = view_for()
    messages = [
        Ack(AckStatus.OK, REQUEST_ID),
        Ack(AckStatus.ERROR, REQUEST_ID, "no such view"),
        ViewPayload(REQUEST_ID, view=view),
        ViewPayload(REQUEST_ID, error="driver failed"),
        RequestState(REQUEST_ID, Status.PENDING_ACK),
        RequestState(REQUEST_ID, Status.COMPLETED, view=view),
        RequestState(REQUEST_ID, Status.ERROR, error="refused"),
        RequestState(REQUEST_ID, Status.DELETED),
        GetStateMessage(REQUEST_ID),
    ]
    for message in messages:
        assert roundtrip(message) == message
    assert RequestState(REQUEST_ID, Status.COMPLETED, view=view).to_map()["status"] == 3
    assert type(Ack(AckStatus.OK, REQUEST_ID).to_map()["status"]) is int


@pytest.mark.parametrize(
    ("cls", "value", "field"),
    [
        (Ack, {"status": 2, "request_id": REQUEST_ID}, "Ack.status"),
        (Ack, {"status": 0}, "Ack.request_id"),
        (ViewPayload, {"request_id": REQUEST_ID}, "ViewPayload"),
        (ViewPayload, {"request_id": REQUEST_ID, "error": 5}, "ViewPayload.error"),
        (RequestState, {"request_id": REQUEST_ID, "status": 5}, "RequestState.status"),
        (RequestState, {"request_id": REQUEST_ID, "status": True}, "RequestState.status"),
        (RequestState, {"request_id": REQUEST_ID, "status": 3}, "RequestState.view"),
        (RequestState, {"request_id": REQUEST_ID, "status": 2}, "RequestState.error"),
        (RequestState, {"request_id": REQUEST_ID, "status": 1, "error": "x"}, "RequestState"),
        (GetStateMessage, ["not", "a", "map"], "GetStateMessage"),
        (View, {"meta": {}, "data": b""}, "View.meta.protocol"),
        (
            View,
            {"meta": {**view_for().meta.to_map(), "timestamp": "now"}, "data": b""},
            "View.meta.timestamp",
        ),
    ],
)
def test_message_validation_names_the_bad_field(cls, value, field):
    with pytest.raises(MessageError) as error:
        cls.from_map(value)
    assert error.value.field == field


def test_view_payload_refuses_both_a_view_and_an_error():
    with pytest.raises(MessageError, match="not both"):
        ViewPayload(REQUEST_ID, view=view_for(), error="also")


# --- addresses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "endpoint", "agent"),
    [
        ("relay.example.org:9080/chipnet/tally:" + TALLY, ("relay.example.org", 9080), None),
        ("127.0.0.1:65535/net_2/lift:" + TALLY, ("127.0.0.1", 65535), None),
        ("[::1]:1/Net-x/user:alice:balance", ("::1", 1), None),
        (ADDRESS, None, SOURCE.agent_id),
    ],
)
def test_address_parse_and_format(text, endpoint, agent):
    address = ViewAddress.parse(text)
    assert str(address) == text
    assert address.endpoint == endpoint and address.agent == agent


@pytest.mark.parametrize(
    "text",
    [
        "",
        "localhost:80/net",
        "localhost:80/net/tally:x/extra",
        "localhost/net/tally:x",
        "localhost:0/net/tally:x",
        "localhost:080/net/tally:x",
        "localhost:70000/net/tally:x",
        "local..host:80/net/tally:x",
        "::1:80/net/tally:x",
        "[::g]:80/net/tally:x",
        "[1.2.3.4]:80/net/tally:x",
        SOURCE.agent_id[:-1] + "/net/tally:x",
        "localhost:80/9net/tally:x",
        "localhost:80//tally:x",
        "localhost:80/net/",
        "localhost:80/net/tally::x",
        "localhost:80/net/tally:*",
        "localhost:80/net/tally x",
    ],
)
def test_malformed_addresses_are_refused(text):
    with pytest.raises(AddressError):
        ViewAddress.parse(text)


def test_malformed_address_error_says_what_is_expected():
    """A view alone (``tally:<uuid>``, what a new user types first) was told only
    "RELAY/NETWORK/VIEW": the message says what each part is, with an example."""
    with pytest.raises(AddressError, match="RELAY/NETWORK/VIEW"):
        ViewAddress.parse("localhost:80/net")
    with pytest.raises(AddressError, match=r"the source's HOST:PORT or agent id, its \[node\] "
                       r"network and a view, as in 127.0.0.1:7102/local/node:info\), got "
                       f"'tally:{TALLY}'"):
        ViewAddress.parse(f"tally:{TALLY}")
    with pytest.raises(AddressError, match="neither HOST:PORT nor a 43-character agent id"):
        ViewAddress.parse("nohost/net/tally:x")


@pytest.mark.parametrize(
    ("segment", "kind", "args"),
    [
        (f"tally:{TALLY}", "tally", (TALLY,)),
        (f"tally:{TALLY}:chits", "tally.chits", (TALLY,)),
        ("user:alice.b-1:balance", "user.balance", ("alice.b-1",)),
        (f"lift:{TALLY}", "lift", (TALLY,)),
    ],
)
def test_parse_view_kinds(segment, kind, args):
    assert parse_view(segment) == (kind, args)


@pytest.mark.parametrize(
    ("segment", "message"),
    [
        ("ledger:all", "unknown view"),
        (f"tally:{TALLY}:balance", "unknown view"),
        ("tally:1234", "not a lowercase UUID"),
        (f"lift:{TALLY.upper()}", "not a lowercase UUID"),
        ("user:" + "x" * 65 + ":balance", "not a user id"),
        ("tally:*", "must be up to"),
    ],
)
def test_parse_view_refuses_unknown_or_malformed_views(segment, message):
    with pytest.raises(AddressError, match=message):
        parse_view(segment)


# --- requestor signature and the source's admission checks --------------------------------


def test_nonce_is_32_hex_characters_from_16_random_bytes():
    assert new_nonce(bytes(range(16))) == "000102030405060708090a0b0c0d0e0f"
    with pytest.raises(ValueError):
        new_nonce(b"too short")


def test_requestor_signature_verifies_over_address_and_nonce():
    signature = sign_request(REQUESTOR, ADDRESS, NONCE)
    assert REQUESTOR.sign((ADDRESS + NONCE).encode()) == signature
    verify_request(REQUESTOR.agent_id, ADDRESS, NONCE, signature)


@pytest.mark.parametrize(
    ("requestor", "address", "nonce"),
    [
        (OTHER.agent_id, ADDRESS, NONCE),
        (REQUESTOR.agent_id, ADDRESS.replace("chipnet", "othernet"), NONCE),
        (REQUESTOR.agent_id, ADDRESS, new_nonce(bytes(16))),
    ],
)
def test_bad_requestor_signature_is_refused(requestor, address, nonce):
    signature = sign_request(REQUESTOR, ADDRESS, NONCE)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_request(requestor, address, nonce, signature)


ALLOW_ALL = [AccessRule("*", "*")]


def test_admit_query_returns_the_address():
    address = admit_query(signed_query(), agent=SOURCE.agent_id, network="chipnet", rules=ALLOW_ALL)
    assert address == ViewAddress.parse(ADDRESS)


def test_admit_query_refuses_a_signature_by_someone_else():
    forged = dataclasses.replace(
        signed_query(), requestor_signature=sign_request(OTHER, ADDRESS, NONCE)
    )
    with pytest.raises(SignatureError):
        admit_query(forged, agent=SOURCE.agent_id, network="chipnet", rules=ALLOW_ALL)


def test_admit_query_refuses_another_network_another_node_and_unknown_views():
    with pytest.raises(AddressError, match="serves network 'othernet'"):
        admit_query(signed_query(), agent=SOURCE.agent_id, network="othernet", rules=ALLOW_ALL)
    with pytest.raises(AddressError, match="not this node"):
        admit_query(signed_query(), agent=OTHER.agent_id, network="chipnet", rules=ALLOW_ALL)
    unknown = signed_query(f"{SOURCE.agent_id}/chipnet/ledger:dump")
    with pytest.raises(AddressError, match="unknown view"):
        admit_query(unknown, agent=SOURCE.agent_id, network="chipnet", rules=ALLOW_ALL)


def test_admit_query_without_a_matching_rule_is_access_denied():
    rules = [
        AccessRule(OTHER.agent_id, "*"),
        AccessRule("*", "user:*"),
        AccessRule(REQUESTOR.agent_id, f"lift:{TALLY}"),
    ]
    with pytest.raises(AccessDenied, match=REQUESTOR.agent_id):
        admit_query(signed_query(), agent=SOURCE.agent_id, network="chipnet", rules=rules)
    granted = [*rules, AccessRule(REQUESTOR.agent_id, "tally:*")]
    admit_query(signed_query(), agent=SOURCE.agent_id, network="chipnet", rules=granted)


# --- access rules and verification policies -----------------------------------------------


def test_access_rules_match_exact_or_by_trailing_star():
    anyone = REQUESTOR.agent_id
    assert check_access([AccessRule("*", "tally:*")], anyone, f"tally:{TALLY}:chits")
    assert check_access([AccessRule("*", f"tally:{TALLY}")], anyone, f"tally:{TALLY}")
    assert not check_access([AccessRule("*", f"tally:{TALLY}")], anyone, f"tally:{TALLY}:chits")
    assert not check_access([AccessRule("*", "tally")], anyone, f"tally:{TALLY}")
    assert not check_access([AccessRule("*", "tally:*")], anyone, "user:alice:balance")
    assert not check_access([AccessRule(OTHER.agent_id, "*")], anyone, "user:alice:balance")
    assert not check_access([], anyone, "user:alice:balance")


def test_longest_policy_match_wins_and_exact_beats_star():
    a, b, c, d = (SigningKey(bytes([n]) * 32).agent_id for n in (10, 11, 12, 13))
    policies = [
        VerificationPolicy("*", (a,)),
        VerificationPolicy("tally:*", (b,)),
        VerificationPolicy(f"tally:{TALLY}*", (c,)),
        VerificationPolicy(f"tally:{TALLY}:chits", (d,)),
    ]
    assert required_signers(policies, "user:alice:balance") == [a]
    assert required_signers(policies, "tally:00000000-0000-0000-0000-000000000000") == [b]
    assert required_signers(policies, f"tally:{TALLY}") == [c]
    assert required_signers(policies, f"tally:{TALLY}:chits") == [d]
    assert required_signers(policies[1:], "lift:x") == []
    merged = [*policies, VerificationPolicy("tally:*", (a, b))]
    assert required_signers(merged, "tally:other") == [b, a]


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"view": "tally:*", "signers": []}, "VerificationPolicy.signers"),
        ({"view": "tally:*", "signers": ["nobody"]}, "VerificationPolicy.signers"),
        ({"view": "ta*lly", "signers": [SOURCE.agent_id]}, "VerificationPolicy.view"),
        ({"view": "tally:**", "signers": [SOURCE.agent_id]}, "VerificationPolicy.view"),
        ({"view": "*", "signers": [SOURCE.agent_id], "x": 1}, "VerificationPolicy.x"),
    ],
)
def test_policy_validation_names_the_bad_field(value, field):
    with pytest.raises(MessageError) as error:
        VerificationPolicy.from_map(value)
    assert error.value.field == field


def test_access_rule_validation_names_the_bad_field():
    with pytest.raises(MessageError) as error:
        AccessRule.from_map({"principal": "anyone", "resource": "*"})
    assert error.value.field == "AccessRule.principal"
    with pytest.raises(MessageError) as error:
        AccessRule.from_map({"principal": "*", "resource": "*tally"})
    assert error.value.field == "AccessRule.resource"
    assert AccessRule.from_map({"principal": "*", "resource": "*"}) == AccessRule("*", "*")


# --- views: notarization, binding, confidentiality ----------------------------------------


def test_clear_view_opens_for_the_requestor():
    view = roundtrip(view_for())
    opened = open_view(view, REQUESTOR, [SOURCE.agent_id], ADDRESS, NONCE)
    assert opened.result == b"ledger answer"
    assert opened.signers == (SOURCE.agent_id,)
    assert (opened.address, opened.nonce, opened.confidential) == (ADDRESS, NONCE, False)
    assert opened.timestamp == NOW_MS
    assert view.meta == Meta("agentd", NOW_MS, "Notarization", "MSGPACK")


def test_verify_view_reports_signers_address_nonce_and_requestor():
    verified = verify_view(view_for(), [SOURCE.agent_id])
    assert verified.signers == (SOURCE.agent_id,)
    assert verified.interop.address == ADDRESS
    assert verified.interop.nonce == NONCE
    assert verified.interop.requestor == REQUESTOR.agent_id


def test_view_signed_by_the_wrong_key_is_refused():
    with pytest.raises(
        ProofError, match=f"lacks notarizations by required signer.*{SOURCE.agent_id}"
    ):
        open_view(view_for(source=OTHER), REQUESTOR, [SOURCE.agent_id], ADDRESS, NONCE)


def test_view_missing_one_required_signer_is_refused():
    with pytest.raises(ProofError, match=OTHER.agent_id):
        open_view(view_for(), REQUESTOR, [SOURCE.agent_id, OTHER.agent_id], ADDRESS, NONCE)


def test_view_with_a_proof_claiming_another_signer_is_refused():
    data = view_data(view_for(source=OTHER))
    data["proofs"][0]["signer"] = SOURCE.agent_id
    with pytest.raises(ProofError, match="does not verify"):
        verify_view(with_data(view_for(), data), [SOURCE.agent_id])


def test_view_with_an_altered_payload_is_refused():
    data = view_data(view_for())
    data["interop_payload"]["payload"] = b"forged answer"
    with pytest.raises(ProofError, match="does not verify"):
        verify_view(with_data(view_for(), data), [SOURCE.agent_id])


def test_view_padded_with_a_junk_proof_is_refused():
    data = view_data(view_for())
    data["proofs"].append(Proof(OTHER.agent_id, bytes(64)).to_map())
    with pytest.raises(ProofError, match=f"by {OTHER.agent_id} does not verify"):
        verify_view(with_data(view_for(), data), [SOURCE.agent_id])


def test_view_padded_with_copies_of_its_own_proof_or_too_many_is_refused_unchecked():
    """A source answered with 7,000 copies of its one valid proof: each was checked (0.5 s of
    the destination's writer), and the view stored. A signer twice, or more proofs than a
    view may carry, is refused before any is checked (red team)."""
    data = view_data(view_for())
    data["proofs"] = data["proofs"] * 7000
    with pytest.raises(MessageError, match="holds 7000 proofs, more than the 64"):
        verify_view(with_data(view_for(), data), [SOURCE.agent_id])
    data["proofs"] = data["proofs"][:3]
    with pytest.raises(MessageError, match="names a signer more than once"):
        verify_view(with_data(view_for(), data), [SOURCE.agent_id])
    data["proofs"] = [Proof(SigningKey.generate().agent_id, bytes(64)).to_map()
                      for _ in range(MAX_PROOFS + 1)]
    with pytest.raises(MessageError, match=f"more than the {MAX_PROOFS} a view may carry"):
        verify_view(with_data(view_for(), data), [SOURCE.agent_id])


def test_view_is_never_accepted_without_required_signers():
    with pytest.raises(ProofError, match="never accepted unverified"):
        verify_view(view_for(), [])


def test_view_of_another_proof_type_is_refused():
    view = dataclasses.replace(view_for(), meta=Meta("agentd", NOW_MS, "Endorsement", "MSGPACK"))
    with pytest.raises(ProofError, match="proof type 'Endorsement'"):
        verify_view(view, [SOURCE.agent_id])


def test_view_with_malformed_data_names_the_field():
    with pytest.raises(MessageError) as error:
        verify_view(dataclasses.replace(view_for(), data=b"\xc1"), [SOURCE.agent_id])
    assert error.value.field == "View.data"
    data = view_data(view_for())
    data["proofs"] = []
    with pytest.raises(MessageError) as error:
        verify_view(with_data(view_for(), data), [SOURCE.agent_id])
    assert error.value.field == "View.data.proofs"


def test_view_answering_another_address_is_refused():
    other_address = f"{SOURCE.agent_id}/chipnet/lift:{TALLY}"
    with pytest.raises(ProofError, match="answers"):
        open_view(view_for(address=other_address), REQUESTOR, [SOURCE.agent_id], ADDRESS, NONCE)


def test_view_answering_another_nonce_is_refused():
    stale = new_nonce(bytes(16))
    with pytest.raises(ProofError, match=f"nonce {stale}"):
        open_view(view_for(nonce=stale), REQUESTOR, [SOURCE.agent_id], ADDRESS, NONCE)


def test_view_for_another_requestor_is_refused():
    with pytest.raises(ProofError, match="requestor"):
        open_view(view_for(), OTHER, [SOURCE.agent_id], ADDRESS, NONCE)


def test_confidential_view_opens_only_for_the_requestor():
    view = roundtrip(view_for(confidential=True))
    assert b"ledger answer" not in view.data
    opened = open_view(view, REQUESTOR, [SOURCE.agent_id], ADDRESS, NONCE)
    assert opened.result == b"ledger answer" and opened.confidential
    with pytest.raises(ProofError, match="requestor"):
        open_view(view, OTHER, [SOURCE.agent_id], ADDRESS, NONCE)
    sealed = verify_view(view, [SOURCE.agent_id]).interop.payload
    context = canonical({"address": ADDRESS, "nonce": NONCE, "requestor": REQUESTOR.agent_id})
    assert unseal(sealed, REQUESTOR, context) == b"ledger answer"
    with pytest.raises(DecryptionError, match=f"{OTHER.agent_id} cannot decrypt"):
        unseal(sealed, OTHER, context)


def test_sealed_payload_is_bound_to_its_context():
    sealed = seal(b"secret", REQUESTOR.agent_id, RAND, b"request one")
    assert unseal(sealed, REQUESTOR, b"request one") == b"secret"
    with pytest.raises(DecryptionError):
        unseal(sealed, REQUESTOR, b"request two")
    with pytest.raises(DecryptionError, match="not a confidential payload"):
        unseal(b"junk", REQUESTOR, b"request one")


def test_sealing_to_a_degenerate_key_is_refused():
    low_order = b64u(bytes(32))  # y = 0 maps to u = 1, a point of small order
    with pytest.raises(RelayError, match="cannot encrypt to requestor"):
        seal(b"secret", low_order, RAND, b"context")


def test_confidential_views_are_deterministic_in_their_randomness():
    assert view_for(confidential=True) == view_for(confidential=True)
    other_rand = make_view(
        b"ledger answer", ADDRESS, NONCE, REQUESTOR.agent_id, True, SOURCE, NOW_MS, bytes(32)
    )
    assert other_rand.data != view_for(confidential=True).data
    with pytest.raises(ValueError, match="32 random bytes"):
        make_view(b"x", ADDRESS, NONCE, REQUESTOR.agent_id, True, SOURCE, NOW_MS)


def test_cleartext_answer_to_a_confidential_query_can_be_refused():
    with pytest.raises(ProofError, match="asked for a confidential view"):
        open_view(
            view_for(), REQUESTOR, [SOURCE.agent_id], ADDRESS, NONCE, require_confidential=True
        )


# --- the request state machine ------------------------------------------------------------


def applies(current: Status, incoming: Status) -> bool:
    """Whether a request in ``current`` takes ``incoming``, as the guarded update reads it."""
    return current in APPLIES_FROM[incoming]


def test_transitions_follow_the_request_lifecycle():
    assert applies(Status.PENDING_ACK, Status.PENDING)
    assert applies(Status.PENDING_ACK, Status.COMPLETED)
    assert applies(Status.PENDING, Status.ERROR)
    assert applies(Status.COMPLETED, Status.DELETED)
    assert not applies(Status.COMPLETED, Status.PENDING)  # the late Ack
    assert not applies(Status.COMPLETED, Status.COMPLETED)  # a duplicate view
    assert not applies(Status.ERROR, Status.COMPLETED)
    assert not applies(Status.DELETED, Status.COMPLETED)
    assert parse_status(3, "status") is Status.COMPLETED
    with pytest.raises(MessageError):
        parse_status(5, "status")


def test_applies_from_is_the_transition_table_read_by_target():
    for current in Status:
        for incoming in Status:
            assert applies(current, incoming) == (incoming in TRANSITIONS[current])
    assert APPLIES_FROM[Status.PENDING] == {Status.PENDING_ACK}
    assert APPLIES_FROM[Status.PENDING_ACK] == frozenset()


_RANK = {
    Status.PENDING_ACK: 0,
    Status.PENDING: 1,
    Status.COMPLETED: 2,
    Status.ERROR: 2,
    Status.DELETED: 3,
}


@settings(deadline=None)
@given(st.lists(st.sampled_from(list(Status)), max_size=30))
def test_status_never_moves_backwards(incoming):
    current = Status.PENDING_ACK
    outcome = None
    for new in incoming:
        if not applies(current, new):
            continue  # late, duplicate or backward: ignored
        assert _RANK[new] > _RANK[current]
        if current in (Status.COMPLETED, Status.ERROR):
            assert new is Status.DELETED
        if new in (Status.COMPLETED, Status.ERROR):
            assert outcome is None
            outcome = new
        current = new
    if Status.DELETED in incoming:
        assert current is Status.DELETED


# --- properties: address grammar and pattern matching -------------------------------------

hostnames = st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True), min_size=1, max_size=4)
relays = st.one_of(
    st.builds(lambda labels, port: f"{'.'.join(labels)}:{port}", hostnames, st.integers(1, 65535)),
    st.builds(lambda ip, port: f"[{ip}]:{port}", st.ip_addresses(v=6), st.integers(1, 65535)),
    st.binary(min_size=32, max_size=32).map(b64u),
)
networks = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,20}", fullmatch=True)
views = st.lists(
    st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True), min_size=1, max_size=4
).map(":".join)


@settings(deadline=None)
@given(relays, networks, views)
def test_address_round_trip(relay, network, view):
    text = f"{relay}/{network}/{view}"
    address = ViewAddress.parse(text)
    assert (address.relay, address.network, address.view) == (relay, network, view)
    assert str(address) == text
    assert ViewAddress.parse(str(address)) == address
    assert (address.agent is None) == (address.endpoint is not None)


# Small alphabets so that generated patterns and views often overlap.
short_views = st.lists(st.sampled_from(["a", "b", "ab"]), min_size=1, max_size=3).map(":".join)
patterns = st.one_of(
    short_views,
    short_views.map(lambda v: v + "*"),
    st.sampled_from(["*", "a:*", "a*", "ab:a*"]),
)
SIGNERS = [SigningKey(bytes([n]) * 32).agent_id for n in range(20, 26)]


@settings(deadline=None)
@given(patterns, short_views)
def test_trailing_star_means_prefix_and_no_star_means_exact(pattern, view):
    matches = check_access([AccessRule("*", pattern)], REQUESTOR.agent_id, view)
    if pattern.endswith("*"):
        assert matches == view.startswith(pattern[:-1])
    else:
        assert matches == (view == pattern)


@settings(deadline=None)
@given(
    st.lists(st.tuples(patterns, st.sampled_from(SIGNERS)), max_size=8),
    short_views,
)
def test_most_specific_policy_wins(entries, view):
    policies = [VerificationPolicy(pattern, (signer,)) for pattern, signer in entries]
    result = required_signers(policies, view)
    exact = [p for p in policies if p.view == view]
    prefixed = [p for p in policies if p.view.endswith("*") and view.startswith(p.view[:-1])]
    if exact:
        winners = exact
    elif prefixed:
        longest = max(len(p.view) for p in prefixed)
        winners = [p for p in prefixed if len(p.view) == longest]
    else:
        winners = []
    assert result == list(dict.fromkeys(p.signers[0] for p in winners))
