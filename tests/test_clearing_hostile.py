"""A stranger's worst requests to a clearing house (real node, loopback, Noise, SQLite): each
is answered with a rejection that names the field at fault, and changes nothing."""

from __future__ import annotations

import trio

from agentd.bench.rogue import Rogue
from protocol.codec import pack
from protocol.envelope import Ack, Envelope
from tests.netfixture import network
from tests.test_credit_service import rpc


async def answers(rogue: Rogue, house_agent: str, action: str, obj: dict) -> list:
    """What the house sends back for one request: its ack and its reply, if any."""
    await rogue.send_frames([pack(rogue.envelope(house_agent, action, obj, target="ch"))])
    got: list = []
    with trio.fail_after(10):
        while True:
            got.extend(await rogue.receive())
            acks = [frame for frame in got if isinstance(frame, Ack)]
            if acks and (acks[0].error is not None
                         or any(isinstance(frame, Envelope) for frame in got)):
                return got


async def test_a_value_as_long_as_a_frame_is_refused_naming_its_field(tmp_path):
    """A malformed value a rejection quotes (a sort order, a date, an owner) of ~900 KB of
    control characters, which repr shows four times as long: quoted whole, the rejection
    could not be sent (the request got TOO_LARGE about our reply); it is quoted cut short."""
    async with network(tmp_path, n=2, clearinghouse=0) as net:
        house, client = net.nodes
        await rpc(client, "ch.log", pid="p1", payload="x")
        rogue = await Rogue.join(house.port, house.agent_id)
        huge = "\x00" * 900_000
        for action, obj, field in (
                ("query", {"pid": "p1", "sort": huge}, "query.sort"),
                ("query", {"pid": "p1", "date_from": [huge]}, "query.date_from"),
                ("create_process", {"pid": "q", "owners": [huge]}, "create_process.owners[0]"),
                ("log", {"pid": "q", "header": {}, "payload_sha256": "0" * 64,
                         "payload_type": "t", **{f"z{n}" + "z" * 4000: 1 for n in range(200)}},
                 "log: unknown field(s) z0zzz")):
            got = await answers(rogue, house.agent_id, action, obj)
            assert [frame.error for frame in got if isinstance(frame, Ack)] == [None], field
            reply = next(frame for frame in got if isinstance(frame, Envelope))
            assert reply.action == "rejection", field
            assert reply.object["message"].startswith(field), reply.object["message"][:200]
            assert len(reply.object["message"]) < 400
        assert house.db.read_one("SELECT count(*) FROM ch_processes")[0] == 1  # p1 alone
