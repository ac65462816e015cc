"""A tally's evidence cannot be squatted: each partner's node logs it under a process in its
own namespace at the clearing house (``AGENT/TALLY``, ``protocol.evidence.tally_pid``), which
nobody else may create (``protocol.clearing.namespace_of``). Under the bare tally uuid, which
anyone who saw the ticket can work out (and the partner, and whoever was shown a relay view
of the tally, knows), a third party or the partner created the process first as its sole
owner, and every piece of evidence of the tally was refused ``NOT_AUTHORIZED``. Real nodes
and a real clearing house."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from agentd.human import render
from agentd.rpc import RpcError
from agentd.runtime.node import Node
from agentd.services.credit.ledger import CreditLedger
from protocol import clearing
from tests.netfixture import network, wait_for
from tests.test_credit_service import open_tally, rpc, state, users
from tests.test_credit_service import refused as refused_call


def refused(node: Node) -> list[str]:
    """The evidence the clearing house refused this node, as receipts.verify says it."""
    return [row[0] for row in node.db.read(
        "SELECT error FROM ch_requests WHERE state = 'refused' ORDER BY seq")]


def logged(node: Node) -> list[tuple[str, str, str]]:
    """The node's tally evidence receipts: (pid, kind, status), in the order they came."""
    return [tuple(row) for row in node.db.read(
        "SELECT pid, kind, status FROM receipts WHERE kind != 'lift.decision' ORDER BY pid, seq")]


@pytest.mark.parametrize("squatter", ["a third party", "the stock partner"])
async def test_nobody_can_create_a_tallys_evidence_process_first(tmp_path, squatter):
    """Before the tally opens, someone who knows its uuid (from the ticket) creates at the
    clearing house, as sole owner, every process its evidence could go to: the bare uuid and
    each partner's namespace (the partner's only, for the stock partner). The tally opens and
    a chit is paid; each partner's node logs both under its own namespace, nothing is
    refused, every receipt verifies and each partner reads both processes."""
    async with network(tmp_path, n=4, clearinghouse=0) as net:
        _, stock, foil, third = net.nodes
        await users(stock, "alice")
        await users(foil, "bob")
        invited = await rpc(stock, "tally.invite", cuid="alice", limit=10_000)  # alice: stock
        tally = invited["tally"]
        squat = third if squatter == "a third party" else stock
        ours = {node: f"{node.agent_id}/{tally}" for node in (stock, foil)}
        taken = {}  # the stock partner's own namespace is its own: it squats the others
        for pid in (tally, *(pid for node, pid in ours.items() if node is not squat)):
            try:
                taken[pid] = await rpc(squat, "ch.create_process", pid=pid, owners=[])
            except RpcError as exc:
                taken[pid] = exc.reason
        await rpc(foil, "tally.request", cuid="bob", ticket=invited["ticket"])
        await offer_and_accept(stock, foil, tally)
        chit = (await rpc(foil, "chit.pay", cuid="bob", tally=tally, units=700))["chit"]

        def done() -> bool:
            """each partner has two valid receipts (tally.open, chit.good) or a refusal"""
            return all(refused(node) or [row[2] for row in logged(node)] == ["valid"] * 2
                       for node in ours)

        await wait_for(done, timeout=15)
        for node in ours:
            assert refused(node) == [], refused(node)[0]
        for node, pid in ours.items():
            cuid = "alice" if node is stock else "bob"
            assert (await rpc(node, "tally.show", cuid=cuid, tally=tally))["evidence"] == pid
            assert logged(node) == [(pid, "tally.open", "valid"), (pid, "chit.good", "valid")]
            listed = await rpc(node, "receipts.list", pid=pid)
            cut = render("receipts.list", listed).splitlines()[1].split()[0]  # as -H shows it
            assert cut == f"{pid.split('/')[0][:8]}…/{tally}"
            assert await rpc(node, "receipts.list", pid=cut) == listed
            assert await rpc(node, "receipts.list", pid=cut.replace(tally, tally[:-1])) == []
            assert await rpc(node, "receipts.list", pid=cut.replace("…", "...")) == listed
            assert await rpc(node, "receipts.list", pid=cut.replace("…", "")) == listed
            assert await rpc(node, "receipts.list", pid=cut.replace("…", "")[1:]) == []
            for not_as_shown in ("…", f"…/{tally}", f"{pid[:8]}…{pid[8:12]}…/{tally}"):
                assert await rpc(node, "receipts.list", pid=not_as_shown) == []  # a whole pid
            for short, kept in ((f"{pid[:6]}/{tally}", 6), (f"{pid[:5]}…/{tally}", 5)):
                too_short = await refused_call(node, "receipts.list", pid=short)  # listed nothing
                assert too_short.message == (
                    f"receipts.list: pid {short!r} cuts the agent id to {kept} characters: "
                    "give 8 or more (as -H shows them), or the pid whole")
            assert (await rpc(node, "receipts.verify", chain=True))["ok"]
            if node is not squat:
                assert taken[pid] == "NOT_AUTHORIZED"
        assert taken[tally] == {"pid": tally, "owners": [squat.agent_id]}  # as before
        for reader in ours:
            for pid in ours.values():
                entries = (await rpc(reader, "ch.query", pid=pid, sort="asc"))["entries"]
                assert [(e["header"]["kind"], e["header"]["ref"]) for e in entries] == [
                    ("tally.open", tally), ("chit.good", chit)]


