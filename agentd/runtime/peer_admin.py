"""``peers.add`` and ``peers.remove``: edit the node's config file, then apply it at once.

The operator's change goes where a restart would look for it — the ``[[peers]]`` tables of the
config file — edited with tomlkit so comments and layout stay as written, then applied with the
same code as ``reload``. The edited text must validate as a whole before it is written
(atomically: a temporary file renamed over the old one), so a bad request changes nothing,
and a config already broken by a hand edit is refused (``BAD_CONFIG``) rather than
overwritten.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from agentd.config import (
    address_key,
    listens_everywhere,
    load_config,
    name_problem,
    parse_config,
)
from agentd.errors import UserError
from agentd.rpc import NOT_FOUND, RpcError, invalid_params
from agentd.runtime.context import Reject, Tx
from agentd.runtime.reload import reload_config
from agentd.services.ping import PingService
from protocol.keys import IdentityError, agent_id_problem
from store import credit as credit_store
from store import lifts as lifts_store
from store import outbox as outbox_store
from store import peers as peer_store

if TYPE_CHECKING:
    from agentd.runtime.node import Node


class _NotInFile(Exception):
    """The config file's [[peers]] does not name the agent to remove."""


class PeerAdmin:
    def __init__(self, node: Node) -> None:
        self.node = node
        node.rpc.register("peers.add", self.rpc_add)
        node.rpc.register("peers.remove", self.rpc_remove)

    async def rpc_add(self, name: str, agent: str, address: str) -> dict[str, Any]:
        """Add a peer to the config file's [[peers]] (or change the name and address of one
        already there), keeping the file's comments, and apply it at once."""
        if (problem := name_problem(name)) is not None:
            raise invalid_params(f"name {problem}")
        if (problem := agent_id_problem(agent)) is not None:
            raise invalid_params(f"agent: {problem}")
        if agent == self.node.agent_id:
            raise invalid_params("agent is this node itself")
        try:
            where = address_key(address)
        except (IdentityError, TypeError) as exc:
            raise invalid_params(f"address is not HOST:PORT: {address!r}") from exc
        if listens_everywhere(address) or where[1] == 0:  # as agentd init --advertise refuses
            raise invalid_params(f"address {address} is not an address a node can be dialled "
                                 "at (every interface, or port 0): give where that node listens")
        if (taken := self._taken(where, agent)) is not None:
            raise invalid_params(f"address {address} is {taken}: one address is one node, "
                                 "whose key is one agent; give this peer's own address")

        def edit(peers: Any) -> str:
            for entry in peers:
                if entry.get("name") == name and entry.get("agent") != agent:
                    raise invalid_params(f"name {name!r} is already peer {entry.get('agent')}'s"
                                         ": give this one another name")
                if entry.get("agent") != agent and address_key(entry.get("address")) == where:
                    # one listening port is one node, whose Noise key is one agent: a second
                    # agent there would fail every handshake
                    raise invalid_params(
                        f"address {address} is already that of peer {entry.get('name')!r} (agent "
                        f"{entry.get('agent')}): one address is one node. If that node's agent "
                        f"changed, peers.remove agent={entry.get('agent')} first; else give "
                        "this peer's own address")
            for entry in peers:
                if entry.get("agent") == agent:
                    if (entry.get("name"), entry.get("address")) == (name, address):
                        return "unchanged"  # as it was: the file is written again, the same
                    entry["name"], entry["address"] = name, address
                    return "updated"
            entry = tomlkit.inline_table() if isinstance(peers, tomlkit.items.Array) \
                else tomlkit.table()
            entry.update({"name": name, "agent": agent, "address": address})
            peers.append(entry)
            return "added"

        return self._apply(edit) | {"name": name, "agent": agent, "address": address}

    def _taken(self, where: tuple[str, int], agent: str) -> str | None:
        """Whose address ``where`` is outside ``[[peers]]``: this node's own, or its clearing
        house's (when ``agent`` is another)."""
        config = self.node.config
        for key, mine in (("listen", self.node.bound_address), ("advertise", config.advertise)):
            if mine is not None and address_key(mine) == where:
                return f"this node's own ([node] {key})"
        house = config.clearinghouse
        if house is not None and house.agent != agent and address_key(house.address) == where:
            return f"that of the clearing house (agent {house.agent}, [clearinghouse])"
        return None

    async def rpc_remove(self, agent: str) -> dict[str, Any]:
        """Remove a peer from the config file's [[peers]] (keeping the file's comments), or
        forget a learned one, and forget its address now (a connection open to it closes when
        idle) — unless the node still needs that address (its clearing house, its [lift]
        referee, or the node of a partner in a tally that is not void): then a configured
        peer leaves the file but its address stays, listed as learned (``kept`` says why),
        and a learned one is refused (``PEER_IN_USE``)."""
        if (problem := agent_id_problem(agent)) is not None:
            raise invalid_params(f"agent: {problem}")

        def edit(peers: Any) -> str:
            keep = [i for i, entry in enumerate(peers) if entry.get("agent") != agent]
            if len(keep) == len(peers):
                raise _NotInFile
            for index in reversed(range(len(peers))):
                if index not in keep:
                    del peers[index]
            return "removed"

        try:
            result = self._apply(edit) | {"agent": agent}
        except _NotInFile:
            return await self._forget_learned(agent)
        why = self._needed(agent)
        if why is not None:
            return result | {"kept": f"its address stays (learned): {why}"}
        await self._forget(agent)
        return result

    async def _forget_learned(self, agent: str) -> dict[str, Any]:
        node, path = self.node, self.node.config.path
        stored = node.db.reading(lambda conn: peer_store.address_of(conn, agent))
        if node.address_of(agent) is None and stored is None:
            raise RpcError(NOT_FOUND, f"{agent} is not in [[peers]] of {path}, nor a peer this "
                           "node learned an address of (peers.list)", "UNKNOWN_PEER")
        why = self._needed(agent)
        if why is not None:
            source = (f"named in {path} outside [[peers]]" if node.peer_source(agent) ==
                      "config" else f"not in [[peers]] of {path} but learned")
            raise Reject("PEER_IN_USE", f"{agent} is {source}, and this node still needs its "
                         f"address: {why}")
        await self._forget(agent)
        return {"change": "forgotten", "config": str(path), "applied": [], "agent": agent}

    async def _forget(self, agent: str) -> None:
        """Forget ``agent``'s address, and withdraw the pings queued to it: one to a dead
        address kept the node dialling the removed peer until it expired (~5 minutes)."""
        await self.node.forget_peer(agent)

        def work(tx: Tx) -> None:
            for message_id in outbox_store.pending_ids_to(tx.conn, agent, (PingService.target,)):
                tx.withdraw(message_id, "its peer was removed (peers.remove) before it was "
                            "delivered")

        await self.node.transact(work)

    def _needed(self, agent: str) -> str | None:
        return self.node.db.reading(lambda conn: needed(self.node, conn, agent))

    def _apply(self, edit) -> dict[str, Any]:
        node = self.node
        path = Path(node.config.path)
        try:
            load_config(path)  # a file broken by hand is the operator's to fix, not ours
            document = tomlkit.parse(path.read_text(encoding="utf-8"))
        except (UserError, TOMLKitError) as exc:
            raise Reject("BAD_CONFIG", f"{exc}; fix the file, then try again") from exc
        if "peers" not in document:
            document.add(tomlkit.nl())
            document.add("peers", tomlkit.aot())
        change = edit(document["peers"])
        if not document["peers"]:  # tomlkit writes an emptied [[peers]] as "peers = []",
            del document["peers"]  # and the next add as an inline array, at the file's top
        text = tomlkit.dumps(document)
        try:
            parse_config(tomlkit.parse(text).unwrap(), path)
        except UserError as exc:
            raise invalid_params(str(exc)) from exc
        _write_atomically(path, text)
        applied = reload_config(node)
        return {"change": change, "config": str(path), "applied": applied["applied"],
                **({"unnamed": applied["unnamed"]} if "unnamed" in applied else {})}


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so a crash leaves the old file or the new, never half;
    the file keeps its permissions."""
    mode = path.stat().st_mode & 0o7777
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def needed(node: Node, conn: sqlite3.Connection, agent: str) -> str | None:
    """Why the node still needs to know where ``agent`` listens, or None. It needs the
    nodes it dials on its own for what it keeps: its clearing house (evidence), its
    ``[lift] referee`` (every lift it starts), and the partner's node of a tally of ours
    that is not void (chain and tally messages; a start learns it again from the tally's
    certificate anyway). Not needed: whatever else a hello, a ticket or a lift taught it —
    a message that names its own address (a lift's query to its referee, a reply) still
    goes there, and a peer that dials us is still answered."""
    config = node.config
    if config.clearinghouse is not None and config.clearinghouse.agent == agent:
        return (f"it is the clearing house ([clearinghouse] agent in {config.path}); "
                "to stop using it, change that section and reload")
    if config.lift.referee == agent:
        return (f"it is the lift referee ([lift] referee in {config.path}); to stop "
                "using it, change that and reload")
    tallies = credit_store.tallies_with(conn, agent)
    if tallies:
        return (f"it holds the partner's side of {tallies} of our tallies (tally.list), "
                "whose messages go to its node for as long as they are kept")
    return None


def forget_referee(node: Node, tx: Tx, agent: str) -> None:
    """Forget where a lift's referee listens once no lift pending here names it and nothing
    else needs it (:func:`needed`; never a peer the config names): a partner's promises,
    each naming a made-up referee that decides at once, made the node keep every one as a
    known peer, for ever (a row each, and a known peer passes the limits a stranger meets).
    Its messages still about a lift carry their own address."""
    if (not node.is_known(agent) or node.peer_source(agent) == "config"
            or lifts_store.refereed_pending(tx.conn, agent)
            or needed(node, tx.conn, agent) is not None):
        return
    peer_store.delete(tx.conn, agent)
    tx.after_commit(lambda: node.unlearn(agent))
