"""Re-reading a running node's config (SIGHUP, or the ``reload`` RPC method).

What a node can take while it runs is applied: ``[[peers]]`` (new peers, and new addresses
or names of known ones, dialled from the next connection on), ``[clearinghouse]``, the
``[relay]`` access rules and verification policies, and ``[log] level``. Everything else —
identity, ``listen``, ``data_dir``, roles, limits and timeouts, the log format — is read
once at start: a change there is reported as waiting for a restart, not half applied. A
config that does not validate changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

from agentd.config import Config, load_config

if TYPE_CHECKING:
    from agentd.runtime.node import Node

log = logging.getLogger("agentd.runtime.reload")

LIVE = ("peers", "clearinghouse", "relay_access", "relay_verify", "log_level")


def reload_config(node: Node) -> dict[str, Any]:
    """Re-read ``node``'s config file and apply what can change while it runs.

    Returns what changed: ``{applied: [keys], restart: [keys]}``. Raises ``UserError``
    (nothing applied) for a config file that is missing or invalid.
    """
    old = node.config
    new = load_config(old.path)
    rules = node.relay.rules(new)  # a bad [relay] refuses the reload before anything changes
    applied = [name for name in LIVE if getattr(new, name) != getattr(old, name)]
    restart = [field.name for field in fields(Config)
               if field.name not in LIVE and field.name != "path"
               and getattr(new, field.name) != getattr(old, field.name)]
    node.config = replace(old, **{name: getattr(new, name) for name in LIVE})
    if "peers" in applied or "clearinghouse" in applied:
        node.configure_peers()
    if "relay_access" in applied or "relay_verify" in applied:
        node.relay.use_rules(rules)
    if "log_level" in applied:
        logging.getLogger().setLevel(new.log_level.upper())
    log.info("reloaded %s: applied %s%s", old.path, ", ".join(applied) or "nothing new",
             f"; waiting for a restart: {', '.join(restart)}" if restart else "")
    return {"applied": applied, "restart": restart}
