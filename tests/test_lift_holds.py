"""What a tally partner's promises can make a node hold (``protocol.lift.check_held``): a hop
cannot void a lift on its own, so what a partner can open over one tally is bounded — lifts
pending at once (``MAX_HELD``), and the places (referee, address) those lifts name where the
referee never answered a dial of ours (``MAX_UNANSWERED``), each of which the node dials until
it answers. Real nodes; the hostile partner's promises are made by hand."""

from __future__ import annotations

import logging
import re
import uuid

import trio

from agentd.runtime.refusals import QUIET_S
from agentd.services.credit import lift_holds
from protocol import lift as lf
from protocol.keys import ChipAddress, SigningKey
from protocol.messages import Send
from store import lifts as store_lifts
from tests.clihelpers import free_port
from tests.netfixture import dial_failures, network, wait_for
from tests.test_credit_service import open_tally, processed, refusal_of, rpc, send_raw, user_key
from tests.test_lifts import reserved, who


def made_up() -> ChipAddress:
    """A referee nobody runs, at a loopback port nobody listens on (a dial fails at once)."""
    return ChipAddress(agent=SigningKey.generate().agent_id, host="127.0.0.1", port=free_port())


def lift_record(payer, cuid: str, payee, payee_cuid: str, tally: str, referee: ChipAddress,
                *, units: int = 1) -> dict:
    """A lift of ``units`` from ``cuid`` on ``payer`` to its partner, signed by ``cuid``."""
    path = [{"cuid": cuid, "agent": payer.agent_id, "tally": tally},
            {"cuid": payee_cuid, "agent": payee.agent_id, "tally": None}]
    return lf.make_record(lift_uuid=str(uuid.uuid4()), kind="linear", units=units, path=path,
                          referee=referee, date_ms=payer.clock.now_ms(), life_ms=600_000,
                          memo="", key=user_key(payer, cuid))


def pending_over(node, tally: str) -> int:
    return node.db.read_one("SELECT count(*) FROM lifts WHERE state = 'pend' AND lift IN"
                            " (SELECT lift FROM chits WHERE tally = ?)", (tally,))[0]


async def users(net, *names: str) -> list:
    nodes = net.nodes[1:1 + len(names)]
    for node, cuid in zip(nodes, names, strict=True):
        await rpc(node, "users.add", cuid=cuid)
    return nodes


