"""``lift.wait`` callers of one lift share a wake-up: one that comes once the decision is
committed, but before the dispatcher has run the decision's hooks (which wake the waiters),
must not leave those already waiting asleep until their timeout."""

from __future__ import annotations

import threading
from typing import Any

import trio

from agentd.runtime.context import Tx
from protocol.envelope import Envelope
from tests.netfixture import network, wait_for
from tests.test_lifts import rpc, triangle


async def test_a_waiter_that_comes_before_the_decisions_hooks_wakes_the_others(tmp_path):
    """ann clears the triangle; ann's node holds the referee's decision back on its writer
    thread until a first lift.wait is waiting, then commits it but runs its wake-up hook
    late, as a dispatcher still busy with the messages before it does. A second lift.wait in
    that window sees the lift good and returns; the first must return too, long before its
    600 s. (Before, the second took the first's wake-up away as "nobody's": that first one,
    the bench lifts clear phase's lift.wait behind a lift.clear, waited its whole timeout,
    and the phase ran at 2 circles a second.)"""
    async with network(tmp_path, n=4, clearinghouse=0) as net:
        users, *_ = await triangle(net)
        ann = users["ann"]
        lift_service = ann.dispatcher.services["lift"]
        handle, gate, late = lift_service.handle, threading.Event(), []

        def held(tx: Tx, envelope: Envelope) -> None:  # the writer thread
            if envelope.action == "decision":
                gate.wait(30)
            handle(tx, envelope)

        lift_service.handle = held
        lift_service.decisions._wake = late.append  # the hook, run below when we say
        try:
            lift = (await rpc(ann, "lift.clear", cuid="ann"))["lift"]
            first: dict[str, Any] = {}
            first_done = trio.Event()

            async def wait_first() -> None:
                first.update(await rpc(ann, "lift.wait", lift=lift, timeout_s=600))
                first_done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_first)
                await wait_for(lambda: lift in lift_service._settled)  # it waits
                gate.set()
                await wait_for(lambda: late == [lift])  # committed, its hook not run yet
                second = await rpc(ann, "lift.wait", lift=lift, timeout_s=600)
                assert second["state"] == "good", second
                for decided in late:
                    lift_service._wake(decided)
                with trio.fail_after(20):  # else it sleeps its 600 s
                    await first_done.wait()
            assert first["state"] == "good", first
        finally:
            gate.set()
