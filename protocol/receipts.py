"""Clearing-house receipts: signed a batch at a time, each one standing alone.

Sans-IO, like ``protocol.clearing`` (whose entries they prove). One EdDSA compact JWS
(``kid`` the RFC 7638 thumbprint) signs ``iss``, ``iat``, ``version`` (the receipt format,
``RECEIPT_VERSION``) and the root of a Merkle tree (``protocol.merkle``) over the claims of
every entry of one ``log_batch`` (one entry for a ``log``). A receipt is ``<that JWS>~<base64url
msgpack {claims, index, proof}>``: its entry's claims (canonical msgpack, the bytes its leaf
hashes) and the inclusion proof that ties them to the signed root. So a batch costs one
signature, a client verifies one per batch (``verify_batch``), and each receipt still proves
its entry alone (``verify_receipt``), with any JOSE library, msgpack and a dozen lines of
hashing. ``Keyring.jwks`` publishes every key that ever signed, so old receipts keep verifying
after a key change.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt

from protocol import merkle
from protocol.codec import CodecError, pack, unpack
from protocol.keys import IdentityError, SigningKey, b64u, unb64u, verify

RECEIPT_VERSION = 2
_HEX64 = re.compile(r"[0-9a-f]{64}")


@functools.lru_cache(maxsize=64)
def thumbprint(public: bytes) -> str:
    """RFC 7638 SHA-256 thumbprint of an Ed25519 public key: the receipt's ``kid``."""
    members = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": b64u(public)}, separators=(",", ":"), sort_keys=True
    )
    return b64u(hashlib.sha256(members.encode()).digest())