async def test_a_partners_promises_hold_at_most_max_held_lifts_over_its_tally(tmp_path):
    """bob promises cat MAX_HELD + 1 lifts of 1 mCHIP under a referee that never answers:
    cat takes MAX_HELD and refuses the next (OVER_LIMIT, saying why), which changes nothing;
    a decision makes room again, and ann's lift over her own tally with cat is good."""
    async with network(tmp_path, n=4, clearinghouse=0) as net:
        ann, bob, cat = await users(net, "ann", "bob", "cat")
        bobcat = await open_tally(bob, "bob", cat, "cat")
        await open_tally(ann, "ann", cat, "cat")
        referee_key = SigningKey.generate()
        referee = ChipAddress(agent=referee_key.agent_id, host="127.0.0.1", port=free_port())
        records = [lift_record(bob, "bob", cat, "cat", bobcat, referee)
                   for _ in range(lf.MAX_HELD + 1)]
        to = cat.own_address("cat")
        ids = await bob.transact(lambda tx: [
            tx.send(Send(to, "lift", "promise", {"record": record, "hop": 0}, from_cuid="bob"))
            for record in records])
        # every promise answered, and its answer recorded (an ack leaves the pump before the
        # refusal it carries is committed: wait for the rows, not only the pump)
        await wait_for(lambda: not any(i in bob.pump.live for i in ids) and not bob.db.read_one(
            "SELECT count(*) FROM outbox WHERE action = 'promise' AND state = 'pending'")[0],
            timeout=60)
        refusals = bob.db.read("SELECT error FROM outbox WHERE state = 'failed'")
        assert len(refusals) == 1, [row[0] for row in refusals[:3]]
        assert refusals[0][0] == (
            f"OVER_LIMIT: tally {bobcat} has {lf.MAX_HELD} lifts pending here that came over "
            "it, the most a partner's promises may make this node hold at once: another waits "
            "until some are decided")
        assert pending_over(cat, bobcat) == lf.MAX_HELD
        assert reserved(cat, "cat", bobcat) == (lf.MAX_HELD, 0)
        # a lift decided (void: the referee's key signs it) makes room for one more
        held = [record for record in records if cat.db.read_one(
            "SELECT 1 FROM lifts WHERE lift = ?", (record["lift"],))]
        decision, _ = lf.decide(None, "cancel", held[0], now_ms=bob.clock.now_ms(),
                                key=referee_key, asker=bob.agent_id)
        voided = await send_raw(bob, cat, None, "lift", "decision",
                                {"record": held[0], "decision": decision}, None)
        await processed(bob, voided)
        assert pending_over(cat, bobcat) == lf.MAX_HELD - 1
        again = await send_raw(bob, cat, "cat", "lift", "promise",
                               {"record": lift_record(bob, "bob", cat, "cat", bobcat, referee),
                                "hop": 0}, "bob")
        await processed(bob, again)
        more = await send_raw(bob, cat, "cat", "lift", "promise",
                              {"record": lift_record(bob, "bob", cat, "cat", bobcat, referee),
                               "hop": 0}, "bob")
        assert (await refusal_of(bob, more)).startswith("OVER_LIMIT: ")
        assert pending_over(cat, bobcat) == lf.MAX_HELD
        # another partner's lift over its own tally with cat is not held back
        paid = await rpc(ann, "lift.pay", cuid="ann", find=who(cat, "cat"), units=5)
        assert (await rpc(ann, "lift.wait", lift=paid["lift"], timeout_s=20))["state"] == "good"


async def test_a_partners_lifts_name_at_most_four_referees_that_never_answered(tmp_path):
    """bob's promises name made-up referees at addresses of his choice: cat takes lifts naming
    MAX_UNANSWERED of them (dialling each) and refuses one naming another (REFEREE_REFUSED),
    or one of them at another address; it never dials those. A referee that reached cat on its
    own has not answered a dial of cat's; one cat dialled has, and its lifts are taken. ann's
    promises over her own tally are not held back by bob's."""
    async with network(tmp_path, n=5, clearinghouse=0) as net:
        ann, bob, cat = await users(net, "ann", "bob", "cat")
        real = net.nodes[4]
        bobcat = await open_tally(bob, "bob", cat, "cat")
        anncat = await open_tally(ann, "ann", cat, "cat")
        dials = dial_failures(cat)

        async def promise(referee: ChipAddress, payer=bob, cuid="bob", tally=bobcat) -> bytes:
            record = lift_record(payer, cuid, cat, "cat", tally, referee)
            return await send_raw(payer, cat, "cat", "lift", "promise",
                                  {"record": record, "hop": 0}, cuid)

        referees = [made_up() for _ in range(lf.MAX_UNANSWERED)]
        for referee in referees:
            await processed(bob, await promise(referee))
        fifth_key = SigningKey.generate()
        fifth = ChipAddress(agent=fifth_key.agent_id, host="127.0.0.1", port=free_port())
        refused = await refusal_of(bob, await promise(fifth))
        assert refused == (
            f"REFEREE_REFUSED: the lifts that came over tally {bobcat}, pending here or decided"
            f" in the last hour, name {lf.MAX_UNANSWERED} referees that have never answered this"
            f" node at the address their records give (the most they may name: each is dialled"
            f" until it answers), and {fifth.agent} at 127.0.0.1:{fifth.port} has not either: "
            "its lift waits until one of them answers, or the hour passes")
        await processed(bob, await promise(referees[0]))  # one named already
        elsewhere = ChipAddress(agent=referees[0].agent, host="127.0.0.1", port=fifth.port)
        assert "REFEREE_REFUSED" in await refusal_of(bob, await promise(elsewhere))
        # the fifth's key reaches cat from a node of its own, and is answered: that is no
        # answer to a dial of cat's at the address bob's record gives
        intruder = await net.start("intruder", fifth_key)
        net.nodes.append(intruder)
        intruder.learn_peer(cat.agent_id, cat.listen_address)
        assert (await rpc(intruder, "peers.ping", agent=cat.agent_id))["rtt_ms"]
        assert cat.connected(fifth.agent)
        assert "REFEREE_REFUSED" in await refusal_of(bob, await promise(fifth))
        # cat dials each of the four (its commits wait for them), never the fifth's address
        ports = {referee.port for referee in referees}
        await wait_for(lambda: {port for port in ports if any(
            f"127.0.0.1:{port}:" in failure for failure in dials)} == ports, timeout=20)
        assert not any(f"127.0.0.1:{fifth.port}:" in failure for failure in dials)
        assert cat.address_of(fifth.agent) is None
        # a node that answered cat's dial at the address its record gives is no made-up one
        assert "REFEREE_REFUSED" in await refusal_of(bob, await promise(real.own_address()))
        assert await cat.reach(real.agent_id, 5) is None
        await net.stop(4)  # so its lifts stay pending, as the made-up ones do
        await processed(bob, await promise(real.own_address()))
        # ann's promises over her own tally with cat may name a referee of their own
        await processed(ann, await promise(made_up(), payer=ann, cuid="ann", tally=anncat))
        assert pending_over(cat, bobcat) == lf.MAX_UNANSWERED + 2
        assert pending_over(cat, anncat) == 1


