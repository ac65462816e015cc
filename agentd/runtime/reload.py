"""Re-reading a running node's config (SIGHUP, or the ``reload`` RPC method).

What a node can take while it runs is applied: ``[[peers]]`` (new peers, and new addresses
or names of known ones, dialled from the next connection on), ``[clearinghouse]``, the
``[relay]`` access rules and verification policies, ``[lift] referee`` (the lifts the node
starts from then on name it; a lift in flight keeps the referee its signed record names, which
alone may decide it) and ``[log] level``; evidence not answered yet that is bound to another
agent moves to a new ``[clearinghouse]`` (``agentd/services/clearing/moves.py``). Everything
else — identity, ``listen``,
``data_dir``, roles, limits and timeouts, the log format — is read once at start: a change
there is reported as waiting for a restart, not half applied. A config that does not
validate changes nothing. A value that validates but may not work yet is applied and warned
of (``warnings``, and the log): a ``[lift] referee`` the node knows no address for, as the
node may still learn one — the config is checked by itself, as at start, never against what
the node has learned.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

from agentd.config import Config, load_config
from agentd.errors import UserError

if TYPE_CHECKING:
    from agentd.runtime.node import Node

log = logging.getLogger("agentd.runtime.reload")

LIVE = ("peers", "clearinghouse", "relay_access", "relay_verify", "log_level")
LIVE_LIFT = ("referee",)  # the [lift] keys applied at once (LiftService.referee reads it)
# Config fields by the names a user writes in the file (the rest are [node] keys of their own)
FILE_KEYS = {"peers": "peers", "clearinghouse": "clearinghouse", "relay_access": "relay.access",
             "relay_verify": "relay.verify", "log_level": "log.level", "log_format": "log.format",
             "metrics_listen": "metrics.listen", "key_file": "node.key"}
TABLES = {"limits": "node", "lift": "lift"}  # fields whose own fields are that table's keys


def changed_keys(old: Config, new: Config, names: Iterable[str]) -> list[str]:
    """The config keys, as written in the file, of the fields ``names`` that differ."""
    keys = []
    for name in names:
        before, after = getattr(old, name), getattr(new, name)
        if before == after:
            continue
        if name in TABLES:
            keys += [f"{TABLES[name]}.{field.name}" for field in fields(before)
                     if getattr(before, field.name) != getattr(after, field.name)]
        else:
            keys.append(FILE_KEYS.get(name, f"node.{name}"))
    return keys


def referee_warnings(node: Node, config: Config) -> list[str]:
    """Why ``config``'s ``[lift] referee`` cannot decide this node's lifts yet: the node knows
    no address for it (not a configured peer, not the clearing house, not learned). Not an
    error: the address may come later (a tally, a lift, ``peers.add``), but until it does
    ``lift.pay`` answers ``NO_REFEREE``."""
    agent = config.lift.referee
    if agent is None or agent == node.agent_id or node.address_of(agent) is not None:
        return []
    return [f"lift.referee in {config.path}: the node knows no address for {agent} (not a "
            "[[peers]] entry, not the [clearinghouse], not learned from a tally or a lift): "
            "lift.pay with this referee answers NO_REFEREE until the node learns one; add the "
            "referee to [[peers]] (agentd peers.add)"]


def own_peer_problems(config: Config, agent: str) -> list[str]:
    """A ``[[peers]]`` entry naming this node's own agent (only the node, which holds the key,
    can tell): refused at start and by ``reload``, as ``peers.add`` refuses it."""
    return [f"{config.path}: peers[{i}].agent is this node's own agent: a node is not its "
            "own peer" for i, peer in enumerate(config.peers) if peer.agent == agent]


def reload_config(node: Node) -> dict[str, Any]:
    """Re-read ``node``'s config file and apply what can change while it runs.

    Returns what changed, by the keys' names in the file: ``{applied: [keys], restart:
    [keys], warnings: [text]}``; ``applied`` names ``lift.referee`` when it changed, and when
    a new ``[clearinghouse]`` changes who referees new lifts (``[lift] referee`` unset: the
    clearing house does); ``warnings`` (also logged) names values applied that may not work yet
    (:func:`referee_warnings`); ``unnamed`` (when there are any) the peers whose name the
    config now gives another (``agentd.runtime.peer_names``: ``[{agent, name, now}]``). Raises
    ``UserError`` (nothing applied, and logged) for a config file that is missing or invalid.
    """
    old = node.config
    try:
        new = load_config(old.path)
        if problems := own_peer_problems(new, node.agent_id):
            raise UserError("\n".join(problems))
        rules = node.relay.rules(new)  # a bad [relay] refuses the reload before anything changes
    except UserError as exc:  # its problems one a line: "; " in one line of JSON or log
        problems = "; ".join(str(exc).splitlines())
        log.error("reload refused, the running config is kept: %s", problems)
        raise UserError(problems) from exc
    live = [name for name in LIVE if getattr(new, name) != getattr(old, name)]
    applied = changed_keys(old, new, live)
    lift = replace(old.lift, **{key: getattr(new.lift, key) for key in LIVE_LIFT})
    restart = changed_keys(replace(old, lift=lift), new, [
        field.name for field in fields(Config) if field.name not in LIVE and field.name != "path"])
    node.config = replace(old, lift=lift, **{name: getattr(new, name) for name in LIVE})
    if lift != old.lift or node.config.referee != old.referee:  # or the clearing house's
        applied.append("lift.referee")
    unnamed = node.configure_peers() if "peers" in live or "clearinghouse" in live else []
    if "clearinghouse" in live:
        node.evidence.house_changed()
    if "relay_access" in live or "relay_verify" in live:
        node.relay.use_rules(rules)
    if "log_level" in live:
        logging.getLogger().setLevel(new.log_level.upper())
    log.info("reloaded %s: applied %s%s", old.path, ", ".join(applied) or "nothing new",
             f"; waiting for a restart: {', '.join(restart)}" if restart else "")
    warnings = referee_warnings(node, new)
    for warning in warnings:
        log.warning("%s", warning)
    result: dict[str, Any] = {"applied": applied, "restart": restart, "warnings": warnings}
    if unnamed:
        result["unnamed"] = [gone.to_map() for gone in unnamed]
    return result
