"""``agentd init``: a fresh key and a config that runs as written."""

from __future__ import annotations

from pathlib import Path

from agentd.errors import UserError
from agentd.keyfile import write_key
from protocol.keys import ChipAddress, IdentityError, SigningKey, parse_hostport

CONFIG_TEMPLATE = """\
# agentd node config — see README.md for every key.
[node]
name = "{name}"
data_dir = "data"          # key, database and control socket (relative to this file)
listen = "{listen}"
network = "{network}"
roles = []                 # ["clearinghouse"] to serve as a clearing house

# [[peers]]
# name = "bob"
# agent = "<bob's agent id>"
# address = "127.0.0.1:7102"

[log]
level = "info"
format = "text"            # or "json"
"""


def init_node(directory: Path, name: str, listen: str, network: str) -> dict:
    try:
        host, port = parse_hostport(listen)
    except IdentityError as exc:
        raise UserError(f"--listen: {exc}") from exc
    config_path = directory / "agentd.toml"
    if config_path.exists():
        raise UserError(f"{config_path}: already exists; refusing to overwrite it")
    key = SigningKey.generate()
    write_key(directory / "data" / "agent.key", key)
    config_path.write_text(CONFIG_TEMPLATE.format(name=name, listen=listen, network=network))
    return {
        "config": str(config_path),
        "key": str(directory / "data" / "agent.key"),
        "agent": key.agent_id,
        "address": str(ChipAddress(agent=key.agent_id, host=host, port=port)),
    }