async def test_the_places_of_a_tallys_lifts_are_read_once_a_minute(tmp_path, monkeypatch):
    """Each promise naming a referee that never answered read the places of every lift over
    the tally in the last hour: a partner's made-up lifts cost 5 ms a promise at 6,500 lifts
    and 13 ms at 15,000 (red team). They are read once a minute, each taken promise adding
    its own; the bound holds as before (test above). (Read once an hour here: the
    promises below take a slow machine more than a minute.)"""
    reads: list[str] = []

    def counted(conn, tally, cuid, since_ms, read=store_lifts.held_referees):
        reads.append(tally)
        return read(conn, tally, cuid, since_ms)

    monkeypatch.setattr(store_lifts, "held_referees", counted)
    monkeypatch.setattr(lift_holds, "FRESH_MS", 3_600_000)  # a slow machine takes minutes
    async with network(tmp_path, n=3, clearinghouse=0) as net:
        bob, cat = await users(net, "bob", "cat")
        bobcat = await open_tally(bob, "bob", cat, "cat")
        referees = [made_up() for _ in range(lf.MAX_UNANSWERED)]
        for i in range(40):
            record = lift_record(bob, "bob", cat, "cat", bobcat, referees[i % len(referees)])
            await processed(bob, await send_raw(bob, cat, "cat", "lift", "promise",
                                                {"record": record, "hop": 0}, "bob"))
        fifth = lift_record(bob, "bob", cat, "cat", bobcat, made_up())
        assert "REFEREE_REFUSED" in await refusal_of(bob, await send_raw(
            bob, cat, "cat", "lift", "promise", {"record": fifth, "hop": 0}, "bob"))
        assert reads == [bobcat]
        assert pending_over(cat, bobcat) == 40
        # cat itself as referee, at 260 addresses (always answered): too many places to keep
        # was a read at every promise (16 to 19 ms each at 18,000 lifts); only the places
        # that never answered are kept, so their number does not matter
        for _ in range(260):
            itself = ChipAddress(agent=cat.agent_id, host="127.0.0.1", port=free_port())
            record = lift_record(bob, "bob", cat, "cat", bobcat, itself)
            await processed(bob, await send_raw(bob, cat, "cat", "lift", "promise",
                                                {"record": record, "hop": 0}, "bob"))
        for referee in referees * 3:
            record = lift_record(bob, "bob", cat, "cat", bobcat, referee)
            await processed(bob, await send_raw(bob, cat, "cat", "lift", "promise",
                                                {"record": record, "hop": 0}, "bob"))
        assert reads == [bobcat]


