"""``agentd demo``: the nodes of ``configs/local`` (alice, bob, carol, their clearing house).

The demo copies each config (and its development key, with mode 0600) into a fresh
``.run/demo/NAME`` directory, starts ``agentd run`` for each with ``$NOTIFY_SOCKET`` pointing
at a socket of its own so it knows when each node is listening, drives them through their
control sockets exactly as ``agentd -c CONFIG METHOD`` would, prints a summary, stops them
with the ``stop`` method and makes sure no process is left behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import tomlkit

from agentd.completion import DIRECTORY
from agentd.config import Config, load_config
from agentd.configs_dir import configs_dir
from agentd.demo_lifts import lifts_demo
from agentd.demo_steps import until
from agentd.errors import UserError
from agentd.localnodes import free_ports as pick_free_ports
from agentd.rpc import RpcError, call

NAMES = ("alice", "bob", "carol")
NODES = (*NAMES, "clearinghouse")
EVIDENCE_PID = "demo-deal-1"
READY_TIMEOUT = 20.0


def _repo_configs() -> Path:
    return configs_dir() / "local"


def prepare(configs: Path, workdir: Path, names: tuple[str, ...], *,
            free_ports: bool = False) -> dict[str, Config]:
    """Copy each node's config and key into ``workdir/NAME`` with a fresh data dir (edited
    with tomlkit, comments kept); with ``free_ports`` every node listens on a port that was
    free a moment ago instead of its configured one, and every address of it moves along."""
    shutil.rmtree(workdir, ignore_errors=True)
    documents = {name: tomlkit.parse((configs / f"{name}.toml").read_text()) for name in names}
    moved: dict[str, str] = {}
    if free_ports:
        ports = pick_free_ports(len(names))
        moved = {str(doc["node"]["listen"]): f"127.0.0.1:{port}"
                 for doc, port in zip(documents.values(), ports, strict=True)}
    prepared = {}
    for name, doc in documents.items():
        node_dir = workdir / name
        (node_dir / "data").mkdir(parents=True, mode=0o700)
        key = node_dir / "data" / "agent.key"
        shutil.copyfile(configs / str(doc["node"]["key"]), key)
        key.chmod(0o600)
        doc["node"]["data_dir"], doc["node"]["key"] = "data", "data/agent.key"
        for table in (doc["node"], *doc.get("peers", []), doc.get("clearinghouse", {})):
            for field in ("listen", "address"):
                if str(table.get(field)) in moved:
                    table[field] = moved[str(table[field])]
        (node_dir / "agentd.toml").write_text(tomlkit.dumps(doc))
        prepared[name] = load_config(node_dir / "agentd.toml")
    return prepared


@contextmanager
def running(configs: dict[str, Config], workdir: Path) -> Iterator[dict[str, subprocess.Popen]]:
    """Start one ``agentd run`` per config; wait for READY=1 from each; always clean up, the
    notify socket too (one a killed demo left is replaced: nothing else reads it)."""
    notify_path = workdir / "notify.sock"
    notify_path.unlink(missing_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.5)
    processes: dict[str, subprocess.Popen] = {}
    try:
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
        for name, config in configs.items():
            log = open(workdir / name / "agentd.log", "wb")  # noqa: SIM115 - owned by the child
            processes[name] = subprocess.Popen(
                [sys.executable, "-m", "agentd", "run", "-c", str(config.path)],
                stdout=log, stderr=subprocess.STDOUT, env=env)
            log.close()
        ready = 0
        deadline = time.monotonic() + READY_TIMEOUT
        while ready < len(processes):
            for name, process in processes.items():
                if process.poll() is not None:
                    log_tail = (workdir / name / "agentd.log").read_text()[-2000:]
                    hint = ("\nits port is taken (nodes from 'agentd up' still running? "
                            "'agentd down' stops them), or run 'agentd demo --free-ports'"
                            if "address already in use" in log_tail else "")
                    raise UserError(f"node {name} exited with {process.returncode}:\n"
                                    f"{log_tail}{hint}")
            if time.monotonic() > deadline:
                raise UserError(f"nodes not ready within {READY_TIMEOUT:g} s")
            try:
                if notify.recv(256) == b"READY=1":
                    ready += 1
            except TimeoutError:
                continue
        yield processes
    finally:
        for name, process in processes.items():
            if process.poll() is None:
                try:
                    call(configs[name].socket_path, "stop", {}, timeout=5)
                except Exception:
                    process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        notify.close()
        notify_path.unlink(missing_ok=True)


def evidence_demo(configs: dict[str, Config], infos: dict[str, dict]) -> None:
    """The clearing house: alice opens a process owned by alice and bob, both log to it (bob
    also three lines in one call, which one signature covers), carol is refused, and alice's
    and bob's receipts verify (signatures against the stored JWKS, and the hash chain
    re-walked from the clearing house)."""
    sockets = {name: config.socket_path for name, config in configs.items()}
    print("\nevidence at the clearing house (signed receipts, one hash chain per process):")
    call(sockets["alice"], "ch.create_process",
         {"pid": EVIDENCE_PID, "owners": [infos["bob"]["agent"]]})
    print(f"  alice created process {EVIDENCE_PID!r} owned by alice and bob")
    for name, text in (("alice", "offer: 10 widgets"), ("bob", "accepted"),
                       ("alice", "delivered")):
        logged = call(sockets[name], "ch.log", {"pid": EVIDENCE_PID, "payload": text})
        print(f"  {name:>5} logged {text!r:21} -> seq {logged['seq']}, document "
              f"{logged['document_id'][:12]}…")
    lines = ["invoice 1", "invoice 2", "invoice 3"]
    many = call(sockets["bob"], "ch.log_many",
                {"entries": [{"pid": EVIDENCE_PID, "payload": line} for line in lines]})
    signatures = {result["receipt"].split("~")[0] for result in many}
    print(f"    bob logged {len(lines)} lines in one ch.log_many call -> seq "
          f"{', '.join(str(r['seq']) for r in many)}, {len(signatures)} signature for all "
          f"{len(many)} receipts")
    try:
        call(sockets["carol"], "ch.log", {"pid": EVIDENCE_PID, "payload": "me too"})
    except RpcError as exc:
        print(f"  carol refused, as she must be: {exc.message}")
    else:
        raise UserError("the clearing house let carol log to a process she does not own")
    for name in ("alice", "bob"):
        receipts = call(sockets[name], "receipts.list", {"pid": EVIDENCE_PID})
        result = call(sockets[name], "receipts.verify", {"chain": True})
        held = ", ".join(f"seq {r['seq']} ({r['document_id'][:8]}…)" for r in receipts)
        verdict = "all verify" if result["ok"] else f"FAILED: {result['failures']}"
        print(f"  {name:>5} holds {len(receipts)} receipt(s): {held} — {verdict}"
              f" ({result['checked']} checked, {result['chains']} chain re-walked)")
        if not result["ok"]:
            raise UserError(f"{name}'s receipts do not verify")


def credit_demo(configs: dict[str, Config], infos: dict[str, dict]) -> str:
    """Alice and Bob open a tally with an invitation ticket (invite, request, offer, accept),
    pay each other both ways and settle an invoice; both holders must end with the same chain
    and opposite balances. Returns the tally's uuid."""
    alice, bob = configs["alice"].socket_path, configs["bob"].socket_path
    print("\ncredit: a tally between alice (stock) and bob (foil), chits both ways:")
    for name, sock in (("alice", alice), ("bob", bob)):
        call(sock, "users.add", {"cuid": name})
    invited = call(alice, "tally.invite", {"cuid": "alice", "limit": 100_000, "memo": "demo"})
    tally = invited["tally"]
    print(f"  alice invites: tally {tally}, ticket {invited['ticket'][:28]}… "
          f"({len(invited['ticket'])} characters, handed to bob out of band)")
    requested = call(bob, "tally.request", {"cuid": "bob", "ticket": invited["ticket"]})
    print(f"  bob requests it with the ticket: {requested['state']}")

    def state(sock, cuid: str) -> str | None:
        held = call(sock, "tally.list", {"cuid": cuid})
        return next((t["state"] for t in held if t["tally"] == tally), None)

    call(alice, "tally.offer", {"cuid": "alice", "tally": tally})
    until("bob receiving alice's offer", lambda: state(bob, "bob") == "P.offer")
    print("  alice signs and offers it; bob's copy is P.offer")
    call(bob, "tally.accept", {"cuid": "bob", "tally": tally})
    until("both sides opening the tally",
           lambda: state(alice, "alice") == state(bob, "bob") == "open")
    print("  bob signs and accepts: open on both sides, block 0 of the chain is the tally")
    for payer, sock, units, memo in (("alice", alice, 2000, "seeds"),
                                     ("bob", bob, 3500, "vegetables")):
        paid = call(sock, "chit.pay", {"cuid": payer, "tally": tally, "units": units,
                                       "memo": memo})
        print(f"  {payer:>5} pays {units:>5} mCHIP ({memo}): chit {paid['chit'][:8]}… "
              f"{paid['state']}")
    bill = call(alice, "chit.invoice", {"cuid": "alice", "tally": tally, "units": 1250,
                                        "memo": "delivery"})
    until("bob receiving the invoice", lambda: any(
        c["chit"] == bill["chit"] for c in call(bob, "chit.list", {"cuid": "bob", "tally": tally})))
    accepted = call(bob, "chit.accept", {"cuid": "bob", "chit": bill["chit"]})
    print(f"  alice invoices 1250 mCHIP (delivery); bob accepts: {accepted['state']}")

    def shown() -> tuple[dict, dict]:
        return (call(alice, "tally.show", {"cuid": "alice", "tally": tally}),
                call(bob, "tally.show", {"cuid": "bob", "tally": tally}))

    until("both chains to be confirmed", lambda: all(
        s["chain"]["index"] == s["chain"]["confirmed"] == 3 for s in shown()))
    mine, theirs = shown()
    agree = mine["chain"] == theirs["chain"] and mine["balance"] == -theirs["balance"]
    for who, held in (("alice", mine), ("bob", theirs)):
        print(f"  {who:>5} ({held['side']}): balance {held['balance']:>+6} mCHIP, chain index "
              f"{held['chain']['index']}, head {held['chain']['hash'][:16]}…")
    print(f"  chains {'agree' if agree else 'DISAGREE'} (same index and head hash, opposite "
          "balances; positive = the partner owes you)")
    if not agree:
        raise UserError("alice's and bob's chains disagree")
    return tally