async def offer_and_accept(stock: Node, foil: Node, tally: str) -> None:
    """alice (stock) offers the tally bob requested and bob (foil) accepts: both open."""
    await wait_for(lambda: state(stock, "alice", tally) == "P.draft")
    await rpc(stock, "tally.offer", cuid="alice", tally=tally)
    await wait_for(lambda: state(foil, "bob", tally) == "P.offer")
    await rpc(foil, "tally.accept", cuid="bob", tally=tally)
    await wait_for(lambda: state(stock, "alice", tally) == state(foil, "bob", tally) == "open")


async def opened(stock: Node, foil: Node, squat: Node | None = None) -> str:
    """A tally alice (stock) and bob (foil) open; ``squat`` first creates its bare uuid."""
    invited = await rpc(stock, "tally.invite", cuid="alice", limit=10_000)
    if squat is not None:
        await rpc(squat, "ch.create_process", pid=invited["tally"], owners=[])
    await rpc(foil, "tally.request", cuid="bob", ticket=invited["ticket"])
    await offer_and_accept(stock, foil, invited["tally"])
    return invited["tally"]


def answered(*nodes: Node) -> bool:
    """no evidence of these nodes waits for the clearing house"""
    return all(node.db.read_one("SELECT count(*) FROM ch_requests WHERE state != 'refused'")[0]
               == 0 and node.db.read_one("SELECT count(*) FROM receipts WHERE status ="
                                         " 'unchecked'")[0] == 0 for node in nodes)


def rewind_to_15(node: Node) -> None:
    """The node's database as version 15 left it: before tally_evidence_bare (16),
    tallies.chain_ahead (17), tallies.chain_probe (18), tallies.chain_asked (19), the
    index of void referee decisions (20), that of lifts by when they changed (22; 21
    only deletes rows), that of the inbox by peer (23), the relay's nonces by requestor
    (24) and tally_requests.partner (25)."""
    conn = sqlite3.connect(node.config.db_path, isolation_level=None)
    try:
        conn.execute("ALTER TABLE tally_requests DROP COLUMN partner")
        conn.execute("DROP INDEX relay_nonces_requestor")
        conn.execute("DROP INDEX inbox_peer")
        conn.execute("DROP INDEX lifts_recent")
        conn.execute("DROP INDEX lift_decisions_void")
        conn.execute("ALTER TABLE tallies DROP COLUMN chain_asked")
        conn.execute("ALTER TABLE tallies DROP COLUMN chain_probe")
        conn.execute("DROP INDEX tallies_unsettled")
        conn.execute("ALTER TABLE tallies DROP COLUMN chain_ahead")
        conn.execute("CREATE INDEX tallies_unsettled ON tallies (resync_due) WHERE"
                     " chain_origin IS NOT NULL AND (chain_conf < chain_length OR"
                     " chain_pending > 0)")
        conn.execute("DROP TABLE tally_evidence_bare")
        conn.execute("PRAGMA user_version = 15")
    finally:
        conn.close()


async def test_a_tally_logged_under_its_uuid_before_the_upgrade_keeps_its_process(
        tmp_path, monkeypatch):
    """Nodes of version 15 logged a tally's evidence under its bare uuid: one process for
    both partners. Upgraded (migration 16), they go on logging it there, so its chain of
    evidence stays in one process; a tally whose bare uuid a third party had taken (every log
    refused) logs from then on under each node's own namespace, and is accepted."""
    async with network(tmp_path, n=4, clearinghouse=0) as net:
        _, stock, foil, third = net.nodes
        await users(stock, "alice")
        await users(foil, "bob")
        with monkeypatch.context() as old:  # the pid version 15 logged under
            old.setattr(CreditLedger, "evidence_pid", lambda self, conn, tally: tally)
            kept, taken = await opened(stock, foil), await opened(stock, foil, squat=third)
            await wait_for(lambda: answered(stock, foil), timeout=15)
        for tally, refusals in ((kept, 0), (taken, 1)):  # its tally.open
            for node in (stock, foil):
                assert len([r for r in refused(node) if tally in r]) == refusals
        stock, foil = [await net.restart(i, rewind_to_15) for i in (1, 2)]
        chits = {tally: (await rpc(foil, "chit.pay", cuid="bob", tally=tally, units=5))["chit"]
                 for tally in (kept, taken)}

        def both_chits_answered() -> bool:
            """each node's new chit.good on both tallies is answered (a receipt, or refused)"""
            return answered(stock, foil) and all(
                len(logged(node)) + len(refused(node)) == 4 for node in (stock, foil))

        await wait_for(both_chits_answered, timeout=15)
        for node in (stock, foil):
            assert sorted(logged(node)) == sorted([
                (kept, "tally.open", "valid"), (kept, "chit.good", "valid"),
                (f"{node.agent_id}/{taken}", "chit.good", "valid")])
            history = (await rpc(node, "ch.query", pid=kept, sort="asc"))["entries"]
            assert [e["header"]["kind"] for e in history] == ["tally.open"] * 2 + [
                "chit.good"] * 2
            assert history[-1]["header"]["ref"] == chits[kept]
            cuid = "alice" if node is stock else "bob"
            shown = [(await rpc(node, "tally.show", cuid=cuid, tally=tally))["evidence"]
                     for tally in (kept, taken)]
            assert shown == [kept, f"{node.agent_id}/{taken}"]
            assert len(refused(node)) == 1  # what the house refused stays refused