async def test_refusals_past_the_bound_are_counted_and_logged_once_a_while_per_tally(
        tmp_path, caplog):
    """bob keeps naming made-up referees past the bound, a new one each time: cat refuses each
    (REFEREE_REFUSED) and counts each (getinfo counters.refusals, the metrics), but logs the
    first only, saying that the next are counted and not logged; ann's refusal over her own
    tally with cat is logged on its own. The sender's side likewise: each refusal's text
    differs (a new referee each time), so the log's repeat filter held none back and bob
    warned of every one; he logs the first per code and tally in each QUIET_S seconds,
    saying the rest are counted (rejected_by_peer, and by code in peer_refusals), and ann's
    on its own."""
    caplog.set_level(logging.DEBUG, logger="agentd.runtime.dispatch")
    async with network(tmp_path, n=4, clearinghouse=0) as net:
        ann, bob, cat = await users(net, "ann", "bob", "cat")
        tallies = {bob: await open_tally(bob, "bob", cat, "cat"),
                   ann: await open_tally(ann, "ann", cat, "cat")}

        async def promise(payer, cuid: str) -> bytes:
            record = lift_record(payer, cuid, cat, "cat", tallies[payer], made_up())
            return await send_raw(payer, cat, "cat", "lift", "promise",
                                  {"record": record, "hop": 0}, cuid)

        def heard(payer) -> list[logging.LogRecord]:  # on the sender's side
            return [record for record in caplog.records if re.match(
                f"{re.escape(cat.agent_id[:8])} refused lift/promise \\(id [0-9a-f]{{12}}\\): "
                f"REFEREE_REFUSED: the lifts that came over tally {tallies[payer]}, ",
                record.getMessage())]

        for payer, cuid, refused in ((bob, "bob", 3), (ann, "ann", 1)):
            for _ in range(lf.MAX_UNANSWERED):
                await processed(payer, await promise(payer, cuid))
            for _ in range(refused):
                assert (await refusal_of(payer, await promise(payer, cuid))).startswith(
                    "REFEREE_REFUSED: ")
            await wait_for(lambda payer=payer, refused=refused: len(heard(payer)) == refused)
            counted = (await rpc(payer, "getinfo"))["counters"]
            assert counted["rejected_by_peer"] == refused
            assert counted["peer_refusals"] == {"REFEREE_REFUSED": refused}  # by code
            assert (f'agentd_peer_refusals_total{{code="REFEREE_REFUSED"}} {refused}.0'.encode()
                    in payer.metrics.exposition())
        info = await rpc(cat, "getinfo")
        assert info["counters"]["refusals"] == {"REFEREE_REFUSED": 4}
        assert info["counters"]["rejected"]["refused"] == 4
        assert b'agentd_refusals_total{code="REFEREE_REFUSED"} 4.0' in cat.metrics.exposition()
        logged = {payer: [record.getMessage() for record in caplog.records
                          if record.levelno >= logging.INFO and record.getMessage().startswith(
                              f"refused lift/promise from {payer.agent_id[:8]} (id ")]
                  for payer in (bob, ann)}
        assert [len(lines) for lines in logged.values()] == [1, 1], logged
        for payer, (line,) in logged.items():
            assert re.match(f"refused lift/promise from {re.escape(payer.agent_id[:8])} "
                            f"\\(id [0-9a-f]{{12}}\\): REFEREE_REFUSED: the lifts that came over "
                            f"tally {tallies[payer]}, pending here or decided in the last hour, "
                            "name 4 referees", line), line
            assert line.endswith(
                f"(further REFEREE_REFUSED refusals over tally {tallies[payer]} in the next "
                f"{QUIET_S:g} s are counted in getinfo counters.refusals, not logged)")
        for payer, levels in ((bob, [logging.WARNING, logging.DEBUG, logging.DEBUG]),
                              (ann, [logging.WARNING])):
            lines = heard(payer)
            assert [line.levelno for line in lines] == levels, [r.getMessage() for r in lines]
            assert lines[0].getMessage().endswith(
                f"(further REFEREE_REFUSED refusals of our promises over tally {tallies[payer]} "
                f"in the next {QUIET_S:g} s are counted in getinfo counters.peer_refusals, "
                "not logged)")