def entry_claims(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The receipt claims that restate ``entry``: pass as ``expect`` to match a receipt to it."""
    return {
        "process_id": entry["pid"],
        "document_id": entry["entry_hash"],
        "seq": entry["seq"],
        "timestamp": entry["timestamp"],
        "client_id": entry["client_id"],
        "payload_sha256": entry["payload_sha256"],
        "entry_hash": entry["entry_hash"],
        "prev_hash": entry["prev_hash"],
    }


def _jwk(public: bytes) -> dict[str, str]:
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64u(public),
        "kid": thumbprint(public),
        "alg": "EdDSA",
        "use": "sig",
    }


@dataclass(frozen=True)
class Keyring:
    """The receipt-signing key and the retired public keys that old receipts still need.

    ``issuer`` (the ``iss`` claim) is the clearing house's agent id; the signing key is its own
    so that rotating it does not change the node's identity.
    """

    issuer: str
    current: SigningKey
    retired: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if any(len(public) != 32 for public in self.retired):
            raise ValueError("a retired key is a 32-byte Ed25519 public key")

    @property
    def kid(self) -> str:
        return thumbprint(self.current.public)

    def jwks(self) -> dict[str, Any]:
        """Every public key, current first, as a JWKS: the ``keys`` reply."""
        publics = dict.fromkeys((self.current.public, *self.retired))
        return {"keys": [_jwk(public) for public in publics]}

    def receipts(self, entries: Sequence[Mapping[str, Any]]) -> list[str]:
        """The receipts of stored ``entries`` (at least one), in order, under one signature.

        The JWS signs the batch: ``iss``, ``iat`` (the newest entry's time, in seconds),
        ``version``, and the root of a Merkle tree whose leaves are the entries' claims. Each
        receipt is that JWS, ``~``, and the base64url msgpack map ``{claims, index, proof}``
        of its entry (``claims``: its claims as canonical msgpack, the bytes its leaf hashes;
        ``proof``: its Merkle siblings from the bottom up, 32 bytes each), so it stands alone.
        Deterministic: Ed25519 needs no randomness.
        """
        signed, parts = self.sign(entries)
        return [f"{signed}~{part}" for part in parts]

    def sign(self, entries: Sequence[Mapping[str, Any]]) -> tuple[str, list[str]]:
        """The batch JWS over ``entries`` and each one's entry part: see ``receipts``."""
        claims = [_claims_bytes(entry_claims(entry)) for entry in entries]
        levels = merkle.tree([merkle.leaf_hash(one) for one in claims])
        batch = {
            "iss": self.issuer,
            "iat": max(entry["timestamp"] for entry in entries) // 1000,
            "version": RECEIPT_VERSION,
            "batch_root": merkle.root(levels).hex(),
            "batch_size": len(claims),
        }
        signed = jwt.encode(
            batch, self.current.private_key, algorithm="EdDSA", headers={"kid": self.kid}
        )
        return signed, [
            b64u(pack({
                "claims": one, "index": index, "proof": b"".join(merkle.proof(levels, index)),
            }))
            for index, one in enumerate(claims)
        ]


def _claims_bytes(claims: Mapping[str, Any]) -> bytes:
    """An entry's claims as canonical msgpack: a flat map of text and integers, so sorting
    its keys is all that canonical encoding takes."""
    return pack(dict(sorted(claims.items())))


class ReceiptFault(StrEnum):
    """Why a receipt failed, for reports such as ``receipts.verify``."""

    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    BAD_CLAIMS = "bad_claims"
    MISMATCH = "mismatch"


class ReceiptError(ValueError):
    """A receipt that does not verify; ``fault`` classifies it, the message says why."""

    def __init__(self, fault: ReceiptFault, message: str) -> None:
        super().__init__(message)
        self.fault = fault


_BATCH_TYPES: dict[str, type] = {
    "iss": str,
    "iat": int,
    "version": int,
    "batch_root": str,
    "batch_size": int,
}
_CLAIM_TYPES: dict[str, type] = {
    "process_id": str,
    "document_id": str,
    "seq": int,
    "timestamp": int,
    "client_id": str,
    "payload_sha256": str,
    "entry_hash": str,
    "prev_hash": str,
}
_URL_ALPHABET = bytes.maketrans(b"-_", b"+/")
VERIFIED_BATCHES = 4096  # signed batches whose signature check is remembered
MAX_SIGNED = 2048  # characters of a receipt's JWS: its header and claims are small
MAX_ENTRY_PART = 8192  # characters of its entry part: claims and a proof (at most 64 hashes)
MAX_RECEIPT = MAX_SIGNED + 1 + MAX_ENTRY_PART  # a whole receipt: the two parts and their "~"


def _jwks_public(jwks: Mapping[str, Any], kid: str) -> bytes:
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list):
        raise ReceiptError(ReceiptFault.UNKNOWN_KEY, "the JWKS has no 'keys' list")
    for jwk in keys:
        if not isinstance(jwk, dict) or jwk.get("kid") != kid:
            continue
        x = jwk.get("x")
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and isinstance(x, str):
            public = _thumbprinted_key(x, kid)
            if public is not None:
                return public
        raise ReceiptError(
            ReceiptFault.UNKNOWN_KEY, f"JWKS key {kid} is not an Ed25519 key with that thumbprint"
        )
    raise ReceiptError(
        ReceiptFault.UNKNOWN_KEY,
        f"kid {kid} is not among the {len(keys)} JWKS keys: another key signed this receipt",
    )


def jwk_key(jwk: object) -> dict[str, str] | None:
    """``jwk`` rebuilt as exactly the members we keep (an Ed25519 key whose ``kid`` is its
    thumbprint), or None for anything else: what a clearing house's JWKS may add."""
    if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        return None
    x, kid = jwk.get("x"), jwk.get("kid")
    if not isinstance(x, str) or not isinstance(kid, str) or len(x) > 64:
        return None
    public = _thumbprinted_key(x, kid)
    return None if public is None else _jwk(public)


@functools.lru_cache(maxsize=64)
def _thumbprinted_key(x: str, kid: str) -> bytes | None:
    """The Ed25519 key that JWK member ``x`` holds, if its thumbprint is ``kid``."""
    try:
        public = unb64u(x)
    except IdentityError:
        return None
    return public if len(public) == 32 and thumbprint(public) == kid else None


def _check_types(claims: Mapping[str, Any], types: Mapping[str, type], what: str) -> None:
    if all(type(claims.get(name)) is kind for name, kind in types.items()):
        return
    missing = sorted(types.keys() - claims.keys())
    if missing:
        raise ReceiptError(ReceiptFault.BAD_CLAIMS, f"{what} missing: {', '.join(missing)}")
    for name, kind in types.items():
        value = claims[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ReceiptError(
                ReceiptFault.BAD_CLAIMS,
                f"claim {name} is a {type(value).__name__}, not {kind.__name__}",
            )


def _segment(text: str) -> bytes:
    """A strict base64url decode of one segment (no padding, no ``+`` or ``/``); ValueError
    if it is none."""
    data = text.encode("ascii")  # UnicodeEncodeError is a ValueError
    if b"+" in data or b"/" in data or b"=" in data:
        raise ValueError("not base64url: it holds '+', '/' or '='")
    return binascii.a2b_base64(data.translate(_URL_ALPHABET) + b"=" * (-len(data) % 4),
                               strict_mode=True)


def _json_object(text: str | bytes, what: str) -> dict[str, Any]:
    """A JSON object from a base64url segment (``text``) or decoded ``bytes``."""
    try:
        value = json.loads(_segment(text) if isinstance(text, str) else text)
    except (ValueError, RecursionError) as exc:
        raise ReceiptError(
            ReceiptFault.MALFORMED, f"the {what} does not decode: {exc} (truncated or altered)"
        ) from exc
    if not isinstance(value, dict):
        raise ReceiptError(ReceiptFault.MALFORMED, f"the {what} does not decode: not an object")
    return value


@functools.lru_cache(maxsize=VERIFIED_BATCHES)
def _signed_batch(signed: str, public: bytes, kid: str) -> dict[str, Any]:
    """The claims of the batch JWS ``signed`` once its signature verifies (remembered: the
    receipts of one batch share it, so it is checked once)."""
    segments = signed.split(".")
    if len(segments) != 3:
        raise ReceiptError(
            ReceiptFault.MALFORMED,
            f"{len(segments)} dot-separated segments, not 3: truncated or not a compact JWS",
        )
    try:
        signature = _segment(segments[2])
    except ValueError:
        signature = None
    if signature is None or len(signature) != 64 or b64u(signature) != segments[2]:
        raise ReceiptError(
            ReceiptFault.MALFORMED,
            "the signature is not 64 base64url-encoded bytes: the receipt is truncated or altered",
        )
    try:
        body = _segment(segments[1])
    except ValueError as exc:
        raise ReceiptError(
            ReceiptFault.MALFORMED, f"the signed batch does not decode: {exc}"
        ) from exc
    try:
        signing_input = f"{segments[0]}.{segments[1]}".encode("ascii")
    except UnicodeEncodeError:
        signing_input = None
    if signing_input is None or not verify(public, signature, signing_input):
        raise ReceiptError(
            ReceiptFault.BAD_SIGNATURE,
            f"the signature does not verify with key {kid}: the header or a claim was altered",
        )
    claims = _json_object(body, "signed batch")
    _check_types(claims, _BATCH_TYPES, "signed claims")
    if claims["version"] != RECEIPT_VERSION:
        raise ReceiptError(
            ReceiptFault.BAD_CLAIMS,
            f"receipt version {claims['version']} is not {RECEIPT_VERSION}, the one this reads",
        )
    if not _HEX64.fullmatch(claims["batch_root"]) or claims["batch_size"] < 1:
        raise ReceiptError(ReceiptFault.BAD_CLAIMS, "the signed batch root or size is invalid")
    return claims


def _split(token: object) -> tuple[str, str]:
    if not isinstance(token, str):
        raise ReceiptError(
            ReceiptFault.MALFORMED, f"a receipt is text, not {type(token).__name__}"
        )
    parts = token.split("~")
    if len(parts) == 2 and (len(parts[0]) > MAX_SIGNED or len(parts[1]) > MAX_ENTRY_PART):
        raise ReceiptError(
            ReceiptFault.MALFORMED,
            f"the receipt's parts are {len(parts[0])} and {len(parts[1])} characters, more"
            f" than a receipt's {MAX_SIGNED} and {MAX_ENTRY_PART}",
        )
    if len(parts) != 2:
        raise ReceiptError(
            ReceiptFault.MALFORMED,
            f"{len(parts)} '~'-separated parts, not 2 (the signed batch and the entry):"
            " truncated or not a receipt",
        )
    return parts[0], parts[1]


def _disclosure(text: str) -> tuple[dict[str, Any], int, bytes, bytes]:
    """The entry part of a receipt: (claims, index, proof: the sibling hashes end to end,
    leaf)."""
    try:
        disclosed = unpack(_segment(text))
    except ValueError as exc:  # CodecError too
        raise ReceiptError(
            ReceiptFault.MALFORMED, f"the entry part does not decode: {exc} (truncated or altered)"
        ) from exc
    if not isinstance(disclosed, dict):
        raise ReceiptError(ReceiptFault.MALFORMED, "the entry part is not a map")
    packed, index, proof = disclosed.get("claims"), disclosed.get("index"), disclosed.get("proof")
    if not isinstance(packed, bytes):
        raise ReceiptError(ReceiptFault.MALFORMED, "the entry part holds no packed claims")
    if not isinstance(index, int) or isinstance(index, bool):
        raise ReceiptError(ReceiptFault.MALFORMED, "the entry part holds no integer index")
    if not isinstance(proof, bytes) or len(proof) % 32:
        raise ReceiptError(ReceiptFault.MALFORMED,
                           "the entry part's proof is not a run of 32-byte hashes")
    if len(disclosed) != 3:  # one receipt, one spelling: nothing beside claims, index, proof
        extra = ", ".join(sorted(map(str, disclosed.keys() - {"claims", "index", "proof"})))
        raise ReceiptError(ReceiptFault.MALFORMED,
                           f"the entry part holds {extra} beside claims, index and proof")
    try:
        claims = unpack(packed)
    except CodecError as exc:
        raise ReceiptError(ReceiptFault.MALFORMED, f"the claims do not decode: {exc}") from exc
    if not isinstance(claims, dict):
        raise ReceiptError(ReceiptFault.MALFORMED, "the claims are not a map")
    _check_types(claims, _CLAIM_TYPES, "claims")
    return claims, index, proof, merkle.leaf_hash(packed)


def receipt_claims_unverified(token: object) -> dict[str, Any]:
    """The entry claims a receipt states, without any check: only to file it by seq and
    document. ``{}`` when it does not even decode."""
    try:
        return _disclosure(_split(token)[1])[0]
    except ReceiptError:
        return {}


@functools.lru_cache(maxsize=VERIFIED_BATCHES)
def _kid(signed: str) -> str:
    header = _json_object(signed.split(".", 1)[0], "header")
    if header.get("alg") != "EdDSA":
        raise ReceiptError(ReceiptFault.MALFORMED, f"alg {header.get('alg')!r} is not EdDSA")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise ReceiptError(ReceiptFault.MALFORMED, "the header names no kid")
    return kid


def verify_receipt(
    token: object, jwks: Mapping[str, Any], expect: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The claims of a receipt (``iss, iat, version`` and its entry's) that verifies: its
    batch's EdDSA signature under its ``kid`` in ``jwks``, and its entry's Merkle proof up to
    the signed root.

    ``expect`` maps claim names to required values (e.g. ``entry_claims(entry)`` or
    ``{"process_id": pid}``). Raises ``ReceiptError`` saying why otherwise.
    """
    signed, disclosed = _split(token)
    kid = _kid(signed)
    batch = _signed_batch(signed, _jwks_public(jwks, kid), kid)
    claims, index, proof, leaf = _disclosure(disclosed)
    try:
        reached = merkle.root_from_proof(
            leaf, index, batch["batch_size"], [proof[i:i + 32] for i in range(0, len(proof), 32)]
        )
    except merkle.ProofError as exc:
        raise ReceiptError(ReceiptFault.MALFORMED, f"the entry's proof is invalid: {exc}") \
            from exc
    if reached.hex() != batch["batch_root"]:
        raise ReceiptError(
            ReceiptFault.BAD_SIGNATURE,
            "the entry's claims are not the ones signed (their Merkle proof does not lead to"
            " the signed root): a claim was altered",
        )
    return _stated(batch, claims, expect)


def _stated(
    batch: Mapping[str, Any], claims: Mapping[str, Any], expect: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A verified receipt's claims, once they say what ``expect`` requires."""
    stated = {"iss": batch["iss"], "iat": batch["iat"], "version": batch["version"], **claims}
    for name, wanted in (expect or {}).items():
        if stated.get(name) != wanted:
            raise ReceiptError(
                ReceiptFault.MISMATCH,
                f"the receipt's {name} is {stated.get(name)!r}, expected {wanted!r}",
            )
    return stated


def verify_batch(
    signed: str, parts: Sequence[str], jwks: Mapping[str, Any],
    expects: Sequence[Mapping[str, Any] | None],
) -> list[dict[str, Any] | ReceiptError]:
    """``verify_receipt`` for every receipt ``signed~part`` of one whole batch (as a
    ``processed_batch`` carries it): each one's claims or its ``ReceiptError``, in order.

    The same verdicts, for less work: the signature and key are checked once, and the tree is
    rebuilt from all the leaves (one hash per leaf) instead of walking each proof (one hash
    per level per leaf); each receipt's index and proof must then be the tree's own. Anything
    unexpected falls back to checking each receipt alone.
    """
    try:
        kid = _kid(signed)
        batch = _signed_batch(signed, _jwks_public(jwks, kid), kid)
        opened = [_disclosure(part) for part in parts]
    except ReceiptError:
        opened = []
    if opened and batch["batch_size"] == len(opened):
        levels = merkle.tree([leaf for _, _, _, leaf in opened])
        if merkle.root(levels).hex() == batch["batch_root"] and all(
            index == position and proof == b"".join(merkle.proof(levels, position))
            for position, (_, index, proof, _) in enumerate(opened)
        ):
            return [_verdict(_stated, batch, claims, expect)
                    for (claims, _, _, _), expect in zip(opened, expects, strict=True)]
    return [_verdict(verify_receipt, f"{signed}~{part}", jwks, expect)
            for part, expect in zip(parts, expects, strict=True)]


def _verdict(check: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any] | ReceiptError:
    try:
        return check(*args)
    except ReceiptError as exc:
        return exc
