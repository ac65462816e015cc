"""Relay: Hyperledger Weaver data sharing between agentd ledgers, sans-IO (DESIGN.md §5).

A client asks its own node (the *destination relay*) for a view at ``relay/network/view``.
The destination makes a ``request_id``, stores ``PENDING_ACK``, signs ``address + nonce`` as
the *requestor* and sends a :class:`Query` to the *source relay*. The source checks the
signature, refuses a nonce it has seen and applies its access rules, then acks (OK moves the
request to ``PENDING``, ERROR ends it); its driver reads the ledger and the source answers
with a :class:`ViewPayload` carrying a notarized :class:`View` (or an error). The
destination verifies the notarization against its verification policy and stores
``COMPLETED`` or ``ERROR``; clients read it as often as they like, and only an explicit
cleanup or a TTL sweep moves it to ``DELETED``.

This module decides; it never does I/O or reads the clock (time and randomness are
parameters). The runtime handles each message inside one SQLite transaction and keeps the
replay cache (requestor, nonce), and it accepts a ``ViewPayload`` only from the agent the
query went to.

Public API
----------
Messages (Weaver field names; ``to_map()`` gives plain msgpack values and ``from_map()``
validates, raising :class:`MessageError` that names the bad field):
    ``NetworkQuery``, ``Query``, ``Ack``, ``Meta``, ``View``, ``ViewPayload``,
    ``RequestState``, ``GetStateMessage``, ``InteropPayload`` (the notarized wrapper),
    ``Proof`` (one notarization); ``Status`` and ``AckStatus`` are IntEnums.
Addresses:
    ``ViewAddress.parse(text)`` / ``str(address)`` — ``relay/network/view`` round trip;
    ``parse_view(segment) -> (kind, args)`` — the views the ledger driver serves.
Requestor signature:
    ``new_nonce(random16) -> str``; ``sign_request(key, address, nonce) -> bytes``;
    ``verify_request(requestor, address, nonce, signature)`` raises :class:`SignatureError`;
    ``make_query(network_query, *, request_id, nonce, node_key, network) -> Query``;
    ``admit_query(query, *, agent, network, rules) -> ViewAddress`` (the source's checks).
Access and verification:
    ``AccessRule``, ``VerificationPolicy``; ``check_access(rules, requestor_agent, view)``;
    ``required_signers(policies, view)`` (exact beats ``*``, then the longest prefix wins).
Views:
    ``make_view(...) -> View`` (wrap, encrypt when confidential, notarize);
    ``verify_view(view, required) -> VerifiedView``; ``open_view(...) -> OpenedView``;
    ``seal(...)`` / ``unseal(...)`` — confidential payloads for the requestor only.
Request state machine:
    ``TRANSITIONS`` (status -> statuses it may move to), ``APPLIES_FROM`` (status -> statuses
    it may be applied over, for ``UPDATE ... WHERE status IN (...)``), ``next_status``.

Wire choices (where Weaver's protobuf strings become agentd values)
--------------------------------------------------------------------
* ``certificate`` holds the requestor's agent id: an agent id is a self-certifying key.
  ``requesting_relay`` is the destination relay's agent id, ``policy`` a list of agent ids.
* ``requestor_signature`` is the raw 64-byte Ed25519 signature over the UTF-8 bytes of
  ``address + nonce``. The nonce is exactly 32 lowercase hex characters (16 random bytes),
  so the concatenation splits one way only.
* ``View.meta`` is ``{protocol: "agentd", timestamp: <int ms>, proof_type: "Notarization",
  serialization_format: "MSGPACK"}``; ``View.data`` is canonical msgpack of
  ``{interop_payload: InteropPayload, proofs: [{signer, signature}]}``, each signature being
  Ed25519 over ``digest(interop_payload)`` (SHA-256 of its canonical encoding).
* A confidential ``InteropPayload.payload`` is canonical msgpack of ``{scheme,
  ephemeral_public, encrypted_payload}``: X25519(ephemeral, requestor) -> HKDF-SHA256
  (salt = ephemeral_public || requestor X25519 key) -> 32-byte key and 12-byte nonce ->
  ChaCha20-Poly1305 with ``canonical({address, nonce, requestor})`` as associated data.
  The key is used once, so the derived nonce never repeats.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from enum import IntEnum
from types import MappingProxyType
from typing import Any, ClassVar, Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol.codec import CodecError, canonical, digest, unpack
from protocol.keys import (
    IdentityError,
    SigningKey,
    agent_id_to_public,
    ed25519_public_to_x25519,
    is_agent_id,
    parse_hostport,
    valid_cuid,
    verify_by_agent,
)

VIEW_PROTOCOL = "agentd"
PROOF_TYPE = "Notarization"
SERIALIZATION_FORMAT = "MSGPACK"
SEAL_SCHEME = "X25519-HKDF-SHA256-ChaCha20Poly1305"
NONCE_BYTES = 16
SIGNATURE_BYTES = 64
MAX_VIEW_LENGTH = 256
MAX_HOSTNAME_LENGTH = 253
MAX_ORG_LENGTH = 64
_SEAL_INFO = b"agentd/relay/seal/1"
_SEAL_KEY_BYTES = 32
_SEAL_NONCE_BYTES = 12


# --- errors -------------------------------------------------------------------------------


class RelayError(ValueError):
    """Why the relay refuses something; the text is fit for an ``Ack`` or ``RequestState``.

    ``code`` is the stable reason a source relay answers with (the class default, or a more
    precise one given at the raise site).
    """

    code = "BAD_REQUEST"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class MessageError(RelayError):
    """A message field that is missing or malformed; ``field`` names it, e.g. ``Query.nonce``."""

    code = "BAD_QUERY"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class AddressError(RelayError):
    """A view address, view segment or view pattern outside the grammar."""

    code = "BAD_ADDRESS"


class SignatureError(RelayError):
    """The requestor's signature over ``address + nonce`` does not verify."""

    code = "BAD_SIGNATURE"


