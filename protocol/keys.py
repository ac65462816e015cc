"""Ed25519 identities: agent keys, agent ids, their X25519 (Noise) form, CHIP addresses.

An agent id is the unpadded base64url of the 32-byte Ed25519 public key, so knowing it is
enough to derive the peer's Noise static key (the standard Ed25519 -> X25519 birational map)
and open an authenticated channel to it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

_P = 2**255 - 19
AGENT_ID_LENGTH = 43


class IdentityError(ValueError):
    """A key, agent id or address that is malformed."""


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def b64u(data: bytes) -> str:
    """Unpadded base64url text."""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise IdentityError(f"not base64url: {text!r}") from exc


def agent_id_to_public(agent_id: str) -> bytes:
    """The 32-byte Ed25519 public key behind an agent id (validated)."""
    if not isinstance(agent_id, str) or len(agent_id) != AGENT_ID_LENGTH:
        raise IdentityError(
            f"agent id must be {AGENT_ID_LENGTH} base64url characters: {agent_id!r}"
        )
    return _agent_public(agent_id)


@functools.lru_cache(maxsize=4096)  # every message names agents, and few of them
def _agent_public(agent_id: str) -> bytes:
    raw = unb64u(agent_id)
    if len(raw) != 32 or b64u(raw) != agent_id:
        raise IdentityError(f"agent id is not a canonical 32-byte base64url key: {agent_id!r}")
    return raw


def is_agent_id(value: object) -> bool:
    return agent_id_problem(value) is None


def agent_id_problem(value: object) -> str | None:
    """Why ``value`` is not an agent id (its length, or a key that is not canonical), or
    None when it is one."""
    try:
        agent_id_to_public(value)  # type: ignore[arg-type]
    except IdentityError as exc:
        return str(exc)
    return None


def ed25519_public_to_x25519(ed_public: bytes) -> bytes:
    """Map an Ed25519 public key to its X25519 (Montgomery u) form: u = (1+y)/(1-y) mod p."""
    if len(ed_public) != 32:
        raise IdentityError("an Ed25519 public key is 32 bytes")
    y = int.from_bytes(ed_public, "little") & ((1 << 255) - 1)
    if y >= _P:
        raise IdentityError("Ed25519 public key is not canonical (y >= p)")
    if y == 1:
        raise IdentityError("Ed25519 public key is the identity point")
    if y == _P - 1:
        raise IdentityError("Ed25519 public key is a low-order point")
    u = (1 + y) * pow(1 - y, -1, _P) % _P  # extended Euclid: 20x faster than Fermat
    return u.to_bytes(32, "little")


def ed25519_seed_to_x25519(seed: bytes) -> bytes:
    """The X25519 private scalar of an Ed25519 seed: clamped first half of SHA-512(seed)."""
    h = bytearray(hashlib.sha512(seed).digest()[:32])
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return bytes(h)


def verify(public: bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message`` by ``public``.

    libsodium (PyNaCl) checks, at half the cost of OpenSSL's check through ``cryptography``
    (41 against 83 us here): a lift is checked several times on every node it passes. It
    also refuses small-order keys and non-canonical points, which no honest signer makes."""
    if not isinstance(signature, bytes) or len(signature) != 64 or len(public) != 32:
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + message, public)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
        return False
    return True


def verify_by_agent(agent_id: str, signature: bytes, message: bytes) -> bool:
    try:
        public = agent_id_to_public(agent_id)
    except IdentityError:
        return False
    return verify(public, signature, message)


class SigningKey:
    """An Ed25519 private key (agent or user) with the derived forms we need."""

    __slots__ = ("_key", "_sodium", "agent_id", "public", "seed")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise IdentityError("an Ed25519 seed is 32 bytes")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.seed = seed
        self.public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._sodium = nacl.bindings.crypto_sign_seed_keypair(seed)[1]  # signs as verify checks
        self.agent_id = b64u(self.public)

    @classmethod
    def generate(cls) -> SigningKey:
        key = Ed25519PrivateKey.generate()
        return cls(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))

    @property
    def private_key(self) -> Ed25519PrivateKey:
        return self._key

    def sign(self, message: bytes) -> bytes:
        return nacl.bindings.crypto_sign(message, self._sodium)[:64]

    def x25519_private(self) -> bytes:
        return ed25519_seed_to_x25519(self.seed)

    def x25519_public(self) -> bytes:
        return ed25519_public_to_x25519(self.public)

    def dump(self) -> str:
        """Text form for a key file."""
        return b64u(self.seed) + "\n"

    @classmethod
    def load(cls, text: str) -> SigningKey:
        raw = unb64u(text.strip())
        if len(raw) != 32:
            raise IdentityError("a key file holds one base64url 32-byte Ed25519 seed")
        return cls(raw)


# ASCII digits only, and fullmatch (``$`` would also match before a trailing newline).
_HOSTPORT = re.compile(
    r"(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.\-]+):(?P<port>\d{1,5})", re.ASCII
)
# A host as parse_hostport returns it (IPv6 unbracketed); the bracketed form is tolerated.
_HOST = re.compile(r"[A-Za-z0-9_.\-]+|[0-9a-fA-F:.]+|\[[0-9a-fA-F:.]+\]")


