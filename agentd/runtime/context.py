"""What every service gets: the runtime interface, a transaction context, and the service shape.

A service is handed a :class:`Runtime` (and any other service it needs) through its
constructor and sees nothing else of the node: identity, config, the database, the clock,
replies, the peer address book, counters, registration, and one ``transact``.

A service's ``handle(tx, envelope)`` runs on the database writer thread inside the
transaction that also records the message id in the inbox. Whatever it writes, and every
message it queues with ``tx.send``, commits together or not at all; a ``Reject`` undoes the
lot and answers the sender with an error ack.

An *ephemeral* service (``Service.ephemeral``) handles messages that carry no state worth
keeping, such as route searches: its ``handle`` runs at once on the read connection, with no
inbox row and no commit, and messages to its target are never written to the outbox.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from protocol.envelope import VERSION, Envelope, attempt_prefix, unsendable, with_attempt
from protocol.errors import Refusal
from protocol.keys import ChipAddress, SigningKey, format_hostport
from protocol.messages import Send
from store import outbox

if TYPE_CHECKING:
    from agentd.config import Config
    from agentd.runtime.clock import Clock
    from agentd.runtime.counters import Counters
    from agentd.runtime.outbox import OutboxPump
    from agentd.runtime.replies import Replies
    from store import Database

T = TypeVar("T")


class Reject(Refusal):
    """Refuse a message (or an RPC call) for good, with a stable code and a readable reason.
    Any ``protocol.errors.Refusal`` does the same; ``agentd.runtime.refusals`` maps them."""


class RoutineReject(Reject):
    """A refusal a partner can make us repeat at will (a bound it keeps running into): every
    one is counted (``getinfo`` ``counters.refusals``), but the log has the first of each
    code and ``key`` (what the refusals are about, such as ``over tally T``: never a value
    the sender picks freely) in each ``refusals.QUIET_S`` seconds only."""

    def __init__(self, code: str, message: str, key: str) -> None:
        super().__init__(code, message)
        self.key = key


class NotYet(Exception):
    """A message this node cannot take *yet*, because it depends on another still on its way
    (a chain block of a lift chit whose decision has not arrived here): it changes nothing
    and is left unacked, so its sender sends it again after its ack timeout."""


@dataclass(slots=True)
class Queued:
    """A message written to the outbox in a transaction, for the pump once it commits."""

    id: bytes
    peer: str
    address: str | None
    envelope: dict[str, Any]
    durable: bool = True  # False: to an ephemeral target, never written to the outbox
    prefix: bytes | None = None  # the envelope up to try and last (attempt_prefix)
    seq: int | None = None  # its outbox row's (durable messages)


class Tx:
    """One transaction on the writer thread. Built by the runtime only (``transact``, the
    dispatcher); a service uses ``conn``, ``now_ms``, ``send``, ``withdraw``, ``unsend``,
    ``after_commit``, ``charge``."""

    def __init__(self, conn: sqlite3.Connection, now_ms: int,
                 own_address: Callable[[str | None], ChipAddress], pump: OutboxPump,
                 ephemeral: Collection[str], max_frame: int) -> None:
        self.conn = conn
        self.now_ms = now_ms
        self._max_frame = max_frame
        self.sent: list[Queued] = []
        self._own_address = own_address
        self._pump = pump
        self._ephemeral = ephemeral
        self._withdrawn: list[bytes] = []
        self._after: list[Callable[[], None]] = []
        self.cost = 0  # bytes written beyond the message's own rows and sends: see charge

    def charge(self, cost: int) -> None:
        """Note that the message this transaction handles made us write ``cost`` bytes that
        neither its frame nor the messages it makes us send show (each entry of a batch past
        its first): a stranger's write allowance pays for them (``WriteRation.debit``)."""
        self.cost += cost

    def send(self, message: Send, *, re: bytes | None = None) -> bytes:
        """Queue ``message`` in the outbox, in this transaction; returns its id. A message to
        an ephemeral target gets no row: the pump holds it in memory (a crash loses it)."""
        message_id = os.urandom(16)
        to = message.to
        envelope = Envelope(
            id=message_id, target=message.target, action=message.action, object=message.object,
            to=to, from_=self._own_address(message.from_cuid), try_=1, last=self.now_ms, re=re,
        ).to_map()
        address = format_hostport(to.host, to.port) if to.host is not None else None
        durable = message.target not in self._ephemeral
        prefix = attempt_prefix(envelope)
        problem = unsendable(prefix, envelope, self._max_frame)
        if problem is not None:  # what asked for it is refused instead
            raise Reject("TOO_LARGE", f"{message.target}/{message.action} to {to.agent}: "
                         f"{problem}")
        seq = outbox.enqueue(
            self.conn, message_id=message_id, peer=to.agent, address=address,
            target=message.target, action=message.action,
            body=with_attempt(prefix, 1, self.now_ms), now_ms=self.now_ms,
        ) if durable else None
        self.sent.append(Queued(message_id, to.agent, address, envelope, durable, prefix, seq))
        return message_id

    def withdraw(self, message_id: bytes, reason: str) -> None:
        """Stop delivering a message queued earlier: its row is marked failed with ``reason``
        in this transaction, and the pump drops it once this commits."""
        outbox.mark_failed(self.conn, message_id, reason)
        self._withdrawn.append(message_id)

    def unsend(self, message_id: bytes) -> None:
        """Drop a message queued earlier that one queued now takes the place of, if it still
        waits: its row goes in this transaction, and the pump lets it go once this commits."""
        outbox.delete(self.conn, [message_id])
        self._withdrawn.append(message_id)

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the event loop once this transaction has committed, before its
        messages reach the pump (so a waiter registered here never misses the answer)."""
        self._after.append(fn)

    def committed(self) -> None:
        """Called by the runtime after commit: run hooks, then hand messages to the pump."""
        for fn in self._after:
            fn()
        for message_id in self._withdrawn:
            self._pump.withdraw(message_id)
        for item in self.sent:
            self._pump.add(item.id, item.peer, item.address, item.envelope, 0,
                           durable=item.durable, prefix=item.prefix, seq=item.seq)


class Runtime(Protocol):
    """The node as a service sees it. Implemented by ``agentd.runtime.node.Node``."""

    agent_id: str
    key: SigningKey
    config: Config
    db: Database
    clock: Clock
    replies: Replies
    counters: Counters

    @property
    def listen_address(self) -> str: ...

    def own_address(self, cuid: str | None = None) -> ChipAddress:
        """Our CHIP address (for user ``cuid``) as peers should dial it."""
        ...

    def address_of(self, agent: str) -> str | None:
        """Where to dial ``agent``, if known."""
        ...

    def agent_at(self, address: str) -> str | None:
        """The peer known to listen at ``address``."""
        ...

    def learn_peer(self, agent: str, address: str | None, name: str | None = None) -> None:
        """Remember a peer's address (configured peers keep theirs)."""
        ...

    def learn_address(self, address: ChipAddress, *, hearsay: bool = False) -> None:
        """Remember where ``address``'s agent listens, unless we know already (or it is
        us, or the address names no host); ``hearsay`` (a route's word, which a hop could
        have made up) only until dials there fail, and stored once one is answered."""
        ...

    def connected(self, agent: str) -> bool:
        """Whether a channel to ``agent`` is open now (a read of the channel table: a
        handler on the writer thread may ask too)."""
        ...

    def connected_since(self, agent: str) -> float | None:
        """When the channel to ``agent`` that is open now opened (``clock.monotonic``), or
        None while none is."""
        ...

    def dial_error(self, agent: str) -> str | None:
        """Why the last dial of ``agent`` failed, while none since has succeeded."""
        ...

    def wrong_key_at(self, agent: str) -> str | None:
        """Where the last dial of ``agent`` met a node with another key, while that is why
        the last dial failed."""
        ...

    def redial(self, agent: str) -> None:
        """Dial ``agent`` at its next send, whatever its backoff, forgetting why the last dial
        failed (a user asked to reach it now)."""
        ...

    def clock_ahead_ms(self, agent: str) -> int | None:
        """How far ``agent``'s clock is ahead of ours, from its messages' send times
        (``agentd.runtime.clocks``); None before any message of its."""
        ...

    def seen_before(self, agent: str) -> bool:
        """Whether a channel to ``agent`` is open or ever was (a known peer's last_seen)."""
        ...

    def forget_referee(self, tx: Tx, agent: str) -> None:
        """Forget where a lift's referee listens, in ``tx``, once no lift pending here names
        it and nothing else needs it (``agentd.runtime.peer_admin.forget_referee``)."""
        ...

    def answered(self, agent: str, address: str | None) -> bool:
        """Whether ``agent`` is us, or answered a dial of ours at ``address`` (None: at the
        address we know for it) since the node started."""
        ...

    async def reach(self, agent: str, timeout: float) -> str | None:
        """Open a channel to ``agent`` at the address we know, unless one is open (or it is
        us); None once there is one, else why there is none (within ``timeout``)."""
        ...

    def register_target(self, service: Service) -> None:
        """Deliver messages for ``service.target`` to ``service``."""
        ...

    def register_method(self, name: str, method: Callable[..., Awaitable[Any]]) -> None:
        """Serve RPC method ``name``."""
        ...

    async def transact(self, work: Callable[[Tx], T]) -> T:
        """Run ``work(tx)`` in one transaction on the writer thread; once it commits, hand
        its messages to the pump and return its result. A protocol refusal raised by
        ``work`` rolls everything back and is raised as a ``Reject``."""
        ...

    def transact_ephemeral(self, work: Callable[[Tx], T]) -> T:
        """Run ``work(tx)`` at once on the read connection (the last committed state), with
        no commit to wait for: for work that only reads and sends to ephemeral targets (a
        write fails). Its messages go to the pump as it returns."""
        ...