class AccessDenied(RelayError):
    """No access rule lets this requestor read this view."""

    code = "ACCESS_DENIED"


class ProofError(RelayError):
    """A view whose notarization fails its policy, or that answers some other request."""


class DecryptionError(RelayError):
    """A confidential payload that this key cannot open."""


# --- statuses and the request state machine -----------------------------------------------


class Status(IntEnum):
    """``RequestState.STATUS`` numbers from Weaver (the EVENT_* values are not used here)."""

    PENDING_ACK = 0
    PENDING = 1
    ERROR = 2
    COMPLETED = 3
    DELETED = 7


class AckStatus(IntEnum):
    """``Ack.STATUS`` numbers from Weaver."""

    OK = 0
    ERROR = 1


# Monotonic: an Ack may arrive after the view (PENDING_ACK -> COMPLETED directly, and the late
# PENDING is then ignored); COMPLETED and ERROR are final until cleanup; DELETED is the end.
# A request never acked may be deleted by cleanup too, so nothing lingers forever.
TRANSITIONS: Mapping[Status, frozenset[Status]] = MappingProxyType(
    {
        Status.PENDING_ACK: frozenset(
            {Status.PENDING, Status.COMPLETED, Status.ERROR, Status.DELETED}
        ),
        Status.PENDING: frozenset({Status.COMPLETED, Status.ERROR, Status.DELETED}),
        Status.COMPLETED: frozenset({Status.DELETED}),
        Status.ERROR: frozenset({Status.DELETED}),
        Status.DELETED: frozenset(),
    }
)

# The same table read by target, for ``UPDATE requests SET status=? WHERE status IN (...)``.
# PENDING_ACK is never applied over anything: a request is inserted with it.
APPLIES_FROM: Mapping[Status, frozenset[Status]] = MappingProxyType(
    {
        target: frozenset(current for current, targets in TRANSITIONS.items() if target in targets)
        for target in Status
    }
)


_STATUS_CODES = frozenset(int(status) for status in Status)


def _status(value: object, where: str) -> Status:
    if not (_is_int(value) and value in _STATUS_CODES):
        raise MessageError(where, f"{value!r} is not a request status")
    return Status(value)


def next_status(current: Status | int, incoming: Status | int) -> Status | None:
    """The status after ``incoming`` arrives, or None to ignore it (late, duplicate, backward)."""
    now = _status(current, "current status")
    new = _status(incoming, "incoming status")
    return new if new in TRANSITIONS[now] else None


# --- field validation ---------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(where: str, ok: bool, problem: str) -> None:
    if not ok:
        raise MessageError(where, problem)


def _is_uuid(value: object) -> bool:
    """Canonical lowercase hyphenated form only, so one request has one spelling."""
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


_NONCE = re.compile(r"[0-9a-f]{32}")


def _is_nonce(value: object) -> bool:
    return isinstance(value, str) and _NONCE.fullmatch(value) is not None


_NETWORK = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


def _is_network(value: object) -> bool:
    return isinstance(value, str) and _NETWORK.fullmatch(value) is not None


def _map_fields(
    where: str, value: object, required: Sequence[str], optional: Sequence[str] = ()
) -> dict[str, Any]:
    """The map's fields, refusing a non-map, unknown fields and missing required ones."""
    if not isinstance(value, Mapping):
        raise MessageError(where, "must be a map")
    allowed = {*required, *optional}
    unknown = sorted(str(key) for key in value if key not in allowed)
    if unknown:
        raise MessageError(f"{where}.{unknown[0]}", "unknown field")
    for key in required:
        if key not in value:
            raise MessageError(f"{where}.{key}", "missing")
    return dict(value)


def _plain(value: object) -> Any:
    """Tuples become lists, enums ints and nested messages maps: plain msgpack values."""
    if isinstance(value, IntEnum):
        return int(value)
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if hasattr(value, "to_map"):
        return value.to_map()
    return value


