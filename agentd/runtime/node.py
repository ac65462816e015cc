"""A node: one identity, one database, one nursery that owns every task it runs.

``Node.run`` opens the database, starts the peer manager, the outbox pump, the TCP listener
and the control socket — each with ``nursery.start`` so it is ready before the next — then
reports itself started and waits for ``stop()``. Cancelling it (SIGINT, SIGTERM, the ``stop``
method, a test) unwinds all of it; the database context commits or rolls back in-flight jobs
and joins the writer thread before ``run`` returns.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import trio

from agentd.config import Config
from agentd.errors import UserError
from agentd.logs import event
from agentd.rpc import RpcServer
from agentd.runtime import churn, datadir, node_info, peer_names
from agentd.runtime.churn import Churn
from agentd.runtime.clock import Clock
from agentd.runtime.clocks import PeerClocks
from agentd.runtime.context import Reject, Service, Tx
from agentd.runtime.counters import Counters
from agentd.runtime.dispatch import Dispatcher
from agentd.runtime.hearsay import Hearsay
from agentd.runtime.limits import DecodeBudget, WriteRation
from agentd.runtime.links import Links
from agentd.runtime.maintenance import prune_kept
from agentd.runtime.metrics import Metrics
from agentd.runtime.outbox import OutboxPump
from agentd.runtime.peer_admin import PeerAdmin, forget_referee
from agentd.runtime.peer_names import Unnamed
from agentd.runtime.peer_rows import PeerRows
from agentd.runtime.peers import PeerManager, PeerUnreachable
from agentd.runtime.ports import bind_ports
from agentd.runtime.refusals import rpc_error
from agentd.runtime.reload import own_peer_problems, referee_warnings, reload_config
from agentd.runtime.replies import Replies
from agentd.runtime.strangers import Strangers
from agentd.runtime.timers import Ticker
from agentd.runtime.transport import Channel, Hello
from agentd.services.clearing.client import Evidence
from agentd.services.clearing.house import ClearingService
from agentd.services.credit.service import Credit
from agentd.services.ping import PingService
from agentd.services.relay.service import RelayService
from agentd.services.users import Users
from protocol.keys import ChipAddress, SigningKey, format_hostport, parse_hostport
from store import Database, DatabaseError, inbox, is_failure
from store import credit as credit_store
from store import peers as peer_store

log = logging.getLogger("agentd.runtime.node")
T = TypeVar("T")
INBOX_RETENTION_MS = 30 * 24 * 3600 * 1000  # dedup window: far longer than any retry gap
MAINTENANCE_INTERVAL = 3600.0


class Node:
    def __init__(self, config: Config, key: SigningKey, clock: Clock | None = None, *,
                 database: dict[str, Any] | None = None) -> None:
        """``database``: options for ``Database.open`` (``agentd sim`` shares one writer
        thread between its nodes and relaxes ``synchronous``)."""
        self.config = config
        self.database_options = database or {}
        self.clock = clock or Clock()
        self.key = key
        self.agent_id = key.agent_id
        self.counters = Counters()
        self.churn = Churn()  # how often a peer's channel events get a line, and a store
        self.rpc = RpcServer(rpc_error)
        self.metrics = Metrics(self)
        self.metrics_port: int | None = None  # where [metrics] listen serves, once started
        self.rpc.observe = lambda method, seconds: self.metrics.rpc_seconds.labels(
            method).observe(seconds)
        self.dispatcher = Dispatcher(self)
        self.pump = OutboxPump(self)
        self.replies = Replies()
        self.db: Database = None  # type: ignore[assignment]  # set in run()
        self.host, self.port = config.listen_host_port
        self.started_monotonic = 0.0
        self._stop = trio.Event()
        self._peer_addresses: dict[str, str] = {}
        self._peer_names: dict[str, str] = {}
        self.hearsay = Hearsay(self._peer_addresses, self.learn_peer,
                               lambda agent: self.peer_source(agent) == "config")
        self.strangers = Strangers()
        self.clocks = PeerClocks(lambda agent: self.describe_peer(agent)[0])
        limits = config.limits
        self.ration = WriteRation(limits.stranger_write_rate, limits.stranger_write_burst,
                                  limits.all_strangers_write_rate, limits.all_strangers_write_burst)
        self.decoding = DecodeBudget(config.max_frame)  # strangers' frames being handled
        self.inbox_bound = PeerRows(limits.inbox_per_peer, inbox.trim, "message ids",
                                    "inbox_per_peer")
        self.peers: PeerManager = None  # type: ignore[assignment]  # set in run()
        self.configure_peers()
        self.links: Links | None = None  # simulated link faults: set by agentd sim, before run
        self._install_services()
        for name, method in (("getinfo", self.rpc_getinfo), ("peers.list", self.rpc_peers),
                             ("reload", self.rpc_reload), ("stop", self.rpc_stop)):
            self.register_method(name, method)

    def _install_services(self) -> None:
        """Each service registers its message targets and RPC methods through the runtime
        interface; a service that needs another is handed it here. One line each."""
        PingService(self)
        self.evidence = Evidence(self)
        ClearingService(self, self.evidence)
        self.relay = RelayService(self)
        self.credit = Credit(self, self.evidence)  # the tally and chit targets
        Users(self)
        PeerAdmin(self)

    # -- the runtime interface (agentd.runtime.context.Runtime) --------------------------

    def register_target(self, service: Service) -> None:
        self.dispatcher.register(service)

    def register_method(self, name: str, method: Callable[..., Awaitable[Any]]) -> None:
        self.rpc.register(name, method)

    def connected(self, agent: str) -> bool:
        return self.peers is not None and self.peers.connected(agent)

    def connected_since(self, agent: str) -> float | None:
        return None if self.peers is None else self.peers.connected_since(agent)

    def clock_ahead_ms(self, agent: str) -> int | None:
        return self.clocks.ahead_ms(agent)

    def dial_error(self, agent: str) -> str | None:
        return None if self.peers is None else self.peers.dial_error(agent)

    def wrong_key_at(self, agent: str) -> str | None:
        return None if self.peers is None else self.peers.wrong_key_at(agent)

    def redial(self, agent: str) -> None:
        self.peers.redial(agent)

    def seen_before(self, agent: str) -> bool:
        return self.connected(agent) or self.db.reading(
            lambda conn: peer_store.last_seen(conn, agent)) is not None

    def answered(self, agent: str, address: str | None) -> bool:
        address = address or self.address_of(agent)
        return agent == self.agent_id or (self.peers is not None and address is not None
                                          and self.peers.answered(agent, address))

    async def reach(self, agent: str, timeout: float) -> str | None:
        if agent == self.agent_id or self.connected(agent):
            return None
        if self.peers is None:
            return "this node is not listening yet"
        try:
            with trio.fail_after(timeout):
                await self.peers.connect(agent, self.address_of(agent))
        except PeerUnreachable as exc:
            return str(exc)
        except trio.TooSlowError:
            return f"no handshake within {timeout:g} s"
        return None

    def new_tx(self, conn: sqlite3.Connection, now_ms: int | None = None) -> Tx:
        """A transaction context on ``conn``: the writer thread's, or the read connection's
        for ephemeral work (the runtime's, not a service's)."""
        return Tx(conn, self.clock.now_ms() if now_ms is None else now_ms, self.own_address,
                  self.pump, self.dispatcher.ephemeral, self.config.max_frame)

    async def transact(self, work: Callable[[Tx], T]) -> T:
        def job(conn: sqlite3.Connection) -> tuple[Tx, T]:
            tx = self.new_tx(conn)
            return tx, work(tx)

        tx, result = await self.db.write(job)
        tx.committed()
        return result

    def transact_ephemeral(self, work: Callable[[Tx], T]) -> T:
        tx = self.db.reading(self.new_tx)
        result = work(tx)
        tx.committed()
        return result

    # -- identity and addresses ----------------------------------------------------------

    @property
    def bound_address(self) -> str:
        """Where this node listens: ``[node] listen``, with the port it got."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def listen_address(self) -> str:
        """Where peers dial this node: ``[node] advertise`` if set, else where it listens."""
        return self.config.advertise or self.bound_address

    def own_address(self, cuid: str | None = None) -> ChipAddress:
        """Our CHIP address as peers should dial it (the advertised address if set)."""
        host, port = parse_hostport(self.listen_address)
        return ChipAddress(agent=self.agent_id, cuid=cuid, host=host, port=port)

    def address_of(self, agent: str) -> str | None:
        """Where to dial ``agent``: the config, or what a ticket, a user or the database
        taught us — never the address a stranger claims in its hello."""
        return self._peer_addresses.get(agent)

    def name_of(self, agent: str) -> str | None:
        """The name ``agent`` goes by here (a config's, or one stored), if it has one."""
        return self._peer_names.get(agent)

    def addressed(self) -> set[str]:
        """The agents this node knows an address of."""
        return set(self._peer_addresses)

    def is_known(self, agent: str) -> bool:
        """A configured peer, the clearing house, a partner in a tally that has opened (and
        may since have closed), or one a ticket or a user taught us."""
        return agent in self._peer_addresses

    def agent_at(self, address: str) -> str | None:
        """The peer agent known to listen at ``address`` (exactly as configured or learned)."""
        return next((agent for agent, where in self._peer_addresses.items() if where == address),
                    None)

    def configure_peers(self) -> list[Unnamed]:
        """Dial the configured peers (and clearing house) at their configured addresses, and
        give them the config's names; returns the peers that lost their name to one of them
        (``agentd.runtime.peer_names``: one name, one peer)."""
        config = self.config
        for peer in config.peers:
            self._configure_address(peer.agent, peer.address)
        configured = {peer.agent for peer in config.peers}
        house = config.clearinghouse
        if house is not None and house.agent not in configured:
            self._configure_address(house.agent, house.address)
            configured.add(house.agent)
        self._configured = frozenset(configured)  # peer_source, asked at each delivery
        unnamed = peer_names.settle(self._peer_names, config)
        for gone in unnamed:
            log.warning("%s", gone)
        if self.db is not None:  # at start, run() stores them once the database is open
            self.db.submit(lambda conn: self._store_configured_peers(conn, unnamed))
        return unnamed

    def _configure_address(self, agent: str, address: str) -> None:
        """Dial ``agent`` at ``address`` from now on: at once if that is a new address (a
        user's fix of a wrong one is not made to wait out the old one's backoff)."""
        if self._peer_addresses.get(agent) != address:
            self._know(agent, address)
            if self.peers is not None:
                self.peers.redial(agent)

    def _know(self, agent: str, address: str) -> None:
        """``agent`` is a peer we know, at ``address``: no longer a stranger."""
        self._peer_addresses[agent] = address
        self.strangers.forget(agent)

    def _store_configured_peers(self, conn: sqlite3.Connection,
                                unnamed: Iterable[Unnamed] = ()) -> None:
        for peer in self.config.peers:
            peer_store.upsert(conn, peer.agent, name=peer.name, address=peer.address)
        for gone in unnamed:
            peer_store.unname(conn, gone.agent)

    def learn_peer(self, agent: str, address: str | None, name: str | None = None) -> None:
        """Remember a peer's address (configured peers keep their configured address), and
        its name unless it has one or another peer has that name."""
        if address and agent not in {p.agent for p in self.config.peers}:
            self.hearsay.drop(agent)
            self._know(agent, address)
        if agent in self._peer_names or name in self._peer_names.values():
            name = None
        if name:
            self._peer_names[agent] = name
        self.db.submit(lambda conn: peer_store.upsert(conn, agent, name=name, address=address))

    def learn_address(self, address: ChipAddress, *, hearsay: bool = False) -> None:
        """Remember where ``address``'s agent listens, unless we know already (what we know
        wins: the config, a ticket, an earlier lesson), or it is us, or it names no host;
        ``hearsay`` (a route's word) only until dials there fail (``Hearsay``)."""
        if (address.agent != self.agent_id and address.host is not None
                and address.agent not in self._peer_addresses):
            where = format_hostport(address.host, address.port)
            (self.hearsay.learn if hearsay else self.learn_peer)(address.agent, where)

    async def forget_peer(self, agent: str) -> None:
        """Drop a peer the operator removed: its address, its name, its stored row."""
        self.unlearn(agent)
        await self.db.write(lambda conn: peer_store.delete(conn, agent))

    def unlearn(self, agent: str) -> None:
        self._peer_addresses.pop(agent, None)
        self._peer_names.pop(agent, None)

    def forget_referee(self, tx: Tx, agent: str) -> None:
        forget_referee(self, tx, agent)

    def peer_source(self, agent: str) -> str:
        """``config`` for a peer (or clearing house) the config file names, else ``learned``
        (from a hello, a ticket or a certificate)."""
        return "config" if agent in self._configured else "learned"

    def describe_peer(self, agent: str, key: str = "agent") -> tuple[str, str]:
        return peer_names.describe(self.config, agent, self._peer_names.get(agent),
                                   agent in self._peer_addresses, key)

    # -- lifecycle -----------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        if problems := own_peer_problems(config, self.agent_id):
            raise UserError("\n".join(problems))
        with datadir.claim(config.data_dir):  # before anything touches the directory
            try:
                database = Database.open(config.db_path, **self.database_options)
                db = await database.__aenter__()
            except DatabaseError as exc:
                raise UserError(str(exc)) from exc
            starting = True
            try:
                self.db = db
                await self._load_peers()
                for warning in referee_warnings(self, config):  # at start as at a reload
                    log.warning("%s", warning)
                async with trio.open_nursery() as nursery:
                    await self._start(nursery)
                    starting = False
                    self.started_monotonic = self.clock.monotonic()
                    log.info("node %s (%s) listening on %s%s%s", config.name, self.agent_id,
                             self.bound_address, f" (advertised as {config.advertise})"
                             if config.advertise else "", "" if self.metrics.address is None
                             else f"; metrics on http://{self.metrics.address}/metrics")
                    task_status.started(self)
                    await self._stop.wait()
                    log.info("stopping")
                    nursery.cancel_scope.cancel()
            except Exception as exc:
                failure = _database_failure(exc) if starting else None
                if failure is None:
                    raise
                raise UserError(f"cannot start: the database {config.db_path} failed: "
                                f"{failure}; fix that (free disk space, restore the file from "
                                "a backup) and start again") from exc
            finally:
                await database.__aexit__(None, None, None)

    async def _start(self, nursery: trio.Nursery) -> None:
        # the ports first: a port in use stops the start before any service has begun work
        # (a repair had asked partners for blocks, and died mid-send with a traceback)
        listeners, metrics = await bind_ports(self.config, self.host, self.port)
        self.port = listeners[0].socket.getsockname()[1]
        self.peers = PeerManager(
            self.key, Hello(self.agent_id, None, self.config.roles), self.counters,
            max_frame=self.config.max_frame, handshake_timeout=self.config.handshake_timeout,
            idle_timeout=self.config.idle_timeout, on_frame=self.dispatcher.on_frame,
            on_channel=self._channel_opened, on_channel_closed=self._channel_closed,
            limits=self.config.limits, is_known=self.is_known, links=self.links,
            describe=self.describe_peer, on_dial=self.hearsay.dialled,
        )
        await nursery.start(self.peers.run)
        await nursery.start(self.pump.run)
        await nursery.start(self.relay.run)
        await nursery.start(self.credit.run)
        await nursery.start(self.evidence.run)
        await nursery.start(trio.serve_listeners, self.peers.handle_inbound, listeners)
        self.peers.hello = Hello(self.agent_id, self.listen_address, self.config.roles)
        await nursery.start(self.rpc.serve, self.config.socket_path)
        if metrics:
            self.metrics_port = await nursery.start(self.metrics.serve, metrics)
        nursery.start_soon(Ticker(MAINTENANCE_INTERVAL, self._maintenance, immediately=True,
                                  task="maintenance (pruning what is kept 30 days)").run)

    async def _maintenance(self) -> bool:
        """At start and hourly: forget what is kept 30 days (``maintenance.prune_kept``)."""
        await prune_kept(self.db, self.clock.now_ms() - INBOX_RETENTION_MS)
        return True

    async def _load_peers(self) -> None:
        names = dict(self._peer_names)  # the config's, set before the database opened

        def job(conn):
            self._store_configured_peers(conn)
            rows = peer_store.all_peers(conn)
            unnamed = peer_names.load(names, [(row["agent"], row["name"]) for row in rows
                                              if row["name"]])
            for gone in unnamed:
                peer_store.unname(conn, gone.agent)
            return rows, unnamed, credit_store.partner_addresses(conn)

        rows, unnamed, partners = await self.db.write(job)
        self._peer_names.update(names)  # with the stored names it took
        for gone in unnamed:
            log.warning("%s", gone)
        for row in rows:
            if row["address"]:
                self._peer_addresses.setdefault(row["agent"], row["address"])
        for agent, (host, port) in partners.items():  # tallies opened before partners were
            if agent != self.agent_id:                # learnt (CreditLedger._know_partner)
                self._peer_addresses.setdefault(agent, format_hostport(host, port))

    def _channel_opened(self, channel: Channel) -> None:
        """Logged at ``info`` for a known peer, ``debug`` for a stranger (a fresh identity
        each connection costs nothing, and two lines each filled the log)."""
        level, note = self._churning(channel)
        event(log, "peer connected", level, agent=channel.agent,
              name=self._peer_names.get(channel.agent), address=channel.hello.listen,
              direction="out" if channel.outbound else "in", **note)
        self._seen(channel)

    def _channel_closed(self, channel: Channel) -> None:
        """Logged with why (``Channel.close_reason``): a channel that closes once a minute
        (the inbound side's idle timeout) is not a peer in trouble, and the line says so."""
        level, note = self._churning(channel)
        event(log, "peer lost", level, agent=channel.agent,
              name=self._peer_names.get(channel.agent), address=channel.hello.listen,
              direction="out" if channel.outbound else "in", reason=channel.close_reason,
              **note)
        self.pump.on_channel_closed(channel)
        self._seen(channel)

    def _churning(self, channel: Channel) -> tuple[int, dict[str, str]]:
        """The level of a channel event's line: ``info`` for a known peer's first
        ``churn.LINES`` a minute (the one at the mark says the rest are at debug)."""
        if not self.is_known(channel.agent):
            return logging.DEBUG, {}
        count = self.churn.event(channel.agent, self.clock.monotonic())
        if count > churn.LINES:
            return logging.DEBUG, {}
        if count < churn.LINES:
            return logging.INFO, {}
        return logging.INFO, {"note": f"{churn.LINES} channel events of this peer in a minute:"
                                      " the rest of it are logged at debug"}

    def _seen(self, channel: Channel) -> None:
        """A peer we know gets its last_seen stored; a stranger only a slot in the bounded
        table (its claimed listen address is never stored, nor dialled)."""
        stamp = self.clock.now_ms()
        if not self.is_known(channel.agent):
            self.strangers.seen(channel.agent, channel.hello.listen, stamp)
        elif self.churn.store_due(channel.agent, self.clock.monotonic()):
            self.db.submit(lambda conn: peer_store.upsert(conn, channel.agent, last_seen=stamp))

    # -- core RPC methods ----------------------------------------------------------------

    async def rpc_getinfo(self) -> dict:
        """The node's identity, address, uptime, connected peers and traffic counters."""
        return node_info.getinfo(self)

    async def rpc_peers(self) -> list[dict]:
        """Configured and learned peers: where each came from (source: config or learned) and
        whether a channel is open now."""
        return node_info.peers(self)

    async def rpc_reload(self) -> dict:
        """Re-read the config file (as SIGHUP does): peers, clearing house, relay rules, lift
        referee and log level apply now; ``restart`` lists changed keys that wait for a
        restart, and ``warnings`` what may not work yet (a ``[lift] referee`` with no known
        address)."""
        try:
            return reload_config(self)
        except UserError as exc:
            raise Reject("BAD_CONFIG", str(exc)) from exc

    async def rpc_stop(self) -> dict:
        """Stop the node cleanly (in-flight database work is committed or rolled back)."""
        self.stop()
        return {}


def _database_failure(exc: BaseException) -> BaseException | None:
    """The failure of the database (``store.is_failure``) that ``exc`` is, or the first of an
    exception group from the start-up's nursery that holds nothing else; else None."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc if is_failure(exc) else None
    matched, rest = exc.split(is_failure)
    while isinstance(matched, BaseExceptionGroup) and rest is None:
        matched = matched.exceptions[0]
    return None if rest is not None else matched
