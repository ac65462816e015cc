"""Credit between users (DESIGN.md §4): one ledger shared by the tally, chit, route and lift
services and the chain repair task. ``node.credit``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from agentd.services.credit.chits import ChitService
from agentd.services.credit.ledger import CreditLedger
from agentd.services.credit.lifts import LiftService
from agentd.services.credit.repair import ChainRepair
from agentd.services.credit.routes import RouteService
from agentd.services.credit.tallies import TallyService

if TYPE_CHECKING:
    from agentd.runtime.context import Runtime
    from agentd.services.clearing.client import Evidence


class Credit:
    def __init__(self, node: Runtime, evidence: Evidence) -> None:
        self.ledger = CreditLedger(node, evidence)
        self.tallies = TallyService(node, self.ledger)
        self.chits = ChitService(node, self.ledger)
        self.routes = RouteService(node, self.ledger)
        self.lifts = LiftService(node, self.ledger, self.routes)
        self.repair = ChainRepair(node, self.ledger)
        self.chits.on_undecided = self.lifts.decisions.on_undecided
        for service in (self.tallies, self.chits, self.routes, self.lifts):
            node.register_target(service)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Fill limit columns of old rows, then repair chains and follow up pending lifts
        until cancelled."""
        await self.ledger.runtime.db.write(self.ledger.store.fill_limits)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.repair.run)
            await nursery.start(self.lifts.run)
            task_status.started()
