"""Nodes on separate hosts: three network namespaces on one bridge, each with its own address
and port space, an ``agentd run`` process in each listening on every interface and
advertising its host's address. Users who have never heard of each other open tallies with
invitation tickets, and alice pays carol through bob: every dial goes to an address a
ticket, a certificate or a route carried, never to 127.0.0.1.

Needs root and iproute2's ``ip netns`` (as in CI); skipped where they are missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clihelpers import AGENTD, cli, wait_until

HOSTS = {"alice": "10.201.0.1", "bob": "10.201.0.2", "carol": "10.201.0.3"}
PORT = 7301  # the same on every host: each namespace has its own ports


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@contextlib.contextmanager
def hosts() -> Iterator[dict[str, str]]:
    """A namespace per user (``eth0`` at its address) and a switch namespace bridging them."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (ip netns) to make separate hosts")
    tag = f"agentd{os.getpid()}"
    spaces = {name: f"{tag}-{name}" for name in HOSTS}
    switch = f"{tag}-switch"
    made: list[str] = []
    try:
        for space in (switch, *spaces.values()):
            try:
                ip("netns", "add", space)
            except RuntimeError as exc:
                pytest.skip(f"cannot make network namespaces here: {exc}")
            made.append(space)
        ip("-n", switch, "link", "add", "br0", "type", "bridge")
        ip("-n", switch, "link", "set", "br0", "up")
        for name, space in spaces.items():
            port = f"to-{name}"
            ip("link", "add", "eth0", "netns", space, "type", "veth", "peer", "name", port,
               "netns", switch)
            ip("-n", switch, "link", "set", port, "master", "br0")
            ip("-n", switch, "link", "set", port, "up")
            ip("-n", space, "addr", "add", f"{HOSTS[name]}/24", "dev", "eth0")
            ip("-n", space, "link", "set", "eth0", "up")
            ip("-n", space, "link", "set", "lo", "up")
        yield spaces
    finally:
        for space in made:
            subprocess.run(["ip", "netns", "del", space], capture_output=True, check=False)


@contextlib.contextmanager
def nodes(tmp_path: Path, spaces: dict[str, str]) -> Iterator[dict[str, dict]]:
    """``agentd init --listen 0.0.0.0:PORT --advertise HOST:PORT`` and ``agentd run`` for
    each user, inside its host's namespace."""
    infos, processes = {}, []
    try:
        for name, space in spaces.items():
            info = json.loads(cli("init", str(tmp_path / name), "--name", name,
                                  "--listen", f"0.0.0.0:{PORT}",
                                  "--advertise", f"{HOSTS[name]}:{PORT}").stdout)
            infos[name] = info
            log = open(tmp_path / f"{name}.log", "ab")  # noqa: SIM115 (closed below)
            processes.append((subprocess.Popen(
                ["ip", "netns", "exec", space, *AGENTD, "run", "-c", info["config"]],
                stderr=log), log))
        for name, info in infos.items():
            socket = Path(info["config"]).parent / "data" / "agentd.sock"
            wait_until(socket.exists, f"{name}'s node to start", timeout=20)
        yield infos
    finally:
        for process, log in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()


def call(info: dict, method: str, **params: object) -> dict:
    args = [f"{key}={value}" for key, value in params.items()]
    return json.loads(cli("-c", info["config"], method, *args).stdout)


def open_tally(inviter: dict, subject: dict, who: tuple[str, str]) -> str:
    invited = call(inviter, "tally.invite", cuid=who[0], limit=100_000)
    call(subject, "tally.request", cuid=who[1], ticket=invited["ticket"])
    tally = invited["tally"]
    assert call(inviter, "tally.wait", cuid=who[0], tally=tally,
                state="P.draft")["state"] == "P.draft"
    call(inviter, "tally.offer", cuid=who[0], tally=tally)
    assert call(subject, "tally.wait", cuid=who[1], tally=tally,
                state="P.offer")["state"] == "P.offer"
    call(subject, "tally.accept", cuid=who[1], tally=tally)
    assert call(inviter, "tally.wait", cuid=who[0], tally=tally,
                state="open")["state"] == "open"
    return tally


def test_users_on_three_hosts_open_tallies_and_pay_through_an_intermediary(tmp_path):
    with hosts() as spaces, nodes(tmp_path, spaces) as node:
        alice, bob, carol = node["alice"], node["bob"], node["carol"]
        for name, info in node.items():
            assert info["address"].endswith(f"@{HOSTS[name]}:{PORT}")
            shown = call(info, "getinfo")  # where it listens, and where peers dial it
            assert (shown["listen"], shown["address"]) == (
                f"0.0.0.0:{PORT}", f"{info['agent']}@{HOSTS[name]}:{PORT}")
            call(info, "users.add", cuid=name)
        ab = open_tally(alice, bob, ("alice", "bob"))
        bc = open_tally(bob, carol, ("bob", "carol"))
        # each side's certificate carries its host's advertised address
        assert call(alice, "tally.show", cuid="alice", tally=ab)["partner"] == (
            f"bob:{bob['agent']}@{HOSTS['bob']}:{PORT}")
        assert call(carol, "tally.show", cuid="carol", tally=bc)["partner"] == (
            f"bob:{bob['agent']}@{HOSTS['bob']}:{PORT}")

        find = f"carol:{carol['agent']}"
        routes = call(alice, "route.find", cuid="alice", find=find, units=700)
        assert [hop["cuid"] for hop in routes[0]["path"]] == ["alice", "bob", "carol"]
        lift = call(alice, "lift.pay", cuid="alice", find=find, units=700, memo="rent")
        assert call(alice, "lift.wait", lift=lift["lift"], timeout_s=20)["state"] == "good"
        for info in (bob, carol):
            wait_until(lambda info=info: call(info, "lift.show", lift=lift["lift"])["state"]
                       == "good", "the decision on every host", timeout=20)

        def balances() -> tuple[int, ...]:
            return (call(alice, "tally.show", cuid="alice", tally=ab)["balance"],
                    call(bob, "tally.show", cuid="bob", tally=ab)["balance"],
                    call(bob, "tally.show", cuid="bob", tally=bc)["balance"],
                    call(carol, "tally.show", cuid="carol", tally=bc)["balance"])

        wait_until(lambda: balances() == (-700, 700, -700, 700), "the lift chits in the chains",
                   timeout=20)
        call(alice, "peers.add", name="carol", agent=carol["agent"],
             address=f"{HOSTS['carol']}:{PORT}")
        assert len(call(alice, "peers.ping", agent=carol["agent"], count=3)["rtt_ms"]) == 3
        known = {peer["agent"]: peer["address"] for peer in call(carol, "peers.list")}
        assert known[bob["agent"]] == f"{HOSTS['bob']}:{PORT}"
