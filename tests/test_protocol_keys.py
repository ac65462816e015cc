"""protocol/keys.py: agent keys and ids, their X25519 form, signatures, CHIP addresses."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.codec import canonical, unpack
from protocol.keys import (
    AGENT_ID_LENGTH,
    ChipAddress,
    IdentityError,
    SigningKey,
    agent_id_to_public,
    b64u,
    ed25519_public_to_x25519,
    ed25519_seed_to_x25519,
    format_hostport,
    is_agent_id,
    parse_hostport,
    unb64u,
    valid_cuid,
    verify,
    verify_by_agent,
)

_P = 2**255 - 19
_B64U = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

seeds = st.binary(min_size=32, max_size=32)


def x25519_public_of(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


# -- Ed25519 -> X25519 ---------------------------------------------------------------------


@settings(deadline=None, max_examples=50)
@given(seeds)
def test_converted_keys_agree_with_cryptography(seed: bytes) -> None:
    key = SigningKey(seed)
    assert x25519_public_of(key.x25519_private()) == key.x25519_public()
    assert key.x25519_public() == ed25519_public_to_x25519(key.public)
    assert key.x25519_private() == ed25519_seed_to_x25519(seed)


@settings(deadline=None, max_examples=30)
@given(seeds, seeds)
def test_dh_between_converted_keys_agrees_both_ways(seed_a: bytes, seed_b: bytes) -> None:
    a, b = SigningKey(seed_a), SigningKey(seed_b)
    ab = X25519PrivateKey.from_private_bytes(a.x25519_private()).exchange(
        X25519PublicKey.from_public_bytes(b.x25519_public())
    )
    ba = X25519PrivateKey.from_private_bytes(b.x25519_private()).exchange(
        X25519PublicKey.from_public_bytes(a.x25519_public())
    )
    assert ab == ba
    assert len(ab) == 32


def test_x25519_private_is_clamped() -> None:
    for _ in range(20):
        scalar = SigningKey.generate().x25519_private()
        assert scalar[0] & 7 == 0
        assert scalar[31] & 0x80 == 0
        assert scalar[31] & 0x40 == 0x40


def test_sign_bit_of_ed25519_key_does_not_change_u() -> None:
    public = SigningKey.generate().public
    flipped = public[:31] + bytes([public[31] ^ 0x80])
    assert ed25519_public_to_x25519(flipped) == ed25519_public_to_x25519(public)


@pytest.mark.parametrize("y", [1, 1 | (1 << 255)])
def test_identity_point_is_rejected(y: int) -> None:
    with pytest.raises(IdentityError, match="identity"):
        ed25519_public_to_x25519(y.to_bytes(32, "little"))


@pytest.mark.parametrize("y", [_P, _P + 1, 2**255 - 1])
def test_non_canonical_y_is_rejected(y: int) -> None:
    with pytest.raises(IdentityError, match="canonical"):
        ed25519_public_to_x25519(y.to_bytes(32, "little"))


@pytest.mark.parametrize("raw", [b"", b"\x00" * 31, b"\x00" * 33])
def test_wrong_length_public_key_is_rejected(raw: bytes) -> None:
    with pytest.raises(IdentityError, match="32 bytes"):
        ed25519_public_to_x25519(raw)


# -- agent ids -------------------------------------------------------------------------------


@settings(deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_agent_id_round_trip(raw: bytes) -> None:
    agent_id = b64u(raw)
    assert len(agent_id) == AGENT_ID_LENGTH
    assert agent_id_to_public(agent_id) == raw
    assert is_agent_id(agent_id)


def test_agent_id_of_a_key() -> None:
    key = SigningKey.generate()
    assert key.agent_id == base64.urlsafe_b64encode(key.public).decode().rstrip("=")
    assert agent_id_to_public(key.agent_id) == key.public


def _non_canonical(agent_id: str) -> str:
    # 43 characters carry 258 bits; the last character's two low bits must be zero.
    last = _B64U.index(agent_id[-1])
    return agent_id[:-1] + _B64U[last | 1]


@pytest.mark.parametrize(
    "make",
    [
        lambda a: a[:-1],  # 42 characters
        lambda a: a + "A",  # 44 characters
        lambda a: a[:-1] + "=",  # padding
        lambda a: "+" + a[1:],  # standard alphabet
        lambda a: "/" + a[1:],
        lambda a: "!" + a[1:],
        lambda a: " " + a[1:],
        lambda a: "é" + a[1:],
        lambda a: a[:-1] + "\n",
        _non_canonical,
        lambda a: a.encode(),  # bytes, not text
        lambda a: None,
        lambda a: 42,
    ],
)
def test_bad_agent_ids_are_rejected(make: Any) -> None:
    agent_id = make(SigningKey(bytes(range(32))).agent_id)
    assert not is_agent_id(agent_id)
    with pytest.raises(IdentityError):
        agent_id_to_public(agent_id)


def test_non_canonical_agent_id_decodes_to_the_same_key_but_is_refused() -> None:
    agent_id = SigningKey.generate().agent_id
    other = _non_canonical(agent_id)
    assert other != agent_id
    assert unb64u(other) == unb64u(agent_id)
    with pytest.raises(IdentityError, match="canonical"):
        agent_id_to_public(other)


def test_agent_id_error_message_quotes_the_value() -> None:
    with pytest.raises(IdentityError, match="43 base64url characters: 'short'"):
        agent_id_to_public("short")


# -- signatures -----------------------------------------------------------------------------


def test_sign_and_verify() -> None:
    key = SigningKey.generate()
    message = b"pay 500 milliCHIPs"
    signature = key.sign(message)
    assert len(signature) == 64
    assert verify(key.public, signature, message)
    assert verify_by_agent(key.agent_id, signature, message)
    Ed25519PrivateKey.from_private_bytes(key.seed).public_key().verify(signature, message)


def test_verify_refuses_tampering_wrong_keys_and_bad_shapes() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    message = b"pay 500 milliCHIPs"
    signature = key.sign(message)
    assert not verify(key.public, signature, b"pay 501 milliCHIPs")
    assert not verify(key.public, signature, message + b"\x00")
    assert not verify(other.public, signature, message)
    assert not verify_by_agent(other.agent_id, signature, message)
    assert not verify_by_agent("not an agent id", signature, message)
    for bad in (
        signature[:63],
        signature + b"\x00",
        b"",
        bytes([signature[0] ^ 1]) + signature[1:],
        signature[:63] + bytes([signature[63] ^ 0x40]),
    ):
        assert not verify(key.public, bad, message)
    assert not verify(key.public[:31], signature, message)
    assert not verify(key.public + b"\x00", signature, message)


@settings(deadline=None, max_examples=30)
@given(seeds, st.binary(max_size=200))
def test_signatures_are_those_cryptography_makes_and_checks(seed: bytes, message: bytes) -> None:
    """libsodium signs and checks; keys, and signatures made before it, are OpenSSL's."""
    theirs = Ed25519PrivateKey.from_private_bytes(seed)
    key = SigningKey(seed)
    assert key.sign(message) == theirs.sign(message)
    assert verify(key.public, theirs.sign(message), message)