def _as_tuple(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


class _Message:
    """``to_map`` for the message dataclasses: every field, in declaration order."""

    def to_map(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


# --- view addresses -----------------------------------------------------------------------

_HOSTNAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_VIEW = re.compile(r"[A-Za-z0-9_.-]+(?::[A-Za-z0-9_.-]+)*")
_PATTERN_PREFIX = re.compile(r"[A-Za-z0-9_.:-]*")


def _check_relay(relay: object) -> None:
    """``host:port`` (IPv6 in brackets, port 1..65535 without leading zeros) or an agent id."""
    if not isinstance(relay, str):
        raise AddressError("the relay part of an address must be text")
    if ":" not in relay:
        if not is_agent_id(relay):
            raise AddressError(f"relay {relay!r} is neither HOST:PORT nor a 43-character agent id")
        return
    try:
        host, port = parse_hostport(relay)
    except IdentityError as exc:
        raise AddressError(f"relay {relay!r}: {exc}") from exc
    if port == 0 or relay.rpartition(":")[2] != str(port):
        raise AddressError(f"relay {relay!r}: the port must be 1..65535 without leading zeros")
    if relay.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise AddressError(f"relay {relay!r}: {host!r} is not an IPv6 address") from exc
    elif len(host) > MAX_HOSTNAME_LENGTH or not _HOSTNAME.fullmatch(host):
        raise AddressError(f"relay {relay!r}: {host!r} is not a host name or IPv4 address")


def _check_view(view: object) -> None:
    if not isinstance(view, str) or len(view) > MAX_VIEW_LENGTH or not _VIEW.fullmatch(view):
        raise AddressError(
            f"view {view!r} must be up to {MAX_VIEW_LENGTH} characters of ':'-separated "
            "non-empty parts made of letters, digits, '_', '.', '-'"
        )


@dataclass(frozen=True)
class ViewAddress:
    """``relay/network/view``: which node to ask, which of its networks, and what to read.

    The text is kept as written, because the requestor signs it and the source echoes it
    inside the notarized view: both ends compare the exact string.
    """

    relay: str
    network: str
    view: str

    def __post_init__(self) -> None:
        _check_relay(self.relay)
        if not _is_network(self.network):
            raise AddressError(
                f"network {self.network!r} must start with a letter or '_' and hold up to 64 "
                "letters, digits, '_', '-'"
            )
        _check_view(self.view)

    @classmethod
    def parse(cls, text: object) -> ViewAddress:
        if not isinstance(text, str):
            raise AddressError("a view address must be text")
        parts = text.split("/")
        if len(parts) != 3:
            raise AddressError(f"a view address is RELAY/NETWORK/VIEW, got {text!r}")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.relay}/{self.network}/{self.view}"

    @property
    def agent(self) -> str | None:
        """The source's agent id when the relay part names one."""
        return None if ":" in self.relay else self.relay

    @property
    def endpoint(self) -> tuple[str, int] | None:
        """``(host, port)`` when the relay part is an endpoint (IPv6 without brackets)."""
        return parse_hostport(self.relay) if ":" in self.relay else None


def parse_view(segment: str) -> tuple[str, tuple[str, ...]]:
    """Split a view segment into the kind the driver serves and its arguments.

    ``tally:<uuid>`` -> ``("tally", (uuid,))``, ``tally:<uuid>:chits`` -> ``("tally.chits",
    (uuid,))``, ``user:<cuid>:balance`` -> ``("user.balance", (cuid,))``, ``lift:<uuid>`` ->
    ``("lift", (uuid,))``, and agentd's own ``node:info`` -> ``("node.info", ())``.
    """
    _check_view(segment)
    if segment == "node:info":
        return "node.info", ()
    match segment.split(":"):
        case ["tally", tally]:
            kind, arg, ok = "tally", tally, _is_uuid(tally)
        case ["tally", tally, "chits"]:
            kind, arg, ok = "tally.chits", tally, _is_uuid(tally)
        case ["user", cuid, "balance"]:
            kind, arg, ok = "user.balance", cuid, valid_cuid(cuid)
        case ["lift", lift]:
            kind, arg, ok = "lift", lift, _is_uuid(lift)
        case _:
            raise AddressError(
                f"unknown view {segment!r}: expected tally:<uuid>, tally:<uuid>:chits, "
                "user:<cuid>:balance, lift:<uuid> or node:info"
            )
    if not ok:
        expected = "a user id (cuid)" if kind == "user.balance" else "a lowercase UUID"
        raise AddressError(f"view {segment!r}: {arg!r} is not {expected}")
    return kind, (arg,)


# --- access rules and verification policies -----------------------------------------------


def _check_pattern(pattern: object) -> str | None:
    """The problem with a view pattern (a view, or a prefix followed by one ``*``), or None."""
    if not isinstance(pattern, str):
        return "must be text"
    if pattern.endswith("*"):
        prefix = pattern[:-1]
        if len(prefix) > MAX_VIEW_LENGTH or not _PATTERN_PREFIX.fullmatch(prefix):
            return f"{pattern!r}: '*' may appear only once, at the end, after view characters"
        return None
    try:
        _check_view(pattern)
    except AddressError as exc:
        return str(exc)
    return None


def _match_rank(pattern: str, view: str) -> tuple[int, int] | None:
    """How specifically ``pattern`` matches ``view``: an exact match beats any ``*``, then the
    longest prefix wins; None when it does not match."""
    if pattern.endswith("*"):
        prefix = pattern[:-1]
        return (0, len(prefix)) if view.startswith(prefix) else None
    return (1, len(pattern)) if view == pattern else None


@dataclass(frozen=True)
class AccessRule(_Message):
    """Lets ``principal`` (an agent id, or ``*`` for anyone) read views matching ``resource``."""

    principal: str
    resource: str

    def __post_init__(self) -> None:
        _require(
            "AccessRule.principal",
            self.principal == "*" or is_agent_id(self.principal),
            "must be an agent id or '*'",
        )
        problem = _check_pattern(self.resource)
        _require("AccessRule.resource", problem is None, problem or "")

    @classmethod
    def from_map(cls, value: object) -> AccessRule:
        return cls(**_map_fields("AccessRule", value, ("principal", "resource")))


@dataclass(frozen=True)
class VerificationPolicy(_Message):
    """Views matching ``view`` are accepted only when every agent in ``signers`` notarized them."""

    view: str
    signers: tuple[str, ...]

    def __post_init__(self) -> None:
        problem = _check_pattern(self.view)
        _require("VerificationPolicy.view", problem is None, problem or "")
        _require(
            "VerificationPolicy.signers",
            isinstance(self.signers, tuple)
            and bool(self.signers)
            and all(is_agent_id(signer) for signer in self.signers),
            "must be a non-empty list of agent ids (a view is never accepted unverified)",
        )

    @classmethod
    def from_map(cls, value: object) -> VerificationPolicy:
        items = _map_fields("VerificationPolicy", value, ("view", "signers"))
        return cls(view=items["view"], signers=_as_tuple(items["signers"]))  # type: ignore[arg-type]


def check_access(rules: Iterable[AccessRule], requestor_agent: str, view: str) -> bool:
    """True when some rule names this requestor (or ``*``) and a resource matching ``view``.

    Rules only grant, so the first match decides; with no matching rule the answer is no.
    """
    return any(
        rule.principal in ("*", requestor_agent) and _match_rank(rule.resource, view) is not None
        for rule in rules
    )


def required_signers(policies: Iterable[VerificationPolicy], view: str) -> list[str]:
    """The agents that must have notarized ``view``, from the most specific matching policy.

    An exact pattern beats any ``*`` pattern, then the longest prefix wins; policies repeating
    the winning pattern are merged (the stricter reading of a duplicated config entry). An
    empty list means no policy matches: the caller then requires the queried source agent.
    """
    best: tuple[int, int] | None = None
    signers: list[str] = []
    for policy in policies:
        rank = _match_rank(policy.view, view)
        if rank is None or (best is not None and rank < best):
            continue
        if rank != best:
            best, signers = rank, []
        signers.extend(signer for signer in policy.signers if signer not in signers)
    return signers


# --- requestor signature and queries ------------------------------------------------------


def new_nonce(random16: bytes) -> str:
    """A request nonce from 16 caller-supplied random bytes: 32 lowercase hex characters."""
    if not isinstance(random16, bytes) or len(random16) != NONCE_BYTES:
        raise ValueError(f"a nonce is made from {NONCE_BYTES} random bytes")
    return random16.hex()


def _request_message(address: str, nonce: str) -> bytes:
    return (address + nonce).encode("utf-8")


def sign_request(key: SigningKey, address: str, nonce: str) -> bytes:
    """The requestor's Ed25519 signature over the UTF-8 bytes of ``address + nonce``."""
    ViewAddress.parse(address)
    if not _is_nonce(nonce):
        raise MessageError("nonce", "must be 32 lowercase hex characters")
    return key.sign(_request_message(address, nonce))


def verify_request(requestor: str, address: str, nonce: str, signature: bytes) -> None:
    """Raise :class:`SignatureError` unless ``requestor`` signed ``address + nonce``."""
    if not verify_by_agent(requestor, signature, _request_message(address, nonce)):
        raise SignatureError(
            f"the requestor signature does not verify for agent {requestor} over this "
            "address and nonce"
        )


@dataclass(frozen=True, kw_only=True)
class NetworkQuery(_Message):
    """What a client asks its own node for (Weaver ``NetworkQuery``).

    Only ``address`` is required: the node fills the requestor fields when it makes the
    :class:`Query`, as the node itself is the requestor.
    """

    policy: tuple[str, ...] = ()
    address: str
    requesting_relay: str = ""
    requesting_network: str = ""
    certificate: str = ""
    requestor_signature: bytes = b""
    nonce: str = ""
    requesting_org: str = ""
    confidential: bool = False

    _REQUIRED: ClassVar[tuple[str, ...]] = ("address",)

    def __post_init__(self) -> None:
        name = type(self).__name__
        _require(
            f"{name}.policy",
            isinstance(self.policy, tuple) and all(is_agent_id(p) for p in self.policy),
            "must be a list of agent ids",
        )
        try:
            ViewAddress.parse(self.address)
        except AddressError as exc:
            raise MessageError(f"{name}.address", str(exc)) from exc
        _require(f"{name}.requesting_relay", isinstance(self.requesting_relay, str), "must be text")
        _require(
            f"{name}.requesting_network",
            self.requesting_network == "" or _is_network(self.requesting_network),
            "must be a network id",
        )
        _require(
            f"{name}.certificate",
            self.certificate == "" or is_agent_id(self.certificate),
            "must be the requestor's agent id",
        )
        _require(
            f"{name}.requestor_signature",
            isinstance(self.requestor_signature, bytes)
            and len(self.requestor_signature) in (0, SIGNATURE_BYTES),
            f"must be {SIGNATURE_BYTES} bytes",
        )
        _require(
            f"{name}.nonce",
            self.nonce == "" or _is_nonce(self.nonce),
            "must be 32 lowercase hex characters",
        )
        _require(
            f"{name}.requesting_org",
            isinstance(self.requesting_org, str) and len(self.requesting_org) <= MAX_ORG_LENGTH,
            f"must be text of at most {MAX_ORG_LENGTH} characters",
        )
        _require(f"{name}.confidential", isinstance(self.confidential, bool), "must be a boolean")

    @classmethod
    def from_map(cls, value: object) -> Self:
        names = [f.name for f in fields(cls)]
        optional = [n for n in names if n not in cls._REQUIRED]
        items = _map_fields(cls.__name__, value, cls._REQUIRED, optional)
        if "policy" in items:
            items["policy"] = _as_tuple(items["policy"])
        return cls(**items)


@dataclass(frozen=True, kw_only=True)
class Query(NetworkQuery):
    """What the destination relay sends the source (Weaver ``Query``): a NetworkQuery with a
    ``request_id`` and mandatory requestor fields."""

    request_id: str

    _REQUIRED: ClassVar[tuple[str, ...]] = (
        "address",
        "requesting_relay",
        "requesting_network",
        "certificate",
        "requestor_signature",
        "nonce",
        "request_id",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _require("Query.request_id", _is_uuid(self.request_id), "must be a lowercase UUID")
        _require(
            "Query.requesting_relay",
            is_agent_id(self.requesting_relay),
            "must be the destination relay's agent id",
        )
        _require("Query.requesting_network", self.requesting_network != "", "missing")
        _require("Query.certificate", self.certificate != "", "missing")
        _require("Query.requestor_signature", self.requestor_signature != b"", "missing")
        _require("Query.nonce", self.nonce != "", "missing")


def make_query(
    network_query: NetworkQuery, *, request_id: str, nonce: str, node_key: SigningKey, network: str
) -> Query:
    """The signed Query a node sends for its client: the node is both requestor and relay."""
    return Query(
        policy=network_query.policy,
        address=network_query.address,
        requesting_relay=node_key.agent_id,
        requesting_network=network,
        certificate=node_key.agent_id,
        requestor_signature=sign_request(node_key, network_query.address, nonce),
        nonce=nonce,
        requesting_org=network_query.requesting_org,
        confidential=network_query.confidential,
        request_id=request_id,
    )


def admit_query(
    query: Query, *, agent: str, network: str, rules: Iterable[AccessRule]
) -> ViewAddress:
    """The source relay's checks, in order: signature, addressed to us, a view we serve, access.

    An address naming its relay by agent id must name this node; a ``host:port`` is not
    checked, as a node may be reached under many names. Returns the parsed address for the
    driver. The replay check (has this requestor used this
    nonce before?) needs the database, so the runtime does it in the same transaction.
    """
    verify_request(query.certificate, query.address, query.nonce, query.requestor_signature)
    address = ViewAddress.parse(query.address)
    if address.network != network:
        raise AddressError(f"this node serves network {network!r}, not {address.network!r}",
                           "UNKNOWN_NETWORK")
    if address.agent is not None and address.agent != agent:
        raise AddressError(f"the address names relay {address.agent}, not this node",
                           "WRONG_RELAY")
    try:
        parse_view(address.view)
    except AddressError as exc:
        raise AddressError(str(exc), "UNKNOWN_VIEW") from exc
    if not check_access(rules, query.certificate, address.view):
        raise AccessDenied(f"no access rule lets {query.certificate} read {address.view!r}")
    return address


# --- acks, views and request state --------------------------------------------------------


@dataclass(frozen=True)
class Ack(_Message):
    """Every hop's immediate answer (Weaver ``Ack``); ``message`` explains an ERROR."""

    status: AckStatus
    request_id: str
    message: str = ""

    def __post_init__(self) -> None:
        _require(
            "Ack.status",
            _is_int(self.status) and self.status in (AckStatus.OK, AckStatus.ERROR),
            "must be 0 (OK) or 1 (ERROR)",
        )
        object.__setattr__(self, "status", AckStatus(self.status))
        _require("Ack.request_id", _is_uuid(self.request_id), "must be a lowercase UUID")
        _require("Ack.message", isinstance(self.message, str), "must be text")

    @classmethod
    def from_map(cls, value: object) -> Ack:
        return cls(**_map_fields("Ack", value, ("status", "request_id"), ("message",)))


@dataclass(frozen=True)
class Meta(_Message):
    """Unsigned facts about a view (Weaver ``Meta``); ``timestamp`` is integer ms."""

    protocol: str
    timestamp: int
    proof_type: str
    serialization_format: str

    def __post_init__(self) -> None:
        for name in ("protocol", "proof_type", "serialization_format"):
            _require(f"View.meta.{name}", isinstance(getattr(self, name), str), "must be text")
        _require(
            "View.meta.timestamp",
            _is_int(self.timestamp) and self.timestamp >= 0,
            "must be integer ms since the epoch",
        )

    @classmethod
    def from_map(cls, value: object) -> Meta:
        names = ("protocol", "timestamp", "proof_type", "serialization_format")
        return cls(**_map_fields("View.meta", value, names))


@dataclass(frozen=True)
class View(_Message):
    """A notarized answer (Weaver ``View``): ``data`` is what :func:`verify_view` checks."""

    meta: Meta
    data: bytes

    def __post_init__(self) -> None:
        _require("View.meta", isinstance(self.meta, Meta), "must be a Meta")
        _require("View.data", isinstance(self.data, bytes), "must be bytes")

    @classmethod
    def from_map(cls, value: object) -> View:
        items = _map_fields("View", value, ("meta", "data"))
        return cls(meta=Meta.from_map(items["meta"]), data=items["data"])


def _check_outcome(name: str, view: object, error: object) -> None:
    _require(f"{name}.view", view is None or isinstance(view, View), "must be a View")
    _require(f"{name}.error", error is None or isinstance(error, str), "must be text")
    _require(name, view is None or error is None, "holds a view or an error, not both")


@dataclass(frozen=True)
class ViewPayload(_Message):
    """The source's answer to a request (Weaver ``ViewPayload``): a view or an error."""

    request_id: str
    view: View | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        _require("ViewPayload.request_id", _is_uuid(self.request_id), "must be a lowercase UUID")
        _check_outcome("ViewPayload", self.view, self.error)
        _require("ViewPayload", (self.view, self.error) != (None, None), "needs a view or an error")

    def to_map(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_map().items() if v is not None}

    @classmethod
    def from_map(cls, value: object) -> ViewPayload:
        items = _map_fields("ViewPayload", value, ("request_id",), ("view", "error"))
        view = items.get("view")
        return cls(
            request_id=items["request_id"],
            view=None if view is None else View.from_map(view),
            error=items.get("error"),
        )


@dataclass(frozen=True)
class RequestState(_Message):
    """What a client reads about its request (Weaver ``RequestState``).

    COMPLETED carries the view and ERROR the error; the pending states carry neither, and
    DELETED keeps whatever the cleanup left (possibly nothing).
    """

    request_id: str
    status: Status
    view: View | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        _require("RequestState.request_id", _is_uuid(self.request_id), "must be a lowercase UUID")
        object.__setattr__(self, "status", _status(self.status, "RequestState.status"))
        _check_outcome("RequestState", self.view, self.error)
        if self.status is Status.COMPLETED:
            _require("RequestState.view", self.view is not None, "COMPLETED needs the view")
        elif self.status is Status.ERROR:
            _require("RequestState.error", self.error is not None, "ERROR needs the error")
        elif self.status is not Status.DELETED:
            _require(
                "RequestState",
                (self.view, self.error) == (None, None),
                f"{self.status.name} holds neither a view nor an error",
            )

    def to_map(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_map().items() if v is not None}

    @classmethod
    def from_map(cls, value: object) -> RequestState:
        items = _map_fields("RequestState", value, ("request_id", "status"), ("view", "error"))
        view = items.get("view")
        return cls(
            request_id=items["request_id"],
            status=items["status"],
            view=None if view is None else View.from_map(view),
            error=items.get("error"),
        )


@dataclass(frozen=True)
class GetStateMessage(_Message):
    """A client's poll for one request (Weaver ``GetStateMessage``)."""

    request_id: str

    def __post_init__(self) -> None:
        _require(
            "GetStateMessage.request_id", _is_uuid(self.request_id), "must be a lowercase UUID"
        )

    @classmethod
    def from_map(cls, value: object) -> GetStateMessage:
        return cls(**_map_fields("GetStateMessage", value, ("request_id",)))


# --- the notarized wrapper ----------------------------------------------------------------


@dataclass(frozen=True)
class InteropPayload(_Message):
    """What the source signs (Weaver ``InteropPayload``): the ledger's answer bound to the
    request it answers — the address, the nonce and the requestor's agent id."""

    payload: bytes
    address: str
    nonce: str
    requestor: str
    confidential: bool

    def __post_init__(self) -> None:
        _require("InteropPayload.payload", isinstance(self.payload, bytes), "must be bytes")
        try:
            ViewAddress.parse(self.address)
        except AddressError as exc:
            raise MessageError("InteropPayload.address", str(exc)) from exc
        _require(
            "InteropPayload.nonce", _is_nonce(self.nonce), "must be 32 lowercase hex characters"
        )
        _require("InteropPayload.requestor", is_agent_id(self.requestor), "must be an agent id")
        _require(
            "InteropPayload.confidential", isinstance(self.confidential, bool), "must be a boolean"
        )

    @classmethod
    def from_map(cls, value: object) -> InteropPayload:
        names = ("payload", "address", "nonce", "requestor", "confidential")
        return cls(**_map_fields("InteropPayload", value, names))


@dataclass(frozen=True)
class Proof(_Message):
    """One notarization: ``signer``'s Ed25519 signature over ``digest(interop_payload)``."""

    signer: str
    signature: bytes

    def __post_init__(self) -> None:
        _require("Proof.signer", is_agent_id(self.signer), "must be an agent id")
        _require(
            "Proof.signature",
            isinstance(self.signature, bytes) and len(self.signature) == SIGNATURE_BYTES,
            f"must be {SIGNATURE_BYTES} bytes",
        )

    @classmethod
    def from_map(cls, value: object) -> Proof:
        return cls(**_map_fields("Proof", value, ("signer", "signature")))


@dataclass(frozen=True)
class VerifiedView:
    """A view whose proofs all verify and cover the required signers (payload still sealed
    when confidential)."""

    interop: InteropPayload
    signers: tuple[str, ...]
    timestamp: int


@dataclass(frozen=True)
class OpenedView:
    """A verified view that answers our request, with the ledger's answer in clear."""

    result: bytes
    signers: tuple[str, ...]
    address: str
    nonce: str
    confidential: bool
    timestamp: int


# --- confidentiality ----------------------------------------------------------------------


def _seal_context(address: str, nonce: str, requestor: str) -> bytes:
    return canonical({"address": address, "nonce": nonce, "requestor": requestor})


def _seal_cipher(
    shared: bytes, ephemeral_public: bytes, recipient_public: bytes
) -> tuple[ChaCha20Poly1305, bytes]:
    """The one-use AEAD key and nonce, bound to both public keys."""
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=_SEAL_KEY_BYTES + _SEAL_NONCE_BYTES,
        salt=ephemeral_public + recipient_public,
        info=_SEAL_INFO,
    ).derive(shared)
    return ChaCha20Poly1305(okm[:_SEAL_KEY_BYTES]), okm[_SEAL_KEY_BYTES:]


def seal(plaintext: bytes, requestor: str, rand: bytes, context: bytes) -> bytes:
    """Encrypt ``plaintext`` so that only the agent ``requestor`` can read it.

    ``rand`` is 32 fresh random bytes (the ephemeral X25519 key); ``context`` is bound as
    associated data, so the ciphertext cannot be moved to another request.
    """
    if not isinstance(rand, bytes) or len(rand) != 32:
        raise ValueError("sealing needs 32 random bytes for the ephemeral key")
    ephemeral = X25519PrivateKey.from_private_bytes(rand)
    ephemeral_public = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    try:
        recipient_public = ed25519_public_to_x25519(agent_id_to_public(requestor))
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_public))
    except ValueError as exc:  # IdentityError too: a malformed or low-order requestor key
        raise RelayError(f"cannot encrypt to requestor {requestor!r}: {exc}") from exc
    cipher, nonce = _seal_cipher(shared, ephemeral_public, recipient_public)
    return canonical(
        {
            "scheme": SEAL_SCHEME,
            "ephemeral_public": ephemeral_public,
            "encrypted_payload": cipher.encrypt(nonce, plaintext, context),
        }
    )


