"""Confidential views: a payload sealed so that only the requestor's agent key opens it."""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol.codec import CodecError, canonical, unpack
from protocol.keys import SigningKey, agent_id_to_public, ed25519_public_to_x25519
from protocol.relay_fields import DecryptionError, MessageError, RelayError, map_fields

SEAL_SCHEME = "X25519-HKDF-SHA256-ChaCha20Poly1305"
_SEAL_INFO = b"agentd/relay/seal/1"
_SEAL_KEY_BYTES = 32
_SEAL_NONCE_BYTES = 12


def seal_context(address: str, nonce: str, requestor: str) -> bytes:
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
        items = map_fields(
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