@pytest.mark.parametrize("where", ["a node", "the clearing house"])
async def test_both_partners_on_one_node_log_once_under_its_namespace(tmp_path, where):
    """Both holders on one node: the foil holder's logs are the node's (one agent, one
    process, one receipt each); the clearing house's own append to its log at once."""
    async with network(tmp_path, n=2, clearinghouse=0) as net:
        node = net.nodes[0 if where == "the clearing house" else 1]
        await users(node, "alice", "bob")
        tally = await open_tally(node, "alice", node, "bob")
        chit = (await rpc(node, "chit.pay", cuid="bob", tally=tally, units=5))["chit"]
        pid = f"{node.agent_id}/{tally}"

        def both() -> bool:
            """the node holds two receipts, checked"""
            return answered(node) and len(logged(node)) == 2

        await wait_for(both, timeout=15)
        assert logged(node) == [(pid, "tally.open", "valid"), (pid, "chit.good", "valid")]
        assert refused(node) == []
        entries = (await rpc(node, "ch.query", pid=pid, sort="asc"))["entries"]
        assert [(e["header"]["kind"], e["header"]["ref"]) for e in entries] == [
            ("tally.open", tally), ("chit.good", chit)]


async def test_a_house_that_lets_the_namespace_be_taken_is_named_in_getinfo_verify_and_log(
        tmp_path, monkeypatch, caplog):
    """A clearing house without the namespace rule (an older one) lets a third party create
    a partner's process first: the evidence is refused all the same. The partner's user is
    told, where they look: getinfo counts it (``evidence_refused``), receipts.verify fails
    each piece saying that another agent holds the process and why that could happen, and
    the log warns once that the process was taken, naming the tally."""
    monkeypatch.setattr(clearing, "_may_create", lambda action, pid, caller: None)
    async with network(tmp_path, n=4, clearinghouse=0) as net:
        house, stock, foil, third = net.nodes
        await users(stock, "alice")
        await users(foil, "bob")
        invited = await rpc(stock, "tally.invite", cuid="alice", limit=10_000)
        tally = invited["tally"]
        pid = f"{stock.agent_id}/{tally}"
        await rpc(third, "ch.create_process", pid=pid, owners=[])  # alice's, taken
        await rpc(foil, "tally.request", cuid="bob", ticket=invited["ticket"])
        caplog.set_level(logging.INFO, logger="agentd.evidence")
        await offer_and_accept(stock, foil, tally)
        await rpc(foil, "chit.pay", cuid="bob", tally=tally, units=5)
        await wait_for(lambda: answered(stock, foil) and len(refused(stock)) == 2, timeout=15)
        assert (await rpc(stock, "getinfo"))["counters"]["evidence_refused"] == 2
        assert (await rpc(foil, "getinfo"))["counters"]["evidence_refused"] == 0  # its own
        why = (f"(another agent created the process {pid!r} first, without this node as an "
               "owner: nothing this node logs under it is taken; the pid is in this node's "
               "namespace, which a clearing house that keeps agent namespaces lets nobody else"
               " create: this one does not, upgrade it)")
        verified = await rpc(stock, "receipts.verify")
        assert not verified["ok"]
        assert [(f["pid"], f["kind"], f["fault"]) for f in verified["failures"]] == [
            (pid, "tally.open", "refused"), (pid, "chit.good", "refused")]
        assert verified["failures"][0]["message"] == (
            "the clearing house refused this evidence: NOT_AUTHORIZED: log.pid: you are not an "
            f"owner of {pid!r} {why}")
        warned = [r.getMessage() for r in caplog.records
                  if r.name == "agentd.evidence" and r.levelno == logging.WARNING]
        assert warned[0] == (
            f"clearing house {house.agent_id[:8]}: create_process for the evidence of "
            f"tally.open {tally}: NOT_AUTHORIZED: create_process.pid: {pid!r} exists and you "
            f"do not own it {why}")
        assert len(warned) == 3 and all(why in line for line in warned)
        assert (await rpc(foil, "receipts.verify"))["ok"]  # bob's process is bob's
