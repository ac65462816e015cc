"""Notarized views: the source wraps its ledger's answer with the request it answers, seals
it when confidential and signs it; the destination verifies the proofs against its policy
and opens it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from protocol.codec import CodecError, canonical, digest, unpack
from protocol.envelope import MAX_NESTING
from protocol.keys import SigningKey, is_agent_id, verify_by_agent
from protocol.relay_address import ViewAddress
from protocol.relay_fields import (
    SIGNATURE_BYTES,
    AddressError,
    Message,
    MessageError,
    ProofError,
    is_nonce,
    map_fields,
    require,
)
from protocol.relay_messages import Meta, View
from protocol.relay_seal import seal, seal_context, unseal

VIEW_PROTOCOL = "agentd"
PROOF_TYPE = "Notarization"
SERIALIZATION_FORMAT = "MSGPACK"


@dataclass(frozen=True)
class InteropPayload(Message):
    """What the source signs (Weaver ``InteropPayload``): the ledger's answer bound to the
    request it answers — the address, the nonce and the requestor's agent id."""

    payload: bytes
    address: str
    nonce: str
    requestor: str
    confidential: bool

    def __post_init__(self) -> None:
        require("InteropPayload.payload", isinstance(self.payload, bytes), "must be bytes")
        try:
            ViewAddress.parse(self.address)
        except AddressError as exc:
            raise MessageError("InteropPayload.address", str(exc)) from exc
        require(
            "InteropPayload.nonce", is_nonce(self.nonce), "must be 32 lowercase hex characters"
        )
        require("InteropPayload.requestor", is_agent_id(self.requestor), "must be an agent id")
        require(
            "InteropPayload.confidential", isinstance(self.confidential, bool), "must be a boolean"
        )

    @classmethod
    def from_map(cls, value: object) -> InteropPayload:
        names = ("payload", "address", "nonce", "requestor", "confidential")
        return cls(**map_fields("InteropPayload", value, names))


@dataclass(frozen=True)
class Proof(Message):
    """One notarization: ``signer``'s Ed25519 signature over ``digest(interop_payload)``."""

    signer: str
    signature: bytes

    def __post_init__(self) -> None:
        require("Proof.signer", is_agent_id(self.signer), "must be an agent id")
        require(
            "Proof.signature",
            isinstance(self.signature, bytes) and len(self.signature) == SIGNATURE_BYTES,
            f"must be {SIGNATURE_BYTES} bytes",
        )

    @classmethod
    def from_map(cls, value: object) -> Proof:
        return cls(**map_fields("Proof", value, ("signer", "signature")))


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
        sealed = seal(payload_bytes, requestor, rand, seal_context(address, nonce, requestor))
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


MAX_PROOFS = 64  # notarizations a view may carry: 7,000 copies of one were 0.5 s of checks


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
        items = map_fields("View.data", unpack(view.data, max_nesting=MAX_NESTING),
                           ("interop_payload", "proofs"))
    except CodecError as exc:
        raise MessageError("View.data", str(exc)) from exc
    interop = InteropPayload.from_map(items["interop_payload"])
    require(
        "View.data.proofs",
        isinstance(items["proofs"], list) and bool(items["proofs"]),
        "must be a non-empty list",
    )
    require("View.data.proofs", len(items["proofs"]) <= MAX_PROOFS,
            f"holds {len(items['proofs'])} proofs, more than the {MAX_PROOFS} a view may carry")
    proofs = [Proof.from_map(proof) for proof in items["proofs"]]
    twice = len(proofs) - len({proof.signer for proof in proofs})
    require("View.data.proofs", not twice, "names a signer more than once")  # before any check
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
        context = seal_context(interop.address, interop.nonce, interop.requestor)
        result = unseal(result, requestor_key, context)
    return OpenedView(
        result=result,
        signers=verified.signers,
        address=interop.address,
        nonce=interop.nonce,
        confidential=interop.confidential,
        timestamp=verified.timestamp,
    )
