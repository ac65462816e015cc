"""``agentd demo``'s nodes: started as ``agentd run`` processes that say READY=1 on a notify
socket of the demo's, and stopped leaving nothing of the demo's own behind."""

from __future__ import annotations

import socket

from agentd.configs_dir import configs_dir
from agentd.demo import prepare, running
from agentd.rpc import call


def test_the_notify_socket_is_removed_at_the_end_and_a_stale_one_is_no_obstacle(tmp_path):
    """A demo left .run/demo/notify.sock behind (make demo, every time); one a killed demo
    left made the next bind fail (address already in use)."""
    workdir = tmp_path / "demo"
    configs = prepare(configs_dir() / "local", workdir, ("alice",), free_ports=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(workdir / "notify.sock"))  # as a demo killed with SIGKILL leaves it
    stale.close()
    with running(configs, workdir) as processes:
        assert call(configs["alice"].socket_path, "getinfo", {})["name"] == "alice"
    assert processes["alice"].returncode == 0
    assert not (workdir / "notify.sock").exists()
    assert not configs["alice"].socket_path.exists()  # the node removes its own
    assert (workdir / "alice" / "agentd.log").exists()  # the demo's data stays to look at