def test_a_small_order_key_verifies_nothing() -> None:
    """The identity point as a key: with signature R = identity, S = 0, the Ed25519 equation
    holds for any message; libsodium refuses the key (OpenSSL accepts this signature)."""
    identity = (1).to_bytes(32, "little")
    forged = identity + bytes(32)
    assert not verify(identity, forged, b"anything at all")
    assert not verify_by_agent(b64u(identity), forged, b"anything at all")


@settings(deadline=None, max_examples=30)
@given(seeds, st.binary(max_size=200), st.integers(min_value=0, max_value=63 * 8 + 7))
def test_any_flipped_signature_bit_fails(seed: bytes, message: bytes, bit: int) -> None:
    key = SigningKey(seed)
    signature = bytearray(key.sign(message))
    assert verify(key.public, bytes(signature), message)
    signature[bit // 8] ^= 1 << (bit % 8)
    assert not verify(key.public, bytes(signature), message)


# -- key files --------------------------------------------------------------------------------


@settings(deadline=None, max_examples=30)
@given(seeds)
def test_key_dump_load_round_trip(seed: bytes) -> None:
    key = SigningKey(seed)
    text = key.dump()
    assert text.endswith("\n")
    loaded = SigningKey.load(text)
    assert loaded.seed == seed
    assert loaded.public == key.public
    assert loaded.agent_id == key.agent_id
    assert SigningKey.load("  " + text.strip() + "\r\n\n").agent_id == key.agent_id


def test_signing_key_matches_cryptography() -> None:
    seed = bytes(range(32))
    expected = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    assert SigningKey(seed).public == expected


@pytest.mark.parametrize("text", ["", "\n", b64u(b"\x01" * 31), b64u(b"\x01" * 33), "!!!!"])
def test_bad_key_files_are_refused(text: str) -> None:
    with pytest.raises(IdentityError):
        SigningKey.load(text)


@pytest.mark.parametrize("seed", [b"", b"\x00" * 31, b"\x00" * 33])
def test_seed_must_be_32_bytes(seed: bytes) -> None:
    with pytest.raises(IdentityError, match="32 bytes"):
        SigningKey(seed)


def test_generated_keys_differ() -> None:
    assert len({SigningKey.generate().agent_id for _ in range(10)}) == 10


# -- host:port ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost:7000", ("localhost", 7000)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("node-1.example_net:65535", ("node-1.example_net", 65535)),
        ("[::1]:7000", ("::1", 7000)),
        ("[fe80::1:2]:443", ("fe80::1:2", 443)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),  # port 0: bind to any free port
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "localhost",
        "localhost:",
        ":7000",
        "::1:7000",  # IPv6 without brackets
        "[::1]",
        "[]:7000",
        "host:-1",
        "host:123456",
        "host:7000x",
        "host name:7000",
        "user@host:7000",
        "host:7000\n",  # trailing newline
        "host:\u0667\u0660\u0660\u0660",  # Arabic-Indic digits
        "host:\uff17\uff10",  # fullwidth digits
        "h\u00f6st:7000",
    ],
)
def test_parse_hostport_refuses_malformed(text: str) -> None:
    with pytest.raises(IdentityError, match="HOST:PORT"):
        parse_hostport(text)


