"""protocol/noise.py: the sans-IO Noise IK session and the handshake message reader."""

from __future__ import annotations

import itertools
import random
import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from protocol.keys import SigningKey
from protocol.noise import MAX_PLAINTEXT, HandshakeReader, NoiseFailure, NoiseSession, Role

MAX_NOISE_MESSAGE = 65535
TAG = 16

INITIATOR_KEY = SigningKey(bytes(range(32)))
RESPONDER_KEY = SigningKey(bytes(range(32, 64)))


def handshake(
    initiator_key: SigningKey = INITIATOR_KEY,
    responder_key: SigningKey = RESPONDER_KEY,
    hello_i: bytes = b"hello from the initiator",
    hello_r: bytes = b"hello from the responder",
) -> tuple[NoiseSession, NoiseSession]:
    """Run the IK handshake between two fresh sessions; returns (initiator, responder)."""
    initiator = NoiseSession(
        Role.INITIATOR, initiator_key.x25519_private(), responder_key.x25519_public()
    )
    responder = NoiseSession(Role.RESPONDER, responder_key.x25519_private())
    assert not initiator.handshake_finished and not responder.handshake_finished
    assert responder.remote_static is None

    first = initiator.write_handshake(hello_i)
    (length,) = struct.unpack(">H", first[:2])
    assert length == len(first) - 2
    assert responder.read_handshake(first[2:]) == hello_i
    assert responder.remote_static == initiator_key.x25519_public()

    second = responder.write_handshake(hello_r)
    assert struct.unpack(">H", second[:2])[0] == len(second) - 2
    assert initiator.read_handshake(second[2:]) == hello_r

    assert initiator.handshake_finished and responder.handshake_finished
    assert responder.remote_static == initiator_key.x25519_public()
    assert initiator.remote_static == responder_key.x25519_public()
    return initiator, responder


def wire_messages(wire: bytes) -> list[bytes]:
    """Split transport wire bytes into Noise messages by their 2-byte length prefixes."""
    out, offset = [], 0
    while offset < len(wire):
        (length,) = struct.unpack_from(">H", wire, offset)
        out.append(wire[offset + 2 : offset + 2 + length])
        offset += 2 + length
    assert offset == len(wire)
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# -- handshake --------------------------------------------------------------------------------


def test_handshake_authenticates_both_sides() -> None:
    handshake()


def test_handshake_with_empty_payloads_has_ik_sizes() -> None:
    initiator = NoiseSession(
        Role.INITIATOR, INITIATOR_KEY.x25519_private(), RESPONDER_KEY.x25519_public()
    )
    responder = NoiseSession(Role.RESPONDER, RESPONDER_KEY.x25519_private())
    first = initiator.write_handshake()
    assert len(first) == 2 + 96
    assert responder.read_handshake(first[2:]) == b""
    second = responder.write_handshake()
    assert len(second) == 2 + 48
    assert initiator.read_handshake(second[2:]) == b""
    assert initiator.handshake_finished and responder.handshake_finished


def test_handshake_accepts_bytearray_and_memoryview() -> None:
    initiator = NoiseSession(
        Role.INITIATOR, bytearray(INITIATOR_KEY.x25519_private()), RESPONDER_KEY.x25519_public()
    )
    responder = NoiseSession(Role.RESPONDER, RESPONDER_KEY.x25519_private())
    first = initiator.write_handshake(bytearray(b"hi"))
    assert responder.read_handshake(bytearray(first[2:])) == b"hi"
    second = responder.write_handshake(memoryview(b"yo"))
    assert initiator.read_handshake(memoryview(second[2:])) == b"yo"
    assert initiator.handshake_finished


def test_initiator_needs_the_responder_key() -> None:
    with pytest.raises(ValueError, match="static key"):
        NoiseSession(Role.INITIATOR, INITIATOR_KEY.x25519_private())


def test_responder_refuses_a_handshake_for_another_static_key() -> None:
    stranger = SigningKey(bytes(range(64, 96)))
    initiator = NoiseSession(
        Role.INITIATOR, INITIATOR_KEY.x25519_private(), stranger.x25519_public()
    )
    responder = NoiseSession(Role.RESPONDER, RESPONDER_KEY.x25519_private())
    first = initiator.write_handshake(b"hello")
    with pytest.raises(NoiseFailure, match="handshake failed"):
        responder.read_handshake(first[2:])
    assert not responder.handshake_finished
    with pytest.raises(NoiseFailure, match="has failed"):
        responder.write_handshake(b"")
    with pytest.raises(NoiseFailure, match="has failed"):
        responder.read_handshake(first[2:])


def test_prologue_mismatch_fails_the_handshake() -> None:
    initiator = NoiseSession(
        Role.INITIATOR,
        INITIATOR_KEY.x25519_private(),
        RESPONDER_KEY.x25519_public(),
        prologue=b"agentd/2",
    )
    responder = NoiseSession(Role.RESPONDER, RESPONDER_KEY.x25519_private())
    with pytest.raises(NoiseFailure):
        responder.read_handshake(initiator.write_handshake(b"x")[2:])


