"""Queries: the requestor's signature over ``address + nonce``, the ``NetworkQuery`` a client
asks for and the signed ``Query`` a destination sends, and the source's admission checks."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import ClassVar, Self

from protocol.keys import SigningKey, is_agent_id, verify_by_agent
from protocol.relay_address import ViewAddress, parse_view
from protocol.relay_fields import (
    SIGNATURE_BYTES,
    AccessDenied,
    AddressError,
    Message,
    MessageError,
    SignatureError,
    as_tuple,
    is_network,
    is_nonce,
    is_uuid,
    map_fields,
    require,
)
from protocol.relay_policy import AccessRule, check_access

NONCE_BYTES = 16
MAX_ORG_LENGTH = 64


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
    if not is_nonce(nonce):
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
class NetworkQuery(Message):
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
        require(
            f"{name}.policy",
            isinstance(self.policy, tuple) and all(is_agent_id(p) for p in self.policy),
            "must be a list of agent ids",
        )
        try:
            ViewAddress.parse(self.address)
        except AddressError as exc:
            raise MessageError(f"{name}.address", str(exc)) from exc
        require(f"{name}.requesting_relay", isinstance(self.requesting_relay, str), "must be text")
        require(
            f"{name}.requesting_network",
            self.requesting_network == "" or is_network(self.requesting_network),
            "must be a network id",
        )
        require(
            f"{name}.certificate",
            self.certificate == "" or is_agent_id(self.certificate),
            "must be the requestor's agent id",
        )
        require(
            f"{name}.requestor_signature",
            isinstance(self.requestor_signature, bytes)
            and len(self.requestor_signature) in (0, SIGNATURE_BYTES),
            f"must be {SIGNATURE_BYTES} bytes",
        )
        require(
            f"{name}.nonce",
            self.nonce == "" or is_nonce(self.nonce),
            "must be 32 lowercase hex characters",
        )
        require(
            f"{name}.requesting_org",
            isinstance(self.requesting_org, str) and len(self.requesting_org) <= MAX_ORG_LENGTH,
            f"must be text of at most {MAX_ORG_LENGTH} characters",
        )
        require(f"{name}.confidential", isinstance(self.confidential, bool), "must be a boolean")

    @classmethod
    def from_map(cls, value: object) -> Self:
        names = [f.name for f in fields(cls)]
        optional = [n for n in names if n not in cls._REQUIRED]
        items = map_fields(cls.__name__, value, cls._REQUIRED, optional)
        if "policy" in items:
            items["policy"] = as_tuple(items["policy"])
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
        require("Query.request_id", is_uuid(self.request_id), "must be a lowercase UUID")
        require(
            "Query.requesting_relay",
            is_agent_id(self.requesting_relay),
            "must be the destination relay's agent id",
        )
        require("Query.requesting_network", self.requesting_network != "", "missing")
        require("Query.certificate", self.certificate != "", "missing")
        require("Query.requestor_signature", self.requestor_signature != b"", "missing")
        require("Query.nonce", self.nonce != "", "missing")


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
        raise AccessDenied(f"no access rule lets {query.certificate} read {address.view!r}: "
                           "a [[relay.access]] rule in the source's config would grant it")
    return address