async def test_a_decided_lift_stops_the_dials_to_its_referee_and_forgets_it(tmp_path):
    """bob names a made-up referee in each promise and voids the lift himself with its key
    (he made it up): cat's commit to it stayed in the outbox, so cat dialled every such
    address for ever, and kept each referee as a known peer (a row, and a known peer passes
    the limits a stranger meets). A decided lift's messages to its referee go, a referee
    nothing else needs is forgotten (the clearing house, which the config names, never is),
    and the referees that never answered still count against the bound for an hour."""
    async with network(tmp_path, n=3, clearinghouse=0) as net:
        bob, cat = await users(net, "bob", "cat")
        bobcat = await open_tally(bob, "bob", cat, "cat")
        dials, ports = dial_failures(cat), []
        for _ in range(lf.MAX_UNANSWERED):
            key = SigningKey.generate()
            referee = ChipAddress(agent=key.agent_id, host="127.0.0.1", port=free_port())
            ports.append(f"127.0.0.1:{referee.port}:")
            record = lift_record(bob, "bob", cat, "cat", bobcat, referee)
            await processed(bob, await send_raw(bob, cat, "cat", "lift", "promise",
                                                {"record": record, "hop": 0}, "bob"))
            await wait_for(lambda: any(ports[-1] in failure for failure in dials))  # its commit
            decision, _ = lf.decide(None, "cancel", record, now_ms=bob.clock.now_ms(), key=key,
                                    asker=bob.agent_id)
            await processed(bob, await send_raw(bob, cat, "cat", "lift", "decision",
                                                {"record": record, "decision": decision}, "bob"))
            assert (await rpc(cat, "lift.show", lift=record["lift"]))["state"] == "void"
            assert not cat.is_known(referee.agent)
            assert cat.db.read_one("SELECT count(*) FROM outbox WHERE peer = ?",
                                   (referee.agent,))[0] == 0
            assert cat.db.read_one("SELECT count(*) FROM peers WHERE agent = ?",
                                   (referee.agent,))[0] == 0
        dialled = len(dials)  # the pump dropped the withdrawn commits: no sender dials there
        await trio.sleep(2)  # a failed dial is tried again after 0.5 s
        assert not [failure for failure in dials[dialled:] if any(p in failure for p in ports)]
        # decided, they still count for an hour: voiding its own lifts frees bob no place
        record = lift_record(bob, "bob", cat, "cat", bobcat, made_up())
        assert (await refusal_of(bob, await send_raw(
            bob, cat, "cat", "lift", "promise", {"record": record, "hop": 0}, "bob"))
                ).startswith(f"REFEREE_REFUSED: the lifts that came over tally {bobcat}, ")
        paid = await rpc(bob, "lift.pay", cuid="bob", find=who(cat, "cat"), units=5)
        assert (await rpc(bob, "lift.wait", lift=paid["lift"], timeout_s=20))["state"] == "good"
        await wait_for(lambda: cat.db.read_one("SELECT state FROM lifts WHERE lift = ?",
                                               (paid["lift"],))[0] == "good")
        assert cat.is_known(net.nodes[0].agent_id)  # the clearing house refereed it