def test_initiator_refuses_a_tampered_reply() -> None:
    initiator = NoiseSession(
        Role.INITIATOR, INITIATOR_KEY.x25519_private(), RESPONDER_KEY.x25519_public()
    )
    responder = NoiseSession(Role.RESPONDER, RESPONDER_KEY.x25519_private())
    responder.read_handshake(initiator.write_handshake(b"x")[2:])
    second = bytearray(responder.write_handshake(b"y")[2:])
    second[-1] ^= 1
    with pytest.raises(NoiseFailure):
        initiator.read_handshake(bytes(second))
    assert not initiator.handshake_finished


@pytest.mark.parametrize("garbage", [b"", b"\x00", b"\x00" * 95, b"\xff" * 96, b"\x01" * 200])
def test_responder_refuses_garbage_handshakes(garbage: bytes) -> None:
    responder = NoiseSession(Role.RESPONDER, RESPONDER_KEY.x25519_private())
    with pytest.raises(NoiseFailure):
        responder.read_handshake(garbage)


def test_out_of_turn_handshake_calls_fail() -> None:
    initiator = NoiseSession(
        Role.INITIATOR, INITIATOR_KEY.x25519_private(), RESPONDER_KEY.x25519_public()
    )
    with pytest.raises(NoiseFailure):
        initiator.read_handshake(b"\x00" * 48)  # the initiator must write first
    responder = NoiseSession(Role.RESPONDER, RESPONDER_KEY.x25519_private())
    with pytest.raises(NoiseFailure):
        responder.write_handshake(b"")  # the responder must read first


def test_transport_calls_during_the_handshake_raise() -> None:
    initiator = NoiseSession(
        Role.INITIATOR, INITIATOR_KEY.x25519_private(), RESPONDER_KEY.x25519_public()
    )
    responder = NoiseSession(Role.RESPONDER, RESPONDER_KEY.x25519_private())
    for session in (initiator, responder):
        with pytest.raises(NoiseFailure, match="during handshake"):
            session.encrypt(b"early")
        with pytest.raises(NoiseFailure, match="during handshake"):
            session.decrypt(b"\x00\x10" + b"\x00" * 16)
    first = initiator.write_handshake(b"")
    with pytest.raises(NoiseFailure, match="during handshake"):
        initiator.encrypt(b"after one message")
    responder.read_handshake(first[2:])
    with pytest.raises(NoiseFailure, match="during handshake"):
        responder.encrypt(b"after one message")  # it still owes the second message
    # The refused transport calls did not break the handshake.
    initiator.read_handshake(responder.write_handshake(b"")[2:])
    assert responder.decrypt(initiator.encrypt(b"ok")) == b"ok"


def test_handshake_calls_after_the_handshake_raise() -> None:
    initiator, responder = handshake()
    with pytest.raises(NoiseFailure, match="during transport"):
        initiator.write_handshake(b"")
    with pytest.raises(NoiseFailure, match="during transport"):
        responder.read_handshake(b"\x00" * 48)


# -- transport --------------------------------------------------------------------------------


def test_small_messages_both_ways() -> None:
    initiator, responder = handshake()
    assert responder.decrypt(initiator.encrypt(b"ping")) == b"ping"
    assert initiator.decrypt(responder.encrypt(b"pong")) == b"pong"
    assert initiator.encrypt(b"") == b""
    assert responder.decrypt(b"") == b""


def test_chunk_boundaries() -> None:
    initiator, responder = handshake()
    for size, chunks in [
        (MAX_PLAINTEXT - 1, 1),
        (MAX_PLAINTEXT, 1),
        (MAX_PLAINTEXT + 1, 2),
        (MAX_NOISE_MESSAGE, 2),  # the size noiseprotocol would wrongly accept as one message
        (3 * MAX_PLAINTEXT, 3),
    ]:
        data = payload(size, size)
        wire = initiator.encrypt(data)
        messages = wire_messages(wire)
        assert len(messages) == chunks
        assert max(len(m) for m in messages) <= MAX_NOISE_MESSAGE
        assert responder.decrypt(wire) == data


@settings(deadline=None, max_examples=40)
@given(
    sizes=st.lists(
        st.one_of(
            st.integers(min_value=0, max_value=300),
            st.sampled_from([MAX_PLAINTEXT - 1, MAX_PLAINTEXT, MAX_PLAINTEXT + 1, 65535]),
            st.integers(min_value=0, max_value=1 << 20),
        ),
        min_size=1,
        max_size=3,
    ),
    seed=st.integers(min_value=0, max_value=2**32),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
    backwards=st.booleans(),
)
@example(sizes=[1 << 20], seed=1, cuts=[1, 2, 3, 65537, 65538, 500_000], backwards=False)
@example(sizes=[3 * MAX_PLAINTEXT + 5, 0, (1 << 20) - 1], seed=2, cuts=[], backwards=True)
@example(sizes=[MAX_PLAINTEXT, 65535], seed=3, cuts=list(range(0, 140_000, 997)), backwards=False)
def test_transport_round_trip_in_arbitrary_splits(
    sizes: list[int], seed: int, cuts: list[int], backwards: bool
) -> None:
    initiator, responder = handshake()
    sender, receiver = (responder, initiator) if backwards else (initiator, responder)
    messages = [payload(size, seed + i) for i, size in enumerate(sizes)]
    wire = b"".join(sender.encrypt(message) for message in messages)

    noise_messages = wire_messages(wire)
    assert all(TAG <= len(m) <= MAX_NOISE_MESSAGE for m in noise_messages)
    assert all(len(m) - TAG <= MAX_PLAINTEXT for m in noise_messages)
    assert sum(len(m) - TAG for m in noise_messages) == sum(sizes)

    received = b"".join(receiver.decrypt(piece) for piece in split(wire, cuts))
    assert received == b"".join(messages)
    # The stream keeps working afterwards, in the other direction too.
    assert receiver.decrypt(sender.encrypt(b"after")) == b"after"
    assert sender.decrypt(receiver.encrypt(b"reply")) == b"reply"