def tally_evidence_demo(configs: dict[str, Config], infos: dict[str, dict], tally: str
                        ) -> None:
    """The evidence both partners logged on their own as the tally opened and its chits
    became good, each under its own namespace (``AGENT/TALLY``): each holds the clearing
    house's receipts, which verify offline."""
    print("\nevidence logged automatically for the tally (opened, chits good), each node under"
          " its own pid, AGENT/TALLY:")
    for name in ("alice", "bob"):
        sock, pid = configs[name].socket_path, f"{infos[name]['agent']}/{tally}"
        until(f"{name}'s tally receipts", lambda sock=sock, pid=pid: len(
            call(sock, "receipts.list", {"pid": pid})) >= 1 and call(
            sock, "receipts.verify", {})["pending"] == 0)
        receipts = call(sock, "receipts.list", {"pid": pid})
        result = call(sock, "receipts.verify", {})
        kinds = ", ".join(f"{r['kind']} (seq {r['seq']})" for r in receipts)
        verdict = "all verify" if result["ok"] else f"FAILED: {result['failures']}"
        print(f"  {name:>5}: {kinds} — {verdict}")
        if not result["ok"]:
            raise UserError(f"{name}'s tally receipts do not verify")


def tally_view_demo(configs: dict[str, Config], infos: dict[str, dict], tally: str) -> None:
    """Carol asks her own node for a relay view of the tally on alice's node, which alice's
    access rules let her read; the view comes back notarized by alice's agent."""
    carol = configs["carol"].socket_path
    names = {info["agent"]: name for name, info in infos.items()}
    address = f"{infos['alice']['listen']}/{infos['alice']['network']}/tally:{tally}"
    print("\nrelay: carol reads the tally from alice's ledger (Weaver-style view with proof):")
    asked = call(carol, "relay.query", {"address": address})
    done = call(carol, "relay.wait", {"request_id": asked["request_id"], "timeout_s": 10})
    print(f"  relay.query {address}\n  -> {done['status']}")
    if done["status"] != "COMPLETED":
        raise UserError(f"carol's relay query failed: {done.get('error')}")
    view = done["view"]
    signers = ", ".join(f"{names.get(agent, agent)} ({agent[:8]}…)" for agent in view["signers"])
    print(f"  proof verified: signed by {signers}, nonce {view['nonce']}, requestor "
          f"{names.get(view['requestor'], view['requestor'])}")
    payload = view["payload"]
    signed = payload["signed"]
    print(f"  tally {signed['uuid']} v{signed['version']}, signed by both users:"
          f" stock {signed['sign']['stock'][:12]}…, foil {signed['sign']['foil'][:12]}…")
    for holder in payload["holders"]:
        chain = holder["chain"]
        print(f"  {holder['cuid']:>5}'s {holder['side']}: {holder['state']}, balance "
              f"{holder['balance']:+} mCHIP, chain index {chain['index']}, head "
              f"{chain['head'][:16]}…, confirmed {chain['confirmed']}")


