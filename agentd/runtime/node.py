"""A node: one identity, one database, one nursery that owns every task it runs.

``Node.run`` opens the database, starts the peer manager, the outbox pump, the TCP listener
and the control socket — each with ``nursery.start`` so it is ready before the next — then
reports itself started and waits for ``stop()``. Cancelling it (SIGINT, SIGTERM, the ``stop``
method, a test) unwinds all of it; the database context commits or rolls back in-flight jobs
and joins the writer thread before ``run`` returns.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sqlite3
import time
from typing import Any

import trio

from agentd import __version__
from agentd.config import Config
from agentd.errors import UserError
from agentd.rpc import RpcServer
from agentd.runtime.clock import now_ms
from agentd.runtime.context import Reject
from agentd.runtime.counters import Counters
from agentd.runtime.dispatch import Dispatcher
from agentd.runtime.outbox import OutboxPump
from agentd.runtime.peers import PeerManager
from agentd.runtime.reload import reload_config
from agentd.runtime.replies import Replies
from agentd.runtime.timers import Ticker
from agentd.runtime.transport import Channel, Hello
from agentd.services.clearing.client import Evidence
from agentd.services.clearing.house import ClearingService
from agentd.services.credit.service import Credit
from agentd.services.ping import PingService
from agentd.services.relay.service import RelayService
from agentd.services.users import Users
from protocol.keys import ChipAddress, SigningKey, parse_hostport
from store import Database, DatabaseError, inbox
from store import peers as peer_store

log = logging.getLogger("agentd.runtime.node")
INBOX_RETENTION_MS = 30 * 24 * 3600 * 1000  # dedup window: far longer than any retry gap
MAINTENANCE_INTERVAL = 3600.0


class Node:
    def __init__(self, config: Config, key: SigningKey, *,
                 database: dict[str, Any] | None = None) -> None:
        """``database``: options for ``Database.open`` (``agentd sim`` shares one writer
        thread between its nodes and relaxes ``synchronous``)."""
        self.config = config
        self.database_options = database or {}
        self.key = key
        self.agent_id = key.agent_id
        self.counters = Counters()
        self.rpc = RpcServer()
        self.dispatcher = Dispatcher(self)
        self.pump = OutboxPump(self)
        self.replies = Replies()
        self.db: Database = None  # type: ignore[assignment]  # set in run()
        self.host, self.port = config.listen_host_port
        self.started_monotonic = 0.0
        self._stop = trio.Event()
        self._peer_addresses: dict[str, str] = {}
        self._peer_names: dict[str, str] = {}
        self.configure_peers()
        self.peers: PeerManager = None  # type: ignore[assignment]  # set in run()
        self._install_services()
        for name, method in (("getinfo", self.rpc_getinfo), ("peers.list", self.rpc_peers),
                             ("reload", self.rpc_reload), ("stop", self.rpc_stop)):
            self.rpc.register(name, method)

    now_ms = staticmethod(now_ms)

    def _install_services(self) -> None:
        """Each service registers its message target and its RPC methods. One line each."""
        self.dispatcher.register(PingService(self))
        self.dispatcher.register(ClearingService(self))
        self.evidence = Evidence(self)
        self.relay = RelayService(self)
        self.dispatcher.register(self.relay)
        self.credit = Credit(self)  # the tally and chit targets and their RPC methods
        Users(self)

    # -- identity and addresses ----------------------------------------------------------

    @property
    def listen_address(self) -> str:
        if self.config.advertise:
            return self.config.advertise
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def own_address(self, cuid: str | None = None) -> ChipAddress:
        """Our CHIP address as peers should dial it (the advertised address if set)."""
        host, port = parse_hostport(self.listen_address)
        return ChipAddress(agent=self.agent_id, cuid=cuid, host=host, port=port)

    def address_of(self, agent: str) -> str | None:
        """Where to dial ``agent``: the config first, then what a hello or ticket taught us."""
        return self._peer_addresses.get(agent)

    def agent_at(self, address: str) -> str | None:
        """The peer agent known to listen at ``address`` (exactly as configured or learned)."""
        return next((agent for agent, where in self._peer_addresses.items() if where == address),
                    None)

    def configure_peers(self) -> None:
        """Dial the configured peers (and clearing house) at their configured addresses."""
        config = self.config
        for peer in config.peers:
            self._peer_addresses[peer.agent] = peer.address
            self._peer_names[peer.agent] = peer.name
        if config.clearinghouse is not None:
            house = config.clearinghouse
            if house.agent not in {peer.agent for peer in config.peers}:
                self._peer_addresses[house.agent] = house.address
            self._peer_names.setdefault(house.agent, "clearinghouse")
        if self.db is not None:  # at start, run() stores them once the database is open
            self.db.submit(self._store_configured_peers)

    def _store_configured_peers(self, conn: sqlite3.Connection) -> None:
        for peer in self.config.peers:
            peer_store.upsert(conn, peer.agent, name=peer.name, address=peer.address)

    def learn_peer(self, agent: str, address: str | None, name: str | None = None) -> None:
        """Remember a peer's address (configured peers keep their configured address)."""
        if address and agent not in {p.agent for p in self.config.peers}:
            self._peer_addresses[agent] = address
        if name:
            self._peer_names.setdefault(agent, name)
        self.db.submit(lambda conn: peer_store.upsert(conn, agent, name=name, address=address))

    # -- lifecycle -----------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        try:
            config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise UserError(f"{config.data_dir}: cannot create data dir: {exc.strerror}") from exc
        if not os.access(config.data_dir, os.R_OK | os.W_OK | os.X_OK):
            raise UserError(f"{config.data_dir}: data dir is not readable and writable")
        try:
            database = Database.open(config.db_path, **self.database_options)
            db = await database.__aenter__()
        except DatabaseError as exc:
            raise UserError(str(exc)) from exc
        try:
            self.db = db
            await self._load_peers()
            async with trio.open_nursery() as nursery:
                await self._start(nursery)
                self.started_monotonic = time.monotonic()
                log.info("node %s (%s) listening on %s", config.name, self.agent_id,
                         self.listen_address)
                task_status.started(self)
                await self._stop.wait()
                log.info("stopping")
                nursery.cancel_scope.cancel()
        finally:
            await database.__aexit__(None, None, None)

    async def _start(self, nursery: trio.Nursery) -> None:
        self.peers = PeerManager(
            self.key, Hello(self.agent_id, None, self.config.roles), self.counters,
            max_frame=self.config.max_frame, handshake_timeout=self.config.handshake_timeout,
            idle_timeout=self.config.idle_timeout, on_frame=self.dispatcher.on_frame,
            on_channel=self._channel_opened, on_channel_closed=self._channel_closed,
        )
        await nursery.start(self.peers.run)
        await nursery.start(self.pump.run)
        await nursery.start(self.relay.run)
        await nursery.start(self.credit.run)
        await nursery.start(self.evidence.run)
        try:
            listeners = await nursery.start(functools.partial(
                trio.serve_tcp, self.peers.handle_inbound, self.port, host=self.host))
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise UserError(f"cannot listen on {self.config.listen}: {reason}") from exc
        self.port = listeners[0].socket.getsockname()[1]
        self.peers.hello = Hello(self.agent_id, self.listen_address, self.config.roles)
        await nursery.start(self.rpc.serve, self.config.socket_path)
        nursery.start_soon(Ticker(MAINTENANCE_INTERVAL, self._maintenance, immediately=True).run)

    async def _maintenance(self) -> bool:
        """At start and hourly: forget processed-message ids older than the dedup window."""
        cutoff = now_ms() - INBOX_RETENTION_MS
        pruned = await self.db.write(lambda conn: inbox.prune(conn, cutoff))
        if pruned:
            log.info("pruned %d inbox ids older than 30 days", pruned)
        return True

    async def _load_peers(self) -> None:
        def job(conn):
            self._store_configured_peers(conn)
            return peer_store.all_peers(conn)

        for row in await self.db.write(job):
            if row["address"]:
                self._peer_addresses.setdefault(row["agent"], row["address"])
            if row["name"]:
                self._peer_names.setdefault(row["agent"], row["name"])

    def _channel_opened(self, channel: Channel) -> None:
        self.learn_peer(channel.agent, channel.hello.listen)
        stamp = now_ms()
        self.db.submit(lambda conn: peer_store.upsert(conn, channel.agent, last_seen=stamp))

    def _channel_closed(self, channel: Channel) -> None:
        self.pump.on_channel_closed(channel)
        stamp = now_ms()
        self.db.submit(lambda conn: peer_store.upsert(conn, channel.agent, last_seen=stamp))

    # -- core RPC methods ----------------------------------------------------------------

    async def rpc_getinfo(self) -> dict:
        """The node's identity, address, uptime, connected peers and traffic counters."""
        return {
            "name": self.config.name,
            "agent": self.agent_id,
            "address": str(self.own_address()),
            "listen": self.listen_address,
            "network": self.config.network,
            "roles": list(self.config.roles),
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started_monotonic, 3),
            "peers": len(self.peers.channels),
            "counters": {**self.counters.to_map(), "outbox_depth": self.pump.depth,
                         "db_commits": self.db.commits, "db_jobs": self.db.jobs},
        }

    async def rpc_peers(self) -> list[dict]:
        """Configured and learned peers, with whether a channel is open now."""
        rows = {row["agent"]: row for row in self.db.read(
            "SELECT agent, name, address, last_seen FROM peers")}
        agents = set(rows) | set(self._peer_addresses) | set(self.peers.channels)
        out = []
        for agent in sorted(agents, key=lambda a: (self._peer_names.get(a) or "~", a)):
            row = rows.get(agent)
            connected = self.peers.connected(agent)
            out.append({
                "name": self._peer_names.get(agent) or (row["name"] if row else None),
                "agent": agent,
                "address": self._peer_addresses.get(agent) or (row["address"] if row else None),
                "connected": connected,
                "last_seen": now_ms() if connected else (row["last_seen"] if row else None),
            })
        return out

    async def rpc_reload(self) -> dict:
        """Re-read the config file (as SIGHUP does): peers, clearing house, relay rules and
        log level apply now; ``restart`` lists changed keys that wait for a restart."""
        try:
            return reload_config(self)
        except UserError as exc:
            raise Reject("BAD_CONFIG", str(exc)) from exc

    async def rpc_stop(self) -> dict:
        """Stop the node cleanly (in-flight database work is committed or rolled back)."""
        self.stop()
        return {}