@pytest.mark.parametrize("port", [65536, 99999])
def test_parse_hostport_refuses_ports_out_of_range(port: int) -> None:
    with pytest.raises(IdentityError, match=f"port {port} is out of range"):
        parse_hostport(f"localhost:{port}")


def test_parse_hostport_of_none_is_an_identity_error() -> None:
    with pytest.raises(IdentityError):
        parse_hostport(None)  # type: ignore[arg-type]


# -- CHIP addresses -------------------------------------------------------------------------

agent_ids = st.binary(min_size=32, max_size=32).map(b64u)
cuids = st.from_regex(r"[A-Za-z0-9_.\-]{1,64}", fullmatch=True)
hostnames = st.from_regex(r"[A-Za-z0-9_.\-]{1,30}", fullmatch=True)
hosts = hostnames | st.ip_addresses(v=6).map(str) | st.ip_addresses(v=4).map(str)
ports = st.integers(min_value=0, max_value=65535)


@st.composite
def addresses(draw: st.DrawFn) -> ChipAddress:
    agent = draw(agent_ids)
    cuid = draw(st.none() | cuids)
    if draw(st.booleans()):
        return ChipAddress(agent=agent, cuid=cuid, host=draw(hosts), port=draw(ports))
    return ChipAddress(agent=agent, cuid=cuid)


@settings(deadline=None, max_examples=200)
@given(addresses())
def test_address_round_trips(address: ChipAddress) -> None:
    text = str(address)
    assert ChipAddress.parse(text) == address
    assert str(ChipAddress.parse(text)) == text
    as_map = address.to_map()
    assert ChipAddress.from_map(as_map) == address
    assert ChipAddress.from_map(unpack(canonical(as_map))) == address


@pytest.mark.parametrize("bad", [
    {"port": True},  # equal to 1 as a key of the memo of checked addresses
    {"port": 1.0},
    {"extra": None},
    {"cuid": ["alice"]},  # unhashable: refused, not a TypeError
    {"host": {"a": 1}},
    {"port": None},
])
def test_an_address_checked_once_is_not_a_pass_for_a_map_that_differs(bad: dict) -> None:
    agent = SigningKey(bytes(32)).agent_id
    good = {"agent": agent, "cuid": "alice", "host": "example.org", "port": 1}
    assert ChipAddress.from_map(good) is ChipAddress.from_map(dict(good))  # from the memo
    with pytest.raises(IdentityError):
        ChipAddress.from_map({**good, **bad})