def unseal(sealed: bytes, requestor_key: SigningKey, context: bytes) -> bytes:
    """Decrypt a :func:`seal` envelope with the requestor's key; anyone else gets an error."""
    try:
        envelope = unpack(sealed)
        items = _map_fields(
            "ConfidentialPayload", envelope, ("scheme", "ephemeral_public", "encrypted_payload")
        )
    except (CodecError, MessageError) as exc:
        raise DecryptionError(f"not a confidential payload: {exc}") from exc
    ephemeral_public, ciphertext = items["ephemeral_public"], items["encrypted_payload"]
    if items["scheme"] != SEAL_SCHEME:
        raise DecryptionError(f"unknown confidentiality scheme {items['scheme']!r}")
    if not (isinstance(ephemeral_public, bytes) and len(ephemeral_public) == 32) or not (
        isinstance(ciphertext, bytes)
    ):
        raise DecryptionError("confidential payload: malformed ephemeral key or ciphertext")
    try:
        shared = X25519PrivateKey.from_private_bytes(requestor_key.x25519_private()).exchange(
            X25519PublicKey.from_public_bytes(ephemeral_public)
        )
        cipher, nonce = _seal_cipher(shared, ephemeral_public, requestor_key.x25519_public())
        return cipher.decrypt(nonce, ciphertext, context)
    except (InvalidTag, ValueError) as exc:
        raise DecryptionError(
            f"agent {requestor_key.agent_id} cannot decrypt this payload: it was encrypted for "
            "another agent or altered"
        ) from exc


