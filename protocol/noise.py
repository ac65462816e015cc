"""A sans-IO Noise IK session that hides the four traps of ``noiseprotocol`` 0.3.1.

The traps (measured, see shared/reference/python-libraries.md): plaintext above 65519 bytes
encrypts into a ciphertext the peer must reject; ``encrypt``/``decrypt`` take only ``bytes``
while the handshake returns ``bytearray``; the protocol name must be ``bytes``; and the remote
static key is deleted when the handshake finishes, so we keep our own reference to the
handshake state. Any failure is fatal: the receive nonce does not advance on a failed decrypt,
so the session refuses every later call instead of producing confusing errors.

On the wire every Noise message is a 2-byte big-endian length and the message;
:class:`NoiseSession` produces and consumes that framing itself.
"""

from __future__ import annotations

import struct
from enum import Enum

from noise.connection import Keypair, NoiseConnection
from noise.exceptions import NoiseHandshakeError, NoiseInvalidMessage, NoiseValueError

PROTOCOL_NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2b"
PROLOGUE = b"agentd/1"
MAX_NOISE_MESSAGE = 65535
TAG_SIZE = 16
MAX_PLAINTEXT = MAX_NOISE_MESSAGE - TAG_SIZE  # 65519
_LEN = struct.Struct(">H")


class NoiseFailure(Exception):
    """The session failed (bad handshake, failed authentication) and must be closed."""


class Role(Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


class Phase(Enum):
    HANDSHAKE = "handshake"
    TRANSPORT = "transport"
    FAILED = "failed"


class NoiseSession:
    """One side of a Noise IK channel: handshake messages, then encrypted transport.

    The initiator must know the responder's X25519 static key. Handshake payloads are opaque
    bytes here (agentd puts msgpack hello maps in them).
    """

    def __init__(
        self,
        role: Role,
        static_private: bytes,
        remote_static: bytes | None = None,
        prologue: bytes = PROLOGUE,
    ) -> None:
        self.role = role
        self.phase = Phase.HANDSHAKE
        self._conn = NoiseConnection.from_name(PROTOCOL_NAME)
        if role is Role.INITIATOR:
            if remote_static is None:
                raise ValueError("an IK initiator needs the responder's static key")
            self._conn.set_as_initiator()
            self._conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, bytes(remote_static))
        else:
            self._conn.set_as_responder()
        self._conn.set_keypair_from_private_bytes(Keypair.STATIC, bytes(static_private))
        self._conn.set_prologue(bytes(prologue))
        self._conn.start_handshake()
        self._handshake_state = self._conn.noise_protocol.handshake_state
        self._buffer = bytearray()

    # -- handshake ---------------------------------------------------------------------

    @property
    def remote_static(self) -> bytes | None:
        """The peer's X25519 static key, once the handshake has revealed it."""
        # noiseprotocol holds an ``Empty()`` placeholder (not None) until ``s`` is read.
        public = getattr(self._handshake_state.rs, "public_bytes", None)
        return bytes(public) if public is not None else None

    @property
    def handshake_finished(self) -> bool:
        return self.phase is Phase.TRANSPORT

    def write_handshake(self, payload: bytes = b"") -> bytes:
        """The next handshake message, length-prefixed for the wire."""
        self._require(Phase.HANDSHAKE)
        try:
            message = bytes(self._conn.write_message(bytes(payload)))
        except (NoiseHandshakeError, NoiseInvalidMessage, NoiseValueError, ValueError) as exc:
            self._fail()
            raise NoiseFailure(f"cannot write handshake message: {exc}") from exc
        self._after_handshake_step()
        return _LEN.pack(len(message)) + message

    def read_handshake(self, message: bytes) -> bytes:
        """Process one handshake message (without its length prefix); returns its payload."""
        self._require(Phase.HANDSHAKE)
        try:
            payload = bytes(self._conn.read_message(bytes(message)))
        except Exception as exc:  # noiseprotocol raises assorted types on garbage input
            self._fail()
            raise NoiseFailure(f"handshake failed: {type(exc).__name__}: {exc}") from exc
        self._after_handshake_step()
        return payload

    def _after_handshake_step(self) -> None:
        if self._conn.handshake_finished:
            self.phase = Phase.TRANSPORT

    # -- transport ---------------------------------------------------------------------

    def encrypt(self, plaintext: bytes) -> bytes:
        """Encrypt a byte stream into wire bytes, chunked so no plaintext exceeds 65519."""
        self._require(Phase.TRANSPORT)
        view = memoryview(plaintext)
        out = []
        encrypt = self._conn.encrypt
        for start in range(0, len(view), MAX_PLAINTEXT):
            ciphertext = encrypt(bytes(view[start : start + MAX_PLAINTEXT]))
            out.append(_LEN.pack(len(ciphertext)))
            out.append(ciphertext)
        return b"".join(out)

    def decrypt(self, data: bytes) -> bytes:
        """Feed wire bytes; returns the plaintext of every complete Noise message in them.

        Only an unfinished message at the end is kept (copied) between calls; complete ones
        are read in place."""
        self._require(Phase.TRANSPORT)
        buffer = self._buffer
        if buffer:
            buffer += data
        view = memoryview(buffer if buffer else data)
        out = []
        offset = 0
        size = len(view)
        decrypt = self._conn.decrypt
        try:
            while size - offset >= 2:
                (length,) = _LEN.unpack_from(view, offset)
                if length < TAG_SIZE:
                    raise NoiseFailure(f"Noise message of {length} bytes is shorter than its tag")
                end = offset + 2 + length
                if end > size:
                    break
                out.append(decrypt(bytes(view[offset + 2 : end])))
                offset = end
        except NoiseFailure:
            view.release()
            self._fail()
            raise
        except Exception as exc:
            view.release()
            self._fail()
            raise NoiseFailure(f"decryption failed: {type(exc).__name__}: {exc}") from exc
        if buffer:
            view.release()
            del buffer[:offset]
        else:
            buffer += view[offset:]
            view.release()
        return b"".join(out)

    def close(self) -> None:
        """Free the unfinished message held (the channel is over); the session is unusable."""
        self.phase = Phase.FAILED
        self._buffer = bytearray()

    # -- guards ------------------------------------------------------------------------

    def _require(self, phase: Phase) -> None:
        if self.phase is Phase.FAILED:
            raise NoiseFailure("the session has failed and must be closed")
        if self.phase is not phase:
            raise NoiseFailure(f"not allowed during {self.phase.value}")

    def _fail(self) -> None:
        self.close()


class HandshakeReader:
    """Collects one length-prefixed handshake message out of a byte stream."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def declared_length(self) -> int:
        """The length the buffered prefix announces (0 until two bytes have arrived)."""
        return _LEN.unpack_from(self._buffer, 0)[0] if len(self._buffer) >= 2 else 0

    def feed(self, data: bytes) -> tuple[bytes | None, bytes]:
        """Returns (message or None, bytes left over after it)."""
        self._buffer += data
        if len(self._buffer) < 2:
            return None, b""
        (length,) = _LEN.unpack_from(self._buffer, 0)
        if len(self._buffer) < 2 + length:
            return None, b""
        message = bytes(self._buffer[2 : 2 + length])
        rest = bytes(self._buffer[2 + length :])
        self._buffer.clear()
        return message, rest
