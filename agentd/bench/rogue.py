"""A rogue peer: a fresh key, a valid Noise handshake, then whatever bytes it likes.

Used by ``agentd bench abuse`` and by the tests of issue 12 (``tests/rogue.py``) to attack a
real node on loopback the way a stranger on the internet could: floods of messages it never
acks, a claimed ``listen`` address pointing anywhere, frames trickled a byte at a time,
frames left half sent, and connections that never finish the handshake.
"""

from __future__ import annotations

import os

import trio

from agentd.runtime.transport import Hello
from protocol.envelope import Ack, Envelope, parse_frame
from protocol.frames import FrameDecoder, encode_frame
from protocol.keys import SigningKey, agent_id_to_public, ed25519_public_to_x25519
from protocol.noise import HandshakeReader, NoiseSession, Role


class Rogue:
    """One connection to ``host:port``, driven by hand."""

    def __init__(self, stream: trio.SocketStream, key: SigningKey) -> None:
        self.stream = stream
        self.key = key
        self.agent = key.agent_id
        self.session: NoiseSession | None = None
        self._decoder = FrameDecoder(64 << 20)
        self._early = b""  # bytes that came with the handshake's answer

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1",
                      key: SigningKey | None = None) -> Rogue:
        """Open the TCP connection only: a half-open peer, until ``handshake``."""
        stream = await trio.open_tcp_stream(host, port)
        return cls(stream, key or SigningKey.generate())

    @classmethod
    async def join(cls, port: int, node_agent: str, *, listen: str | None = None,
                   host: str = "127.0.0.1", key: SigningKey | None = None) -> Rogue:
        """Connect and complete a valid handshake, claiming ``listen`` in the hello."""
        rogue = await cls.connect(port, host, key)
        if not await rogue.handshake(node_agent, listen=listen):
            await rogue.aclose()
            raise ConnectionError("the node closed the connection during the handshake")
        return rogue

    async def handshake(self, node_agent: str, *, listen: str | None = None) -> bool:
        """The initiator's IK handshake; False if the node closed the connection instead."""
        static = ed25519_public_to_x25519(agent_id_to_public(node_agent))
        self.session = NoiseSession(Role.INITIATOR, self.key.x25519_private(), static)
        hello = Hello(self.agent, listen, ())
        try:
            await self.stream.send_all(self.session.write_handshake(hello.encode()))
            reader = HandshakeReader()
            while True:
                data = await self.stream.receive_some(4096)
                if not data:
                    return False
                message, rest = reader.feed(data)
                if message is not None:
                    self.session.read_handshake(message)
                    self._early = rest  # the node's first messages, in the same read
                    return True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False

    def envelope(self, node_agent: str, action: str = "ping", obj: dict | None = None, *,
                 target: str = "node", listen: tuple[str, int] | None = None) -> dict:
        """A well-formed message from this rogue (``listen``: the address it claims)."""
        sender: dict = {"agent": self.agent}
        if listen is not None:
            sender["host"], sender["port"] = listen
        return {"v": 1, "id": os.urandom(16), "target": target, "action": action,
                "object": {"seq": 1} if obj is None else obj, "try": 1, "last": 1,
                "to": {"agent": node_agent}, "from": sender}

    async def send_frames(self, bodies: list[bytes]) -> None:
        """Frame, encrypt and send message bodies in one write."""
        assert self.session is not None, "handshake first"
        await self.stream.send_all(self.session.encrypt(b"".join(map(encode_frame, bodies))))

    async def send_plaintext(self, data: bytes) -> None:
        """Any bytes inside the Noise channel: a frame header alone, part of a frame..."""
        assert self.session is not None, "handshake first"
        await self.stream.send_all(self.session.encrypt(data))

    async def send_raw(self, data: bytes) -> None:
        """Bytes on the socket as they are (garbage, or a handshake cut short)."""
        await self.stream.send_all(data)

    async def start_frame(self, size: int, first: bytes = b"") -> None:
        """Announce a frame of ``size`` bytes and send only ``first`` of them."""
        await self.send_plaintext(size.to_bytes(4, "big") + first)  # frames.py's header

    async def trickle(self, data: bytes, interval: float) -> None:
        """Send ``data`` one byte per Noise message, ``interval`` seconds apart."""
        for i in range(len(data)):
            await self.send_plaintext(data[i:i + 1])
            await trio.sleep(interval)

    async def receive(self, timeout: float = 5.0) -> list[Envelope | Ack]:
        """The next frames the node sends ([] if it closed the connection)."""
        assert self.session is not None, "handshake first"
        with trio.fail_after(timeout):
            while True:
                data, self._early = self._early, b""
                try:
                    data = data or await self.stream.receive_some(1 << 16)
                except trio.BrokenResourceError:
                    return []
                if not data:
                    return []
                frames = self._decoder.feed(self.session.decrypt(data))
                if frames:
                    return [parse_frame(frame) for frame in frames]

    async def closed_by_node(self, timeout: float = 10.0) -> bool:
        """Wait until the node closes the connection (reading and dropping what it sends)."""
        with trio.move_on_after(timeout):
            try:
                while await self.stream.receive_some(1 << 16):
                    pass
            except trio.BrokenResourceError:
                pass
            return True
        return False

    async def aclose(self) -> None:
        await self.stream.aclose()


__all__ = ["Rogue"]
