"""``agentd up DIR`` finds the nodes of a directory in both layouts it documents."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from agentd import cli
from agentd.errors import UserError
from agentd.runtime.datadir import claim, in_use
from agentd.up import DEFAULT_DIR, _configs, down, up
from tests.clihelpers import AGENTD, init, start


def test_up_takes_the_toml_files_and_the_agentd_toml_of_each_subdirectory(tmp_path: Path):
    (tmp_path / "alice.toml").write_text("")
    for name in ("n1", "n2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "agentd.toml").write_text("")
    (tmp_path / "n2" / "notes.toml").write_text("")  # only agentd.toml counts in a subdirectory
    found = [path.relative_to(tmp_path).as_posix() for path in _configs(tmp_path)]
    assert found == ["alice.toml", "n1/agentd.toml", "n2/agentd.toml"]


def test_up_names_an_empty_directory_and_what_it_looked_for(tmp_path: Path, monkeypatch):
    with pytest.raises(UserError, match=r"no node configs in it \(\*\.toml, or \*/agentd\.toml"):
        _configs(tmp_path)
    with pytest.raises(UserError) as missing:  # named by the user: no advice about the default
        _configs(tmp_path / "missing")
    assert str(missing.value) == (f"{tmp_path / 'missing'}: no such directory of node configs, "
                                  "nor a config file")
    monkeypatch.chdir(tmp_path)  # agentd up with no DIR, away from the repository
    with pytest.raises(UserError, match=r"^configs/local: no such directory of node configs, "
                       r"nor a config file \(configs/local is the repository's: run from there"):
        _configs(DEFAULT_DIR)


def test_up_names_the_problems_of_every_config_at_once(tmp_path: Path):
    """Two broken configs: up names both files' problems, not the first one's alone (which
    would leave the second to be found after fixing it), and starts nothing."""
    for name in ("a", "b"):
        config = Path(init(tmp_path, name)["config"])
        config.write_text(config.read_text() + f"\n[lift]\nlife_s = {name!r}\n")
    with pytest.raises(UserError) as broken:
        up(tmp_path)
    assert str(broken.value).splitlines() == [
        f"{tmp_path / name / 'agentd.toml'}: lift.life_s must be a number, got {name!r}"
        for name in ("a", "b")]
    assert not list(tmp_path.glob("*/data/agentd.log"))  # nothing was started


def test_down_names_the_nodes_it_stopped_and_those_not_running(tmp_path: Path, capsys):
    a, _ = init(tmp_path, "a"), init(tmp_path, "b")
    config = Path(a["config"])  # named as up shows it: by [node] name, not its directory
    config.write_text(config.read_text().replace('name = "a"', 'name = "alpha"', 1))
    process = start(a["config"])
    try:
        assert down(tmp_path) == 0
        assert not in_use(tmp_path / "a" / "data")  # its database closed: a restore may begin
        assert capsys.readouterr().out == "agentd down: stopped alpha; b was not running\n"
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert down(tmp_path) == 0
    assert capsys.readouterr().out == "agentd down: no node was running\n"


def test_a_data_dir_is_in_use_while_its_lock_is_held(tmp_path: Path):
    assert not in_use(tmp_path / "nothing")
    with claim(tmp_path / "d"):
        assert in_use(tmp_path / "d")
    assert not in_use(tmp_path / "d")


def test_a_node_whose_data_dir_was_edited_while_it_ran_is_not_said_to_be_down(
        tmp_path: Path, capsys):
    """data_dir edited while the node ran: down said "no node was running" and a call said
    to start it (which fails: its port is taken, and init would give it a new key). Each now
    names the process started from that config and the socket of the data_dir it holds; a
    port held by anything else is not blamed on an edit."""
    a = init(tmp_path, "a")
    config = Path(a["config"])
    process = start(a["config"])
    try:
        config.write_text(config.read_text().replace('data_dir = "data"', 'data_dir = "data2"'))
        old = config.parent / "data"
        note = (f"but a node started from this config still runs (pid {process.pid}), with the"
                f" data_dir it had then ({old}): stop it with 'agentd --socket "
                f"{old / 'agentd.sock'} stop', then start it again (move that directory's files "
                "to the new data_dir first, or set data_dir back: they hold the node's key and "
                "database)")
        assert down(tmp_path) == 1
        out, err = capsys.readouterr()
        assert (out, err) == ("", f"agentd down: {config}: no control socket where its data_dir"
                              f" says ({config.parent / 'data2' / 'agentd.sock'}), {note}\n"
                              "agentd down: still running, not stopped: a (see above)\n")
        with pytest.raises(UserError) as caught:
            cli._main(["-c", str(config), "getinfo"])
        assert str(caught.value).startswith("no agentd is running here (no control socket at ")
        assert str(caught.value).endswith(f"; {note}")
        with pytest.raises(UserError) as caught:  # not: 'create a key with agentd init'
            up(tmp_path)
        assert f"; {note}" in str(caught.value)
        assert cli._main(["--socket", str(old / "agentd.sock"), "stop"]) == 0
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
    with pytest.raises(UserError) as caught:  # stopped: nothing to say of it
        cli._main(["-c", str(config), "getinfo"])
    assert "still runs" not in str(caught.value)
    with pytest.raises(UserError) as caught:  # the advice, followed: the key is not lost
        up(tmp_path)
    assert "if data_dir was changed in the config, move the old data_dir's files there" in str(
        caught.value)
    # and nothing was made where the key should be: a data2 made for up's lock and log turned
    # the advised move (mv data data2) into a move of data into it
    assert not (config.parent / "data2").exists()
    assert str(caught.value).endswith("nothing was started")
    (config.parent / "data").rename(config.parent / "data2")
    try:
        assert up(tmp_path) == 0
    finally:
        assert down(tmp_path) == 0


def test_two_concurrent_ups_start_each_node_once(tmp_path: Path):
    """Two ``agentd up DIR`` at once: each node is started by one of them, and the other says
    it was being started elsewhere, not that it started it (nor that it failed)."""
    for name in ("a", "b"):
        init(tmp_path, name)
    ups = [subprocess.Popen([*AGENTD, "up", str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        outputs = [process.communicate(timeout=60) for process in ups]
        assert [process.returncode for process in ups] == [0, 0], outputs
        counts = [re.search(r"\((\d) started, (\d) already running(?:, (\d) being started "
                            r"by another `agentd up`)?\)", out).groups(default="0")
                  for out, _ in outputs]
        started = sorted(int(count[0]) for count in counts)
        assert sum(started) == 2, outputs  # every node once, by one up or the other
        assert all(int(c[0]) + int(c[1]) + int(c[2]) == 2 for c in counts), outputs
        logs = "".join((tmp_path / name / "data" / "agentd.log").read_text()
                       for name in ("a", "b"))
        assert "already running" not in logs  # no second `agentd run` was even tried
    finally:
        assert down(tmp_path) == 0


def test_up_and_down_of_one_config_start_and_stop_that_node_alone(tmp_path: Path, capsys):
    """``agentd up CONFIG`` (what the CLI suggests when a node is not running) starts that
    node, not the others beside it; ``agentd down CONFIG`` stops it."""
    a, b = init(tmp_path, "a"), init(tmp_path, "b")
    assert _configs(Path(a["config"])) == [Path(a["config"])]
    result = subprocess.run([*AGENTD, "up", a["config"]], capture_output=True, text=True,
                            timeout=60)
    try:
        assert result.returncode == 0, result.stderr
        assert "(1 started, 0 already running)" in result.stdout
        assert (Path(a["config"]).parent / "data" / "agentd.sock").exists()
        assert not (Path(b["config"]).parent / "data" / "agentd.sock").exists()
    finally:
        assert down(Path(a["config"])) == 0
    assert capsys.readouterr().out == "agentd down: stopped a\n"


def test_a_node_that_cannot_start_is_named_with_its_reason(tmp_path: Path):
    """Its port taken: up says why (the last line of the node's log), not only the exit code
    and where to look."""
    import socket

    a = init(tmp_path, "a")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", a["port"]))
        taken.listen()
        result = subprocess.run([*AGENTD, "up", a["config"]], capture_output=True, text=True,
                                timeout=60)
    assert result.returncode != 0
    assert re.search(r"node a exited with 2: .*agentd\.toml: node\.listen 127\.0\.0\.1:\d+: cannot "
                     r"listen there: address already in use by another process \(ss -ltnp "
                     r"names it\): stop that or pick another port; see ", result.stderr), (
        result.stderr)
