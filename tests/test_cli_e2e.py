"""End to end: real `agentd` processes from generated configs, driven through the CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from agentd.rpc import call as rpc_call
from tests.clihelpers import AGENTD, add_peer, cli, init, running, wait_until


@pytest.fixture
def three_nodes(tmp_path):
    infos = {name: init(tmp_path, name) for name in ("a", "b", "c")}
    for name, info in infos.items():
        for other, other_info in infos.items():
            if other != name:
                add_peer(info["config"], other, other_info)
    with running(infos) as processes:
        yield infos, processes


def test_init_writes_a_private_key_and_a_config(tmp_path):
    info = init(tmp_path, "n")
    key = Path(info["key"])
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert len(info["agent"]) == 43
    assert info["address"] == f"{info['agent']}@127.0.0.1:{info['port']}"
    again = cli("init", str(tmp_path / "n"), "--name", "n", "--listen", "127.0.0.1:1",
                check=False)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_three_nodes_through_the_cli_then_sigterm(three_nodes):
    infos, processes = three_nodes
    a, b, c = (infos[n]["config"] for n in "abc")
    ping = json.loads(cli("-c", a, "peers.ping", f"agent={infos['b']['agent']}",
                          "count=3").stdout)
    assert len(ping["rtt_ms"]) == 3
    json.loads(cli("-c", b, "peers.ping", f"agent={infos['c']['agent']}").stdout)
    info = json.loads(cli("-c", a, "getinfo").stdout)
    assert info["agent"] == infos["a"]["agent"]
    assert info["counters"]["handshakes_ok"] >= 1
    added = json.loads(cli("-c", c, "users.add", "cuid=carol", "name=Carol C").stdout)
    assert added["address"].startswith(f"carol:{infos['c']['agent']}@")
    users = json.loads(cli("-c", c, "users.list").stdout)
    assert [u["cuid"] for u in users] == ["carol"]
    sock = Path(a).parent / "data" / "agentd.sock"
    methods = {m["method"]: m for m in rpc_call(sock, "help", {})}  # the node's own registry
    assert methods["peers.ping"]["params"] == [
        {"name": "agent", "type": "str", "required": True},
        {"name": "count", "type": "int", "required": False, "default": 1}]
    assert rpc_call(sock, "help", {"method": "stop"})[0]["doc"].startswith("Stop the node")
    assert "``" not in methods["relay.query"]["doc"] and methods["relay.query"]["doc"]
    assert {"tally.invite", "chit.pay", "ch.log", "relay.wait", "stop"} <= set(methods)
    peers = json.loads(cli("-c", a, "peers.list").stdout)
    assert {p["name"]: p["connected"] for p in peers} == {"b": True, "c": False}

    # errors: JSON on stderr, exit 1
    bad = cli("-c", a, "peers.ping", "agent=nope", check=False)
    assert bad.returncode == 1
    assert json.loads(bad.stderr)["code"] == -32602
    unknown = cli("-c", a, "no.such.method", check=False)
    assert unknown.returncode == 1 and "unknown method" in json.loads(unknown.stderr)["message"]
    misspelt = cli("-c", a, "peers.pnig", check=False)
    assert json.loads(misspelt.stderr)["message"].startswith(
        "unknown method 'peers.pnig' (did you mean peers.ping, ")
    typo = cli("-c", a, "peers.ping", "agnet=x", check=False)
    assert "unknown parameter 'agnet' (did you mean agent?); expected: agent, count" in \
        json.loads(typo.stderr)["message"]
    dup = cli("-c", c, "users.add", "cuid=carol", check=False)
    assert json.loads(dup.stderr)["reason"] == "USER_EXISTS"

    for process in processes.values():
        process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    for process in processes.values():
        assert process.wait(timeout=5) == 0
    assert time.monotonic() - started < 2.0
    for info in infos.values():
        assert not (Path(info["config"]).parent / "data" / "agentd.sock").exists()


def test_stop_method_and_sigint(three_nodes):
    infos, processes = three_nodes
    assert json.loads(cli("-c", infos["a"]["config"], "stop").stdout) == {}
    assert processes["a"].wait(timeout=5) == 0
    processes["b"].send_signal(signal.SIGINT)
    assert processes["b"].wait(timeout=5) == 0


def test_ready_is_sent_to_notify_socket(tmp_path):
    info = init(tmp_path, "n")
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(20)
        process = subprocess.Popen([*AGENTD, "run", "-c", info["config"]],
                                   env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
                                   stderr=subprocess.DEVNULL)
        try:
            assert notify.recv(64) == b"READY=1"
            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            process.send_signal(signal.SIGHUP)  # systemd's reload protocol, as Type=notify-reload
            reloading, stamp = notify.recv(128).decode().split("\n")
            assert reloading == "RELOADING=1" and stamp.startswith("MONOTONIC_USEC=")
            assert before <= int(stamp.removeprefix("MONOTONIC_USEC=")) <= \
                time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            assert notify.recv(64) == b"READY=1"
            process.terminate()
            assert notify.recv(64) == b"STOPPING=1"
            assert process.wait(timeout=5) == 0
        finally:
            if process.poll() is None:
                process.kill()


def run_expecting_error(config: Path) -> str:
    result = cli("run", "-c", str(config), check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_bad_config_key_names_the_key_and_file(tmp_path):
    info = init(tmp_path, "n")
    config = Path(info["config"])
    config.write_text(config.read_text().replace("[node]", "[node]\nlisten_port = 3"))
    line = run_expecting_error(config)
    assert "node.listen_port" in line and str(config) in line


def test_bad_value_names_the_key(tmp_path):
    info = init(tmp_path, "n")
    config = Path(info["config"])
    config.write_text(config.read_text().replace('level = "info"', 'level = "loud"'))
    assert "log.level" in run_expecting_error(config)


def test_missing_key_file(tmp_path):
    info = init(tmp_path, "n")
    Path(info["key"]).unlink()
    line = run_expecting_error(Path(info["config"]))
    assert "key file not found" in line and "agent.key" in line


def test_port_in_use(tmp_path):
    info = init(tmp_path, "n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", info["port"]))
        sock.listen()
        line = run_expecting_error(Path(info["config"]))
    assert "address already in use" in line and str(info["port"]) in line


def test_unreadable_data_dir(tmp_path):
    info = init(tmp_path, "n")
    config = Path(info["config"])
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config.write_text(config.read_text().replace(
        'data_dir = "data"', f'data_dir = "{blocker}/data"\nkey = "data/agent.key"'))
    line = run_expecting_error(config)
    assert "data dir" in line and str(blocker) in line


def test_cli_without_a_running_node(tmp_path):
    info = init(tmp_path, "n")
    result = cli("-c", info["config"], "getinfo", check=False)
    assert result.returncode == 2
    assert "no agentd is running" in result.stderr
    config = Path(info["config"])  # the commands that start this node, not placeholders
    assert (f"start it with 'agentd up {config}' (in the background) or "
            f"'agentd run -c {config}'") in result.stderr


def test_sighup_and_reload_apply_new_peers_and_refuse_a_bad_config(tmp_path):
    infos = {name: init(tmp_path, name) for name in ("alice", "bob", "carol")}
    alice = infos["alice"]["config"]
    with running(infos) as processes:
        unknown = cli("-c", alice, "peers.ping", f"agent={infos['bob']['agent']}", check=False)
        assert unknown.returncode == 1  # alice has no address for bob yet
        add_peer(alice, "bob", infos["bob"])
        processes["alice"].send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:  # the signal is handled asynchronously: wait until the ping gets through
            ping = cli("-c", alice, "peers.ping", f"agent={infos['bob']['agent']}", check=False)
            if ping.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert ping.returncode == 0, ping.stderr
        assert processes["alice"].poll() is None

        add_peer(alice, "carol", infos["carol"])
        text = Path(alice).read_text()
        Path(alice).write_text(text.replace('level = "info"', 'level = "debug"')
                               .replace("[node]", '[node]\nmax_frame = 2097152', 1))
        reloaded = json.loads(cli("-c", alice, "reload").stdout)
        assert reloaded == {"applied": ["peers", "log.level"], "restart": ["node.max_frame"],
                            "warnings": []}
        names = {p["name"] for p in json.loads(cli("-c", alice, "peers.list").stdout)}
        assert {"bob", "carol"} <= names

        Path(alice).write_text(Path(alice).read_text() + "\n[node2]\nx = 1\n")
        refused = cli("-c", alice, "reload", check=False)  # the CLI reads only data_dir
        assert refused.returncode == 1
        error = json.loads(refused.stderr)
        assert error["reason"] == "BAD_CONFIG" and "node2" in error["message"]
        processes["alice"].send_signal(signal.SIGHUP)  # logged, and the node keeps running
        log = Path(alice).parent / "agentd.log"
        wait_until(lambda: "reload refused, the running config is kept" in log.read_text(),
                   "the refused reload is logged")
        assert processes["alice"].poll() is None
        rpc_call(Path(alice).parent / "data" / "agentd.sock", "peers.ping",
                 {"agent": infos["carol"]["agent"]})  # the peers reloaded before still work


def test_a_broken_config_still_reaches_the_node_and_text_prints_as_itself(tmp_path):
    info = init(tmp_path, "n")
    config = Path(info["config"])
    with running({"n": info}) as processes:
        refused = cli("-c", str(config), "users.add", "cuid=zoë", check=False)
        assert refused.returncode == 1
        assert "'zoë'" in refused.stderr and "ASCII letters" in refused.stderr
        config.write_text(config.read_text() + "\n[node.oops\n")  # no longer TOML
        reload = cli("-c", str(config), "reload", check=False)
        assert reload.returncode == 1
        error = json.loads(reload.stderr)
        assert error["reason"] == "BAD_CONFIG" and "not valid TOML" in error["message"]
        assert cli("-c", str(config), "stop").returncode == 0
        assert processes["n"].wait(timeout=10) == 0


def test_values_are_text_where_a_parameter_takes_text_only(tmp_path):
    """``cuid=123`` names user "123" and ``memo=2024`` is the memo "2024": JSON would read
    numbers, but those parameters take text; ``limit=500`` stays a number, a value given
    twice is refused, and ``-H`` may follow the method."""
    info = init(tmp_path, "n")
    config = info["config"]
    with running({"n": info}):
        added = json.loads(cli("-c", config, "users.add", "cuid=123", "name=2024").stdout)
        assert added["cuid"] == "123"
        invited = json.loads(cli("-c", config, "tally.invite", "cuid=123", "limit=500").stdout)
        shown = json.loads(cli("-c", config, "tally.show", "cuid=123",
                               f"tally={invited['tally']}").stdout)
        assert shown["limit"] == 500
        listed = cli("-c", config, "users.list", "-H").stdout
        assert listed.split("\n")[0].split() == ["CUID", "NAME", "ADDRESS"]
        assert listed.split("\n")[1].split()[:2] == ["123", "2024"]
        twice = cli("-c", config, "users.add", "cuid=a", "cuid=b", check=False)
        assert twice.returncode == 2 and "cuid is given twice" in twice.stderr
        assert [user["cuid"] for user in json.loads(cli("-c", config, "users.list").stdout)
                ] == ["123"]
        wrong = cli("-c", config, "tally.invite", "cuid=123", "limit=lots", check=False)
        assert wrong.returncode == 1 and "limit must be" in wrong.stderr
        exponent = cli("-c", config, "tally.invite", "cuid=123", "limit=1e3", check=False)
        assert exponent.returncode == 1 and ("limit must be an integer, not 1000.0 (a number "
                                             "with a fraction or an exponent: write 1000)"
                                             ) in exponent.stderr
