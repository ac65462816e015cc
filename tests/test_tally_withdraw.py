"""An invitation nobody used (its ticket unused, or expired) is withdrawn with tally.refuse on
the inviter's draft: the draft becomes void (it stayed a draft for ever: refuse, close and
offer all said BAD_STATE), and a ticket presented later is refused."""

from __future__ import annotations

from tests.netfixture import network, wait_for
from tests.test_credit_service import refused, rpc, state


async def _invited(net) -> tuple:
    """alice (on a) invites; bob is on b: the nodes, the invitation and its tally."""
    a, b = net.nodes
    await rpc(a, "users.add", cuid="alice")
    await rpc(b, "users.add", cuid="bob")
    invited = await rpc(a, "tally.invite", cuid="alice")
    return a, b, invited, invited["tally"]


async def test_an_unused_invitation_is_withdrawn_and_its_ticket_refused_after(tmp_path):
    async with network(tmp_path, n=2) as net:
        a, b, invited, tally = await _invited(net)
        assert await rpc(a, "tally.refuse", cuid="alice", tally=tally) == {
            "tally": tally, "state": "void"}
        assert [row["state"] for row in await rpc(a, "tally.list", cuid="alice")] == ["void"]
        withdrawn = ("TICKET_REFUSED", "TICKET_REFUSED: the inviter withdrew this invitation: "
                     "ask for a new ticket")  # it said "BAD_STATE: cannot got ticket a tally in …"
        late = await refused(b, "tally.request", cuid="bob", ticket=invited["ticket"])
        assert (late.reason, late.message) == withdrawn
        assert [row["state"] for row in await rpc(a, "tally.list", cuid="alice")] == ["void"]
        assert await rpc(b, "tally.list", cuid="bob") == []
        public = await rpc(a, "tally.invite", cuid="alice", reuse=True)  # a reusable one too
        await rpc(a, "tally.refuse", cuid="alice", tally=public["tally"])
        late = await refused(b, "tally.request", cuid="bob", ticket=public["ticket"])
        assert (late.reason, late.message) == withdrawn


async def test_a_draft_the_partner_countered_is_given_up_with_the_partner_told(tmp_path):
    """After a counter the partner holds the pen (our draft names it): refusing then is not
    a withdrawal behind its back (it would go on offering a tally we dropped): the partner's
    node is sent the void, and its draft is void too."""
    async with network(tmp_path, n=2) as net:
        a, b, invited, tally = await _invited(net)
        await rpc(b, "tally.request", cuid="bob", ticket=invited["ticket"])
        await rpc(a, "tally.offer", cuid="alice", tally=tally)
        await wait_for(lambda: state(b, "bob", tally) == "P.offer")
        await rpc(b, "tally.counter", cuid="bob", tally=tally)
        await wait_for(lambda: state(a, "alice", tally) == "draft")
        await rpc(a, "tally.refuse", cuid="alice", tally=tally)
        await wait_for(lambda: state(b, "bob", tally) == state(a, "alice", tally) == "void")
        assert (await refused(b, "tally.offer", cuid="bob", tally=tally)).reason == "BAD_STATE"