def test_address_text_forms() -> None:
    agent = SigningKey(bytes(32)).agent_id
    assert str(ChipAddress(agent)) == agent
    assert str(ChipAddress(agent, cuid="alice")) == f"alice:{agent}"
    assert str(ChipAddress(agent, "alice", "::1", 7000)) == f"alice:{agent}@[::1]:7000"
    parsed = ChipAddress.parse(f"bob:{agent}@[::1]:7000")
    assert parsed == ChipAddress(agent=agent, cuid="bob", host="::1", port=7000)
    assert parsed.to_map() == {"agent": agent, "cuid": "bob", "host": "::1", "port": 7000}
    assert ChipAddress.parse(f"{agent}@example.org:1").to_map() == {
        "agent": agent,
        "host": "example.org",
        "port": 1,
    }
    assert ChipAddress(agent).to_map() == {"agent": agent}


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        ("{a}@host", "HOST:PORT"),
        ("{a}@host:65536", "out of range"),
        ("{a}@::1:7000", "HOST:PORT"),
        ("{a}@host:7000\n", "HOST:PORT"),
        ("{a}@", "HOST:PORT"),
        ("alice:{a}@host name:1", "HOST:PORT"),
        ("bad cuid:{a}", "cuid"),
        ("a:b:{a}", "cuid"),
        (":{a}", "cuid"),
        ("x" * 65 + ":{a}", "cuid"),
        ("alice:notanagent", "agent id"),
        ("", "agent id"),
        ("alice:{a}x@host:1", "agent id"),
    ],
)
def test_bad_addresses_raise_identity_errors(suffix: str, message: str) -> None:
    text = suffix.format(a=SigningKey(bytes(32)).agent_id)
    with pytest.raises(IdentityError, match=message):
        ChipAddress.parse(text)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not a map", "must be a map"),
        ({"cuid": "alice"}, "agent"),
        ({"agent": "{a}", "extra": 1}, "unknown address fields \\['extra'\\]"),
        ({"agent": "{a}", "host": "h"}, "both host and port"),
        ({"agent": "{a}", "port": 7000}, "both host and port"),
        ({"agent": "{a}", "host": 7, "port": 7000}, "host"),
        ({"agent": "{a}", "host": "h", "port": "7000"}, "port"),
        ({"agent": "{a}", "host": "h", "port": True}, "port"),
        ({"agent": "{a}", "host": "h", "port": 65536}, "port"),
        ({"agent": "{a}", "host": "h", "port": -1}, "port"),
        ({"agent": "{a}", "host": "", "port": 1}, "host"),
        ({"agent": "{a}", "host": "a b", "port": 1}, "host"),
        ({"agent": "{a}", "host": "h@evil", "port": 1}, "host"),
        ({"agent": "{a}", "host": "h\n", "port": 1}, "host"),
        ({"agent": "{a}", "cuid": 5}, "cuid"),
        ({"agent": "{a}", "cuid": "no spaces"}, "cuid"),
        ({"agent": "{a}", "cuid": ""}, "cuid"),
        ({"agent": b"raw"}, "agent"),
        ({"agent": "short"}, "agent id"),
    ],
)
def test_bad_address_maps_raise_identity_errors(value: Any, message: str) -> None:
    agent = SigningKey(bytes(32)).agent_id
    if isinstance(value, dict):
        value = {k: (v.format(a=agent) if v == "{a}" else v) for k, v in value.items()}
    with pytest.raises(IdentityError, match=message):
        ChipAddress.from_map(value)


def test_address_constructor_validates_agent_and_cuid() -> None:
    with pytest.raises(IdentityError, match="agent id"):
        ChipAddress(agent="nope")
    with pytest.raises(IdentityError, match="cuid"):
        ChipAddress(agent=SigningKey(bytes(32)).agent_id, cuid="a b")


def test_valid_cuid() -> None:
    assert valid_cuid("alice") and valid_cuid("A.b-c_9") and valid_cuid("x" * 64)
    assert not valid_cuid("") and not valid_cuid("x" * 65) and not valid_cuid("a:b")
    assert not valid_cuid(None) and not valid_cuid(b"alice") and not valid_cuid("alice\n")


def test_from_map_tolerates_a_bracketed_ipv6_host() -> None:
    # agentd's ping service builds addresses from "[::1]:7000" strings by rpartition(":").
    agent = SigningKey(bytes(32)).agent_id
    address = ChipAddress.from_map({"agent": agent, "host": "[::1]", "port": 7000})
    assert (address.host, address.port) == ("[::1]", 7000)


def test_low_order_point_minus_one_is_refused() -> None:
    y = _P - 1
    with pytest.raises(IdentityError, match="low-order"):
        ed25519_public_to_x25519(y.to_bytes(32, "little"))


@pytest.mark.parametrize("host, port", [("127.0.0.1", 7000), ("::1", 1), ("node.example", 65535)])
def test_format_hostport_is_the_inverse_of_parse(host: str, port: int) -> None:
    assert parse_hostport(format_hostport(host, port)) == (host, port)