def command_parser() -> argparse.ArgumentParser:
    """``agentd demo``'s options, which the completion script offers too."""
    parser = argparse.ArgumentParser(
        prog="agentd demo", description="Run the nodes of configs/local (alice, bob, carol and"
        " their clearing house) as OS processes and show what they do.")
    parser.add_argument("--workdir", metavar="DIR", default=".run/demo",
                        help="where nodes keep their data (default: %(default)s)"
                        ).complete = DIRECTORY
    parser.add_argument("--free-ports", action="store_true",
                        help="listen on free ports instead of 7101-7104 (beside another demo)")
    return parser


def main(argv: list[str] | None = None) -> int:
    options = command_parser().parse_args(argv or [])
    workdir = Path(options.workdir).resolve()
    configs = prepare(_repo_configs(), workdir, NODES, free_ports=options.free_ports)
    print(f"agentd demo: starting {', '.join(NODES)} as {len(NODES)} processes"
          f" (data in {workdir})")
    with running(configs, workdir) as processes:
        infos = {name: call(c.socket_path, "getinfo", {}) for name, c in configs.items()}
        for name in NODES:
            print(f"  {name:13} {infos[name]['address']}")
        print("\nping round trips (outbox -> Noise channel -> inbox -> pong -> ack):")
        for a, b in zip(NAMES, NAMES[1:] + NAMES[:1], strict=True):
            rtts = call(configs[a].socket_path, "peers.ping",
                        {"agent": infos[b]["agent"], "count": 5})["rtt_ms"]
            print(f"  {a:>5} -> {b:<5}  5 pings, median {statistics.median(rtts):6.2f} ms,"
                  f" max {max(rtts):6.2f} ms")
        evidence_demo(configs, infos)
        tally = credit_demo(configs, infos)
        tally_evidence_demo(configs, infos, tally)
        tally_view_demo(configs, infos, tally)
        lifts_demo(configs, infos, tally)
        # evidence and chain blocks go out a moment after what caused them: let them land
        until("every outbox emptying", lambda: all(
            call(c.socket_path, "getinfo", {})["counters"]["outbox_depth"] == 0
            for c in configs.values()))
        print("\nnodes:")
        for name, config in configs.items():
            info = call(config.socket_path, "getinfo", {})
            counters = info["counters"]
            peers = call(config.socket_path, "peers.list", {})
            connected = sum(1 for p in peers if p["connected"])
            print(f"  {name:13} {connected} peers connected, frames in/out "
                  f"{counters['frames_in']}/{counters['frames_out']}, messages processed "
                  f"{counters['messages_processed']}, outbox {counters['outbox_depth']}")
    codes = {name: p.returncode for name, p in processes.items()}
    clean = all(code == 0 for code in codes.values())
    print(f"\nstopped: {', '.join(f'{n} exit {c}' for n, c in codes.items())}"
          f" — {'all clean' if clean else 'NOT CLEAN'}")
    return 0 if clean else 1
