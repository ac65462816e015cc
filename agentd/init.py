"""``agentd init``: a fresh key and a config that runs as written."""

from __future__ import annotations

import tomllib
from pathlib import Path

import tomlkit

from agentd.config import NETWORK_RULE, address_key, listens_everywhere, name_problem
from agentd.errors import UserError
from agentd.keyfile import write_key
from agentd.up import node_configs
from protocol.keys import ChipAddress, IdentityError, SigningKey, parse_hostport
from protocol.relay_fields import is_network


def config_document(name: str, listen: str, network: str, advertise: str | None = None
                    ) -> tomlkit.TOMLDocument:
    """The config ``agentd init`` writes: built with tomlkit, so any name is quoted right,
    with comments saying what each key is for."""
    doc = tomlkit.document()
    doc.add(tomlkit.comment("agentd node config — see README.md for every key."))
    node = tomlkit.table()
    node.add("name", name)
    node.add("data_dir", "data")
    node["data_dir"].comment("key, database and control socket (relative to this file)")
    node.add("listen", listen)
    if advertise is not None:
        node.add("advertise", advertise)
        node["advertise"].comment("where peers dial us (tickets and certificates carry it)")
    node.add("network", network)
    node.add("roles", tomlkit.array())
    node["roles"].comment('["clearinghouse"] to serve as a clearing house')
    doc.add("node", node)
    doc.add(tomlkit.nl())
    doc.add(tomlkit.comment("peers: agentd -c THIS_FILE peers.add name=bob agent=<id> "
                            "address=HOST:PORT"))
    log = tomlkit.table()
    log.add("level", "info")
    log.add("format", "text")
    log["format"].comment('or "json"')
    doc.add("log", log)
    return doc


def _check_siblings(directory: Path, name: str, listen: str) -> None:
    """Refuse the name or the listen address of a node beside this one: ``agentd up`` of the
    parent directory starts them all, and would list two of one name (told apart by agent id
    alone), or could not bind the second.
    Every-interface addresses are left alone: nodes for several hosts may share one port."""
    ours = None if listens_everywhere(listen) else address_key(listen)
    for other in node_configs(directory.parent):
        if other.parent.resolve() == directory.resolve():
            continue
        try:
            node = tomllib.loads(other.read_text(encoding="utf-8")).get("node", {})
            theirs = node.get("listen")
            clash = ours is not None and isinstance(theirs, str) and address_key(theirs) == ours
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError,
                IdentityError):
            continue
        if node.get("name") == name:
            raise UserError(f"--name {name} is the name of the node in {other} already "
                            f"('agentd up {directory.parent}' would list two nodes of that "
                            "name, which you and their peers could tell apart by agent id "
                            "alone): pick another name")
        if clash:
            raise UserError(f"--listen {listen} is the address of {other} already ('agentd up "
                            f"{directory.parent}' could not start both): pick another port")


def init_node(directory: Path, name: str, listen: str, network: str,
              advertise: str | None = None) -> dict:
    if (problem := name_problem(name)) is not None:
        raise UserError(f"--name {problem}")
    if not is_network(network):
        raise UserError(f"--network {network!r} {NETWORK_RULE}")
    try:
        host, port = parse_hostport(listen)
    except IdentityError as exc:
        raise UserError(f"--listen: {exc}") from exc
    if port == 0:
        raise UserError(f"--listen {listen}: port 0 is a new port at every start, which no "
                        "peer or ticket could keep up with: give a fixed port")
    if advertise is not None:
        try:
            host, port = parse_hostport(advertise)
        except IdentityError as exc:
            raise UserError(f"--advertise: {exc}") from exc
        if listens_everywhere(advertise) or port == 0:
            raise UserError(f"--advertise {advertise} is not an address peers can dial")
    elif listens_everywhere(listen):
        raise UserError(f"--listen {listen} listens on every interface, an address peers "
                        "cannot dial: give --advertise HOST:PORT too, where they should dial")
    config_path = directory / "agentd.toml"
    if config_path.exists():
        raise UserError(f"{config_path}: already exists; refusing to overwrite it")
    existing = next((p for p in (directory, *directory.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UserError(f"{directory}: {existing} is a file, not a directory: give a new (or "
                        "empty) directory for the node")
    _check_siblings(directory, name, listen)
    key = SigningKey.generate()
    try:
        write_key(directory / "data" / "agent.key", key)
        config_path.write_text(tomlkit.dumps(config_document(name, listen, network, advertise)),
                               encoding="utf-8")
    except OSError as exc:  # no permission there, a full disk
        raise UserError(f"{directory}: cannot write the node there: {exc.strerror} "
                        f"({exc.filename})") from exc
    return {
        "config": str(config_path),
        "key": str(directory / "data" / "agent.key"),
        "agent": key.agent_id,
        "address": str(ChipAddress(agent=key.agent_id, host=host, port=port)),
    }