# --- making, verifying and opening views --------------------------------------------------


def make_view(
    payload_bytes: bytes,
    address: str,
    nonce: str,
    requestor: str,
    confidential: bool,
    source_key: SigningKey,
    timestamp_ms: int,
    rand: bytes | None = None,
) -> View:
    """The source's notarized answer: wrap, encrypt to the requestor when ``confidential``
    (``rand``: 32 fresh random bytes, needed only then), and sign with the source agent key."""
    interop = InteropPayload(
        payload=payload_bytes,
        address=address,
        nonce=nonce,
        requestor=requestor,
        confidential=confidential,
    )
    if confidential:
        if rand is None:
            raise ValueError("a confidential view needs 32 random bytes")
        sealed = seal(payload_bytes, requestor, rand, _seal_context(address, nonce, requestor))
        interop = replace(interop, payload=sealed)
    proof = Proof(signer=source_key.agent_id, signature=source_key.sign(digest(interop.to_map())))
    data = canonical({"interop_payload": interop.to_map(), "proofs": [proof.to_map()]})
    meta = Meta(
        protocol=VIEW_PROTOCOL,
        timestamp=timestamp_ms,
        proof_type=PROOF_TYPE,
        serialization_format=SERIALIZATION_FORMAT,
    )
    return View(meta=meta, data=data)


