"""Chain repair: resend what a partner may have lost, for chains that are not settled.

Once a second :class:`ChainRepair` looks for chains that are not settled, have been still for
a while (or whose partner's channel just opened) and whose partner has nothing waiting in our
outbox; each repair (``protocol.chain.resync``) pushes the next one back (doubling, up to a
minute), and any chain change resets the pace. A partner that does not hold a lift chit a
repair carries good refuses it (``LIFT_UNDECIDED``), and is shown the lift's decision
(``LiftDecisions.on_undecided``).

Once a start it asks every partner on another node whether it holds blocks this node lacks
(``protocol.chain.probe``, one small message a tally and one back): a node restored from a
backup of its data directory learns so what it lost since, even if nobody pays on the tally.

It also sends what a chain owes its partner on purpose: a foil holder's lift chits, linked
when it applies a lift's decision, go to the stock holder ``OWED_LINGER_S`` later, all that
were linked meanwhile in one ``upd`` a tally (``CreditLedger.owe``). By then the stock holder
has usually applied the same decision, so it takes the blocks instead of refusing them as
undecided (at 1,000 simulated nodes, sent at once, about one lift chit in four was refused
and repaired later), and a tally that carries one lift after another sends one ``upd`` for
all of that half second's lifts (each ``upd`` costs three messages with its chain acks: at
0.1 s they were a sixth of a sequential lift's messages). A crash before they go loses
nothing: the chain stays unsettled and is repaired.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

import trio

from agentd.runtime.context import Tx
from agentd.runtime.timers import Ticker
from agentd.services.credit.ledger import ASKS, RESYNC_QUIET_MS, CreditLedger
from protocol import chain as ch
from protocol.codec import unpack
from protocol.tally_local import LocalTally
from store import credit as credit_store
from store import is_failure, outbox

if TYPE_CHECKING:
    from agentd.runtime.context import Runtime

log = logging.getLogger("agentd.credit")
RESYNC_INTERVAL = 1.0  # s between looks for chains to repair
OWED_LINGER_S = 0.5  # a foil's lift chits wait this long before their blocks go to the stock
# (below RESYNC_QUIET_MS, so the repair does not send the same blocks first)
RESYNC_MAX_MS = 60_000  # while repairs do not settle a chain, at most this far apart
REOPENED_S = 30.0  # a partner's channel opening repairs its chains at most this often
PROBE_BATCH = 500  # chains probed in one transaction, once a start


class ChainRepair:
    def __init__(self, node: Runtime, ledger: CreditLedger) -> None:
        self.runtime = node
        self.ledger = ledger
        self._looked = float("-inf")  # when the last look began (clock.monotonic)
        self._unsettled = False  # whether the last look found a chain to settle
        self._ticker = Ticker(RESYNC_INTERVAL, self._tick, task="chain repair")
        ledger.on_change.append(self._ticker.wake)
        self._owed: set[tuple[str, str]] = set()  # (tally, cuid) of chains that owe blocks
        self._reopened: dict[str, float] = {}  # partner -> when its opening last repaired
        self._owed_ticker = Ticker(OWED_LINGER_S, self._send_owed, armed=False,
                                   task="sending chains' owed blocks")
        ledger.owe = self.owe

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Repair unsettled chains now and then (only while some chain is unsettled: a
        chain change wakes it), and send what chains owe, until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._owed_ticker.run)
            nursery.start_soon(self.probe)
            await self._ticker.run(task_status=task_status)

    async def probe(self) -> int:
        """Send every chain's ``protocol.chain.probe`` to its partner (on another node), a
        batch to a transaction; returns how many. The outbox delivers each once the partner
        is reachable; a probe an earlier start sent that still waits (the partner away, or
        not acking) is dropped for the new one, so a chain has one probe waiting at most,
        however often the node starts. A failure (the database's) ends it, logged: a node
        restored from a backup then catches up when its partner next sends it a block."""
        node, after, sent = self.runtime, ("", ""), 0

        def work(tx: Tx, rows: list) -> None:
            for row in rows:
                local = LocalTally(row["side"], row["state"], unpack(row["body"]))
                if row["chain_probe"] is not None:  # the last start's, if it still waits
                    tx.unsend(row["chain_probe"])
                probe = tx.send(ch.probe(local, length=row["chain_length"],
                                         head=row["chain_head"], conf=row["chain_conf"]))
                credit_store.probed(tx.conn, row["uuid"], row["cuid"], probe)

        try:
            while rows := node.db.reading(functools.partial(
                    credit_store.chains_after, after=after, limit=PROBE_BATCH,
                    agent=node.agent_id)):
                await self.ledger.transact(functools.partial(work, rows=rows))
                sent += len(rows)
                after = (rows[-1]["uuid"], rows[-1]["cuid"])
        except Exception:
            log.exception("asking tally partners for blocks this node lacks stopped after %d"
                          " chains", sent)
        return sent

    def owe(self, tally: str, cuid: str) -> None:
        """Holder ``cuid`` of ``tally`` linked blocks its partner has not been sent: send
        them (with any others owed meanwhile) ``OWED_LINGER_S`` from now."""
        self._owed.add((tally, cuid))
        self._owed_ticker.wake()

    async def _send_owed(self) -> bool:
        owed, self._owed = self._owed, set()

        def work(tx: Tx) -> None:
            for tally, cuid in owed:
                self._resend(tx, tally, cuid)

        try:
            await self.ledger.transact(work)
        except Exception as exc:  # the chains stay unsettled, and are repaired
            if is_failure(exc):  # the database's: the ticker tries again after a backoff
                self._owed |= owed
                raise
            log.exception("sending %d chains' owed blocks failed; the repair will", len(owed))
        return False

    def _resend(self, tx: Tx, tally: str, cuid: str) -> bool:
        """Queue what ``protocol.chain.resync`` sends for one holder's chain; False when it
        has no chain (any more)."""
        holding = self.ledger.store.get(tx.conn, tally, cuid)
        if holding is None or holding.chain is None:
            return False
        chain, history, _ = self.ledger.store.named(tx.conn, holding,
                                                    ch.to_resend(holding.chain))
        assert chain is not None
        self.ledger.emit(tx, ch.resync(chain, holding.local, history))
        return True

    def _give_up(self, tx: Tx, row: Any) -> None:
        """The chain's repairs asked ``ASKS`` times for blocks its partner says it confirmed,
        and none came: no more asks (``protocol.chain.give_up``). It settles once nothing
        else waits, and believes no new claim until it grows (``CreditLedger._believed``).
        Blocks the partner does hold come back with its next block (or our next start's
        probe), as after any lost message."""
        holding = self.ledger.store.get(tx.conn, row["uuid"], row["cuid"])
        if holding is None or holding.chain is None:
            return
        lacked = ch.lacking(holding.chain)
        self.ledger.commit(tx, holding, chain=self.ledger.store.given_up(tx.conn, holding))
        tx.after_commit(functools.partial(
            log.warning, "tally %s: partner %s said it confirmed %d blocks of %s's chain that "
            "this node lacks, and sent none when asked %d times: not asked for any more (they"
            " come back with its next block, if it holds them); its users' payments on the "
            "tally wait for that block (CHAIN_BEHIND): the balance leaves them out", row["uuid"],
            row["partner"][:8], lacked, row["cuid"], ASKS))

    async def _tick(self) -> bool:
        await self.resync()
        return self._unsettled

    def _opened(self, partners: set[str], looked: float) -> set[str]:
        """The ``partners`` whose channel opened since the last look (at ``looked``): they
        may have missed what we sent (a chain that became unsettled meanwhile over a channel
        open all along has not). Each at most once in ``REOPENED_S``: a partner that
        reconnects every second would otherwise have every unsettled chain's blocks (up to
        a hundred a chain) sent again every second, whatever their backoff."""
        now = self.runtime.clock.monotonic()
        for agent, when in list(self._reopened.items()):
            if now - when >= REOPENED_S:
                del self._reopened[agent]
        opened = {agent for agent in partners - self._reopened.keys()
                  if (since := self.runtime.connected_since(agent)) is not None
                  and since >= looked}
        self._reopened.update(dict.fromkeys(opened, now))
        return opened

    async def resync(self) -> int:
        """Send ``protocol.chain.resync`` repairs for every unsettled chain that is due (still
        for a while, or its partner's channel just opened) and whose partner has nothing
        waiting in our outbox; returns how many chains were repaired."""
        node = self.runtime
        now = node.clock.now_ms()
        looked, self._looked = self._looked, node.clock.monotonic()
        rows = node.db.reading(credit_store.unsettled)
        self._unsettled = bool(rows)
        waiting = node.db.reading(outbox.waiting_peers)
        opened = self._opened({row["partner"] for row in rows}, looked)
        due = [row for row in rows if row["partner"] not in waiting
               and (row["resync_due"] <= now or row["partner"] in opened)]
        if not due:
            return 0

        def work(tx: Tx) -> int:
            for row in due:
                held = row["chain_length"] if row["side"] == "stock" else row["chain_conf"]
                asks = row["chain_ahead"] > held  # for blocks the partner claims
                if asks and row["chain_asked"] >= ASKS:
                    self._give_up(tx, row)
                    continue
                if not self._resend(tx, row["uuid"], row["cuid"]):
                    continue
                pause = RESYNC_QUIET_MS * 2 ** min(row["resync_tries"] + 1, 16)
                due_ms = tx.now_ms + min(pause, RESYNC_MAX_MS)
                self.ledger.store.resynced(tx.conn, row["uuid"], row["cuid"], due_ms,
                                           asked=asks)
            return len(due)

        return await self.ledger.transact(work)