def parse_hostport(text: str) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 in brackets); the port must be 1..65535 (0 only to bind)."""
    match = _HOSTPORT.fullmatch(text or "")
    if not match:
        raise IdentityError(f"expected HOST:PORT, got {text!r}")
    port = int(match["port"])
    if port > 65535:
        raise IdentityError(f"port {port} is out of range in {text!r}")
    return match["host"].strip("[]"), port


def format_hostport(host: str, port: int) -> str:
    """The inverse of :func:`parse_hostport` (brackets an IPv6 host)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class ChipAddress:
    """``cuid:agent@host:port`` — where a CHIP user lives and how to reach its agent."""

    agent: str
    cuid: str | None = None
    host: str | None = None
    port: int | None = None

    def __post_init__(self) -> None:
        agent_id_to_public(self.agent)
        if self.cuid is not None and not valid_cuid(self.cuid):
            raise IdentityError(
                f"bad user id (cuid) {self.cuid!r}: must be {CUID_RULE}"
            )

    def __str__(self) -> str:
        text = f"{self.cuid}:{self.agent}" if self.cuid else self.agent
        if self.host is not None and self.port is not None:
            host = f"[{self.host}]" if ":" in self.host else self.host
            text += f"@{host}:{self.port}"
        return text

    @classmethod
    def parse(cls, text: str) -> ChipAddress:
        rest, at, where = text.partition("@")
        host = port = None
        if at:
            host, port = parse_hostport(where)
        cuid, sep, agent = rest.rpartition(":")
        return cls(agent=agent, cuid=cuid if sep else None, host=host, port=port)

    def to_map(self) -> dict:
        out: dict = {"agent": self.agent}
        if self.cuid is not None:
            out["cuid"] = self.cuid
        if self.host is not None:
            out["host"] = self.host
            out["port"] = self.port
        return out

    @classmethod
    def from_map(cls, value: object) -> ChipAddress:
        """The address a wire map names, checked. Every envelope names two and a lift or a
        route path a few more, mostly the same ones over and over: an address already
        checked (its fields of exactly the plain types) is taken from a bounded memo."""
        if type(value) is dict and len(value) <= 4:
            key = (value.get("agent"), value.get("cuid"), value.get("host"), value.get("port"))
            known = _CHECKED.get(key) if _plain(key) else None
            if known is not None and len(value) == known.fields:
                return known.address
        address = cls._checked(value)
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.clear()
        _CHECKED[(address.agent, address.cuid, address.host, address.port)] = _Checked(
            address, len(address.to_map()))
        return address

    @classmethod
    def _checked(cls, value: object) -> ChipAddress:
        if not isinstance(value, dict):
            raise IdentityError("an address must be a map")
        unknown = set(value) - {"agent", "cuid", "host", "port"}
        if unknown:
            raise IdentityError(f"unknown address fields {sorted(unknown)}")
        host, port = value.get("host"), value.get("port")
        if (host is None) != (port is None):
            raise IdentityError("an address has both host and port, or neither")
        if host is not None and (not isinstance(host, str) or not isinstance(port, int)):
            raise IdentityError("address host must be text and port an integer")
        if host is not None and not _HOST.fullmatch(host):
            raise IdentityError(f"address host {host!r} is not a host name or IP address")
        if port is not None and (isinstance(port, bool) or not 0 <= port <= 65535):
            raise IdentityError(f"address port {port!r} is not an integer from 0 to 65535")
        cuid = value.get("cuid")
        if cuid is not None and not isinstance(cuid, str):
            raise IdentityError("address cuid must be text")
        agent = value.get("agent")
        if not isinstance(agent, str):
            raise IdentityError("address agent must be an agent id")
        return cls(agent=agent, cuid=cuid, host=host, port=port)


@dataclass(frozen=True, slots=True)
class _Checked:
    address: ChipAddress
    fields: int  # how many fields its map has: a map with another key is checked again


_CHECKED: dict[tuple, _Checked] = {}
_CHECKED_MAX = 4096


def _plain(key: tuple) -> bool:
    """Whether (agent, cuid, host, port) are of exactly the types a checked address has:
    a ``True`` port equals 1 as a dict key, and must be refused, not found."""
    agent, cuid, host, port = key
    return (type(agent) is str and (cuid is None or type(cuid) is str)
            and (host is None or type(host) is str) and (port is None or type(port) is int))


_CUID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
# A cuid travels in CHIP addresses, tickets and relay view names other implementations parse:
# ASCII only, and the message says so.
CUID_RULE = "1-64 ASCII letters (a-z, A-Z), digits, '_', '-' or '.'"


def valid_host(host: object) -> bool:
    """A host name or IP address, as an address map carries it (``ChipAddress``)."""
    return isinstance(host, str) and bool(_HOST.fullmatch(host))


def valid_cuid(cuid: object) -> bool:
    return isinstance(cuid, str) and bool(_CUID.fullmatch(cuid))
