"""A call waiting for an answer is settled only by what may answer it: a pong (which any peer
can send, naming any id in ``re``) settles only a ping to that very peer."""

from __future__ import annotations

from agentd.runtime.replies import Replies


class Committed:
    """A transaction that has committed: what it runs after commit runs now."""

    def after_commit(self, fn) -> None:
        fn()


async def test_a_pong_settles_only_a_ping_to_the_peer_that_sends_it():
    replies, tx = Replies(), Committed()
    replies.expect(b"p" * 16, "bob")  # our ping to bob
    replies.expect(b"t" * 16)  # a ticket request: settled by its ack alone
    replies.settle(tx, b"p" * 16, peer="mallory")  # a pong from someone else, naming it
    replies.settle(tx, b"t" * 16, peer="mallory")
    assert not replies._waiting[b"p" * 16].event.is_set()
    assert not replies._waiting[b"t" * 16].event.is_set()
    replies.settle(tx, b"p" * 16, peer="bob")
    replies.settle(tx, b"t" * 16)  # the ticket's ack
    assert await replies.results([b"p" * 16, b"t" * 16]) == [None, None]