def verify_view(view: View, required: Sequence[str]) -> VerifiedView:
    """Check every proof in ``view`` and that each agent in ``required`` is among the signers.

    Says who signed and what request (address, nonce, requestor) the view answers. Any proof
    that fails to verify rejects the view: a relay must not be able to pad it with junk.
    """
    if not required:
        raise ProofError("no required signers: a view is never accepted unverified")
    meta = view.meta
    if (meta.protocol, meta.proof_type, meta.serialization_format) != (
        VIEW_PROTOCOL,
        PROOF_TYPE,
        SERIALIZATION_FORMAT,
    ):
        raise ProofError(
            f"unsupported view: protocol {meta.protocol!r}, proof type {meta.proof_type!r}, "
            f"format {meta.serialization_format!r}"
        )
    try:
        items = _map_fields("View.data", unpack(view.data), ("interop_payload", "proofs"))
    except CodecError as exc:
        raise MessageError("View.data", str(exc)) from exc
    interop = InteropPayload.from_map(items["interop_payload"])
    _require(
        "View.data.proofs",
        isinstance(items["proofs"], list) and bool(items["proofs"]),
        "must be a non-empty list",
    )
    proofs = [Proof.from_map(proof) for proof in items["proofs"]]
    signed = digest(interop.to_map())
    for proof in proofs:
        if not verify_by_agent(proof.signer, proof.signature, signed):
            raise ProofError(f"the notarization by {proof.signer} does not verify")
    signers = tuple(dict.fromkeys(proof.signer for proof in proofs))
    missing = [agent for agent in required if agent not in signers]
    if missing:
        raise ProofError(
            f"the view lacks notarizations by required signer(s) {', '.join(missing)}; "
            f"signed by {', '.join(signers)}"
        )
    return VerifiedView(interop=interop, signers=signers, timestamp=meta.timestamp)


