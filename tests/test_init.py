"""``agentd init`` writes its config with a TOML library: any name reads back as given."""

from __future__ import annotations

from agentd.config import load_config
from agentd.init import init_node


def test_a_name_with_quotes_and_backslashes_round_trips(tmp_path):
    name = 'a"b\\c ë\n[x]'
    made = init_node(tmp_path / "n", name, "127.0.0.1:7301", 'net"work')
    config = load_config(made["config"])
    assert (config.name, config.network, config.listen) == (name, 'net"work', "127.0.0.1:7301")
    assert config.key_file == tmp_path / "n" / "data" / "agent.key"
    text = (tmp_path / "n" / "agentd.toml").read_text(encoding="utf-8")
    assert "# agentd node config" in text and "peers.add" in text
