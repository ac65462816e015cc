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

These modules decide; they never do I/O or read the clock (time and randomness are
parameters). The runtime handles each message inside one SQLite transaction and keeps the
replay cache (requestor, nonce), and it accepts a ``ViewPayload`` only from the agent the
query went to.

Modules
-------
This module holds the request state machine: ``Status`` and ``AckStatus`` (IntEnums),
``TRANSITIONS`` (status -> statuses it may move to), ``APPLIES_FROM`` (status -> statuses it
may be applied over, for ``UPDATE ... WHERE status IN (...)``), ``parse_status``. The rest:

``relay_fields``
    ``RelayError`` and its kinds (``MessageError`` names the bad field, ``AddressError``,
    ``SignatureError``, ``AccessDenied``, ``ProofError``, ``DecryptionError``); the field
    checks the messages share. Every message's ``to_map()`` gives plain msgpack values and
    ``from_map()`` validates.
``relay_address``
    ``ViewAddress.parse(text)`` / ``str(address)`` — ``relay/network/view`` round trip;
    ``parse_view(segment) -> (kind, args)`` — the views the ledger driver serves.
``relay_policy``
    ``AccessRule``, ``VerificationPolicy``; ``check_access(rules, requestor_agent, view)``;
    ``required_signers(policies, view)`` (exact beats ``*``, then the longest prefix wins).
``relay_query``
    ``new_nonce(random16) -> str``; ``sign_request(key, address, nonce) -> bytes``;
    ``verify_request(requestor, address, nonce, signature)`` raises ``SignatureError``;
    ``NetworkQuery``, ``Query``; ``make_query(network_query, *, request_id, nonce, node_key,
    network) -> Query``; ``admit_query(query, *, agent, network, rules) -> ViewAddress``
    (the source's checks).
``relay_messages``
    ``Ack``, ``Meta``, ``View``, ``ViewPayload``, ``RequestState``, ``GetStateMessage``.
``relay_views``
    ``InteropPayload`` (the notarized wrapper), ``Proof`` (one notarization);
    ``make_view(...) -> View`` (wrap, encrypt when confidential, notarize);
    ``verify_view(view, required) -> VerifiedView``; ``open_view(...) -> OpenedView``.
``relay_seal``
    ``seal(...)`` / ``unseal(...)`` — confidential payloads for the requestor only.

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

from collections.abc import Mapping
from enum import IntEnum
from types import MappingProxyType

from protocol.relay_fields import MessageError, is_int


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


def parse_status(value: object, where: str) -> Status:
    if not (is_int(value) and value in _STATUS_CODES):
        raise MessageError(where, f"{value!r} is not a request status")
    return Status(value)