def open_view(
    view: View,
    requestor_key: SigningKey,
    policy_signers: Sequence[str],
    expected_address: str,
    expected_nonce: str,
    *,
    require_confidential: bool = False,
) -> OpenedView:
    """Verify ``view`` against the policy, check it answers our request, and decrypt it.

    ``require_confidential`` refuses a cleartext answer to a query that asked for secrecy.
    """
    verified = verify_view(view, policy_signers)
    interop = verified.interop
    if interop.address != expected_address:
        raise ProofError(f"the view answers {interop.address!r}, not {expected_address!r}")
    if interop.nonce != expected_nonce:
        raise ProofError(f"the view answers nonce {interop.nonce}, not {expected_nonce}")
    if interop.requestor != requestor_key.agent_id:
        raise ProofError(
            f"the view answers requestor {interop.requestor}, not {requestor_key.agent_id}"
        )
    if require_confidential and not interop.confidential:
        raise ProofError("the query asked for a confidential view but the answer is in clear")
    result = interop.payload
    if interop.confidential:
        context = _seal_context(interop.address, interop.nonce, interop.requestor)
        result = unseal(result, requestor_key, context)
    return OpenedView(
        result=result,
        signers=verified.signers,
        address=interop.address,
        nonce=interop.nonce,
        confidential=interop.confidential,
        timestamp=verified.timestamp,
    )