class Service:
    """Base for a message target. Subclasses set ``target`` and implement ``handle``."""

    target: ClassVar[str]
    # The message actions this target takes: the dispatcher refuses any other as
    # UNKNOWN_ACTION, and docs/protocol.md must describe each (tests/test_protocol_doc.py
    # fails for a target that leaves this None, which the dispatcher does not check).
    actions: ClassVar[frozenset[str] | None] = None
    # True for messages worthless after seconds and carrying no state (route searches):
    # ``handle`` runs on the read connection with no inbox row and no commit (the service
    # deduplicates them itself), and messages to this target are held in memory only,
    # retried until acked or expired (protocol.expiry) and lost in a crash.
    ephemeral: ClassVar[bool] = False
    # (action, error code) pairs that are a routine outcome of this target's protocol when a
    # peer refuses our message (a lift promise that no longer fits): logged as info, not as a
    # warning, and ``on_rejected`` deals with them
    routine_refusals: ClassVar[frozenset[tuple[str, str]]] = frozenset()

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def handle(self, tx: Tx, envelope: Envelope) -> None:
        raise Reject("NOT_IMPLEMENTED", f"{self.target} accepts no messages")

    def wants_delivery(self, envelope: dict) -> bool:
        """Whether ``on_delivered`` must run when the recipient acks this message."""
        return False

    def on_delivered(self, tx: Tx, envelope: dict) -> None:
        """The recipient committed a message we sent (only when ``wants_delivery``)."""

    def on_rejected(self, tx: Tx, envelope: dict, code: str, message: str) -> None:
        """A message we sent was refused for good by its recipient (default: nothing)."""

    def subject(self, envelope: dict) -> str | None:
        """What a message of ours is about (``tally T``), named in the line the dispatcher
        logs when a peer refuses it. None (the default): its target and action say enough."""
        return None

    def refusal_key(self, envelope: dict) -> str | None:
        """What a peer's refusal of this message of ours is about, when the peer can refuse
        many such at will (``of our promises over tally T``): the dispatcher logs the first
        refusal of each code and key in each ``refusals.QUIET_S`` seconds and counts the
        rest. None (the default): each refusal is logged, once per message."""
        return None


__all__ = ["VERSION", "NotYet", "Queued", "Reject", "Runtime", "Send", "Service", "Tx"]