def test_decrypt_accepts_bytearray_and_memoryview() -> None:
    initiator, responder = handshake()
    wire = initiator.encrypt(bytearray(b"one")) + initiator.encrypt(memoryview(b"two"))
    first = wire_messages(wire)[0]
    assert responder.decrypt(bytearray(wire[: 2 + len(first)])) == b"one"
    assert responder.decrypt(memoryview(wire[2 + len(first) :])) == b"two"


def test_partial_message_is_buffered() -> None:
    initiator, responder = handshake()
    wire = initiator.encrypt(b"x" * 1000)
    for byte in wire[:-1]:
        assert responder.decrypt(bytes([byte])) == b""
    assert responder.decrypt(wire[-1:]) == b"x" * 1000


def _assert_dead(session: NoiseSession, peer: NoiseSession) -> None:
    with pytest.raises(NoiseFailure, match="has failed"):
        session.decrypt(peer.encrypt(b"genuine"))
    with pytest.raises(NoiseFailure, match="has failed"):
        session.decrypt(b"")
    with pytest.raises(NoiseFailure, match="has failed"):
        session.encrypt(b"anything")


@settings(deadline=None, max_examples=60)
@given(
    size=st.integers(min_value=1, max_value=2000),
    position=st.integers(min_value=0),
    bit=st.integers(min_value=0, max_value=7),
)
def test_tampered_ciphertext_is_fatal(size: int, position: int, bit: int) -> None:
    initiator, responder = handshake()
    assert responder.decrypt(initiator.encrypt(b"before")) == b"before"
    wire = bytearray(initiator.encrypt(payload(size, size)))
    wire[2 + position % (len(wire) - 2)] ^= 1 << bit  # any body byte; the length is intact
    with pytest.raises(NoiseFailure, match="decryption failed"):
        responder.decrypt(bytes(wire))
    _assert_dead(responder, initiator)


def test_replayed_message_is_fatal() -> None:
    initiator, responder = handshake()
    wire = initiator.encrypt(b"pay once")
    assert responder.decrypt(wire) == b"pay once"
    with pytest.raises(NoiseFailure):
        responder.decrypt(wire)
    _assert_dead(responder, initiator)


def test_message_shorter_than_its_tag_is_fatal() -> None:
    initiator, responder = handshake()
    with pytest.raises(NoiseFailure, match="shorter than its tag"):
        responder.decrypt(b"\x00\x0f" + b"\x00" * 15)
    _assert_dead(responder, initiator)


def test_message_from_another_session_is_refused() -> None:
    initiator, _ = handshake()
    _, other_responder = handshake()
    with pytest.raises(NoiseFailure):
        other_responder.decrypt(initiator.encrypt(b"wrong channel"))


# -- HandshakeReader --------------------------------------------------------------------------


@settings(deadline=None, max_examples=100)
@given(
    message=st.binary(max_size=300),
    rest=st.binary(max_size=50),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_handshake_reader_in_arbitrary_splits(message: bytes, rest: bytes, cuts: list[int]) -> None:
    framed = struct.pack(">H", len(message)) + message
    reader = HandshakeReader()
    pieces = split(framed + rest, cuts)
    consumed = 0
    for piece in pieces:
        consumed += len(piece)
        got, left = reader.feed(piece)
        if consumed < len(framed):
            assert (got, left) == (None, b"")
            if consumed >= 2:
                assert reader.declared_length == len(message)
            continue
        assert got == message
        assert left + b"".join(pieces)[consumed:] == rest
        break
    else:
        raise AssertionError("the message never completed")


def test_handshake_reader_with_a_real_handshake() -> None:
    initiator = NoiseSession(
        Role.INITIATOR, INITIATOR_KEY.x25519_private(), RESPONDER_KEY.x25519_public()
    )
    responder = NoiseSession(Role.RESPONDER, RESPONDER_KEY.x25519_private())
    first = initiator.write_handshake(b"hello")
    reader = HandshakeReader()
    assert reader.declared_length == 0
    assert reader.feed(first[:1]) == (None, b"")
    assert reader.declared_length == 0
    message, rest = reader.feed(first[1:] + b"early")
    assert message is not None
    assert rest == b"early"
    assert responder.read_handshake(message) == b"hello"
