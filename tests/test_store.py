"""store/: migrations, the group-commit writer, and the outbox/inbox/peers/users repositories."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from protocol import lift as lf
from protocol.codec import digest, pack, unpack
from protocol.keys import ChipAddress, SigningKey
from store import (
    Database,
    DatabaseError,
    SharedWriter,
    clearing,
    credit,
    inbox,
    lifts,
    outbox,
    peers,
    users,
)
from store.db import savepoint
from store.schema import SchemaError, migrate, migrations

LATEST = migrations()[-1][0]


def _insert_meta(key: str, value: bytes = b"v") -> Callable[[sqlite3.Connection], int]:
    def job(conn: sqlite3.Connection) -> int:
        return conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value)).rowcount

    return job


def _meta_keys(db: Database) -> set[str]:
    return {row["key"] for row in db.read("SELECT key FROM meta")}


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {
        row[0]
        for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if not row[0].startswith("sqlite_")
    }


# -- schema -----------------------------------------------------------------------------------


def test_migrations_are_numbered_one_two_three_without_gaps() -> None:
    steps = migrations()
    versions = [version for version, _, _ in steps]
    assert versions == list(range(1, len(steps) + 1))
    assert steps[0][1] == "001_core.sql"
    assert all(sql.strip() for _, _, sql in steps)


def test_migrate_sets_user_version_and_is_idempotent(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
        assert migrate(conn) == LATEST
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
        tables = _tables(conn)
        assert {"meta", "peers", "users", "outbox", "inbox"} <= tables
        conn.execute("INSERT INTO meta (key, value) VALUES ('kept', x'00')")
        assert migrate(conn) == LATEST  # would fail on CREATE TABLE if it re-ran
        assert _tables(conn) == tables
        assert conn.execute("SELECT count(*) FROM meta").fetchone()[0] == 1
        assert not conn.in_transaction
    finally:
        conn.close()


def test_migration_5_moves_large_rows_to_rowid_tables_and_keeps_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    try:
        monkeypatch.setattr("store.schema.migrations", lambda: migrations()[:4])
        assert migrate(conn) == 4
        conn.execute("INSERT INTO ch_processes VALUES ('p', 1)")
        for seq in (1, 2):
            conn.execute("INSERT INTO ch_entries VALUES ('p', ?, 'prev', 5, 'c', x'80', 'sha',"
                         " 'text/plain', x'01', ?)", (seq, f"hash{seq}"))
        conn.execute("INSERT INTO receipts VALUES (x'0102', 'ch', 'p', 1, 'doc', 'token',"
                     " 'ch.log', NULL, 'sha', 'unchecked', NULL, 7)")
        monkeypatch.undo()
        assert migrate(conn) == LATEST
        assert conn.execute("SELECT seq, entry_hash FROM ch_entries ORDER BY seq").fetchall() \
            == [(1, "hash1"), (2, "hash2")]
        assert conn.execute("SELECT request, status FROM receipts").fetchall() == [
            (b"\x01\x02", "unchecked")]
        for table in ("receipts", "ch_entries", "relay_requests"):
            sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,))
            assert "WITHOUT ROWID" not in sql.fetchone()[0]
        with pytest.raises(sqlite3.IntegrityError):  # still no fork, still one receipt each
            conn.execute("INSERT INTO ch_entries VALUES ('p', 2, 'x', 5, 'c', x'80', 'sha',"
                         " 'text/plain', NULL, 'other')")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO receipts VALUES (x'0102', 'ch', 'p', 2, 'doc', 'token',"
                         " 'ch.log', NULL, 'sha', 'valid', NULL, 8)")
        plan = conn.execute("EXPLAIN QUERY PLAN SELECT request FROM receipts"
                            " WHERE status = 'unchecked' AND ch = 'ch'").fetchall()
        assert "receipts_unchecked" in str(plan)
    finally:
        conn.close()


def test_migration_7_forgets_strangers_older_versions_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database of version 6 holds every peer that ever completed a handshake, with the
    address its hello claimed; the migration keeps only the peers something of ours names."""
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    try:
        monkeypatch.setattr("store.schema.migrations", lambda: migrations()[:6])
        assert migrate(conn) == 6
        rows = [("stranger", None, "203.0.113.9:7000", 5), ("silent", None, None, 6),
                ("configured", "bob", "127.0.0.1:7102", 7), ("partner", None, "10.0.0.2:1", 8),
                ("referee", None, "10.0.0.3:1", 9)]
        conn.executemany("INSERT INTO peers VALUES (?, ?, ?, ?)", rows)
        conn.execute("INSERT INTO tallies (uuid, cuid, side, state, partner, body, token,"
                     " created, updated) VALUES ('t', 'u', 'stock', 'open', 'partner', x'80',"
                     " x'00', 1, 1)")
        conn.execute("INSERT INTO tallies (uuid, cuid, side, state, body, token, created,"
                     " updated) VALUES ('t2', 'u', 'stock', 'draft', x'80', x'00', 1, 1)")
        conn.execute("INSERT INTO lifts (lift, kind, state, units, referee, deadline, record,"
                     " query_due, created, updated) VALUES ('l', 'linear', 'pend', 1, 'referee',"
                     " 1, x'80', 1, 1, 1)")
        monkeypatch.undo()
        assert migrate(conn) == LATEST
        kept = conn.execute("SELECT agent, name, address FROM peers ORDER BY agent").fetchall()
        assert kept == [("configured", "bob", "127.0.0.1:7102"),
                        ("partner", None, "10.0.0.2:1"), ("referee", None, "10.0.0.3:1")]
    finally:
        conn.close()


def test_migration_21_forgets_the_referees_of_lifts_decided_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hop kept every referee it ever learned as a known peer; from version 21 only those a
    pending lift names, a name, or a tally's partnership keeps."""
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    try:
        monkeypatch.setattr("store.schema.migrations", lambda: migrations()[:20])
        assert migrate(conn) == 20
        conn.executemany("INSERT INTO peers VALUES (?, ?, ?, ?)", [
            ("decided", None, "10.0.0.1:1", 1), ("pending", None, "10.0.0.2:1", 2),
            ("partner", None, "10.0.0.3:1", 3), ("named", "house", "10.0.0.4:1", 4),
            ("ticket", None, "10.0.0.5:1", 5)])
        conn.execute("INSERT INTO tallies (uuid, cuid, side, state, partner, body, token,"
                     " created, updated) VALUES ('t', 'u', 'stock', 'open', 'partner', x'80',"
                     " x'00', 1, 1)")
        for lift, state, referee in (("l1", "void", "decided"), ("l2", "good", "pending"),
                                     ("l3", "pend", "pending"), ("l4", "good", "partner"),
                                     ("l5", "void", "named")):
            conn.execute("INSERT INTO lifts (lift, kind, state, units, referee, deadline, record,"
                         " query_due, created, updated) VALUES (?, 'linear', ?, 1, ?, 1, x'80',"
                         " 1, 1, 1)", (lift, state, referee))
        monkeypatch.undo()
        assert migrate(conn) == LATEST
        assert [row[0] for row in conn.execute("SELECT agent FROM peers ORDER BY agent")] == [
            "named", "partner", "pending", "ticket"]
    finally:
        conn.close()


def test_migration_10_forgets_voids_heard_of_lifts_that_never_reached_us(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before version 10 a void pushed to a node that held nothing of the lift left a row for
    ever; the migration drops those, and keeps every lift the node paid or took part in."""
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    try:
        monkeypatch.setattr("store.schema.migrations", lambda: migrations()[:9])
        assert migrate(conn) == 9
        for lift, payor, state in (("heard", None, "void"), ("hop", None, "void"),
                                   ("paid", "u", "good")):
            conn.execute("INSERT INTO lifts (lift, kind, state, units, payor, referee, deadline,"
                         " record, query_due, created, updated) VALUES (?, 'linear', ?, 1, ?,"
                         " 'r', 1, x'80', 1, 1, 1)", (lift, state, payor))
        conn.execute("INSERT INTO chits (tally, cuid, uuid, issuer, type, units, memo, date,"
                     " state, hash, body, created, updated, lift) VALUES ('t', 'u', 'c',"
                     " 'stock', 'lift', 1, '', 1, 'A.void', x'00', x'80', 1, 1, 'hop')")
        monkeypatch.undo()
        assert migrate(conn) == LATEST
        kept = [row[0] for row in conn.execute("SELECT lift FROM lifts ORDER BY lift")]
        assert kept == ["hop", "paid"]
    finally:
        conn.close()


def test_migration_14_finds_the_tally_a_pending_lift_came_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lift pending from before version 14 is counted against the tally its promise came
    over (the one holding its incoming pending chit), so what a partner made the node hold
    before the upgrade counts too; a lift our user started, or one decided, came over none."""
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    try:
        monkeypatch.setattr("store.schema.migrations", lambda: migrations()[:13])
        assert migrate(conn) == 13
        for lift, payor, state in (("hop", None, "pend"), ("paid", "u", "pend"),
                                   ("done", None, "good")):
            conn.execute("INSERT INTO lifts (lift, kind, state, units, payor, referee, deadline,"
                         " record, query_due, created, updated) VALUES (?, 'linear', ?, 1, ?,"
                         " 'r', 1, x'80', 1, 1, 1)", (lift, state, payor))
        for tally, chit, state, lift in (("out", "c1", "L.lift", "hop"), ("in", "c2", "A.lift",
                                                                          "hop"),
                                         ("in", "c3", "A.lift", "paid"),
                                         ("in", "c4", "A.good", "done")):
            conn.execute("INSERT INTO chits (tally, cuid, uuid, issuer, type, units, memo, date,"
                         " state, hash, body, created, updated, lift) VALUES (?, 'u', ?,"
                         " 'stock', 'lift', 1, '', 1, ?, x'00', x'80', 1, 1, ?)",
                         (tally, chit, state, lift))
        monkeypatch.undo()
        assert migrate(conn) == LATEST
        assert conn.execute("SELECT lift, via_tally, via_cuid FROM lifts ORDER BY lift"
                            ).fetchall() == [("done", None, None), ("hop", "in", "u"),
                                             ("paid", None, None)]
        assert lifts.held(conn, "in", "u") == 1
        assert lifts.held_referees(conn, "in", "u", 2) == [("r", None)]
    finally:
        conn.close()


def test_equivocating_referees_are_kept_the_newest_first_and_a_proof_once(
        tmp_path: Path) -> None:
    """What a referee that signed both good and void makes a node keep is bounded: one row a
    referee, its first proof, the newest ``keep`` of them; and the losing decision once a
    lift (a second proof changes nothing)."""
    conn = sqlite3.connect(tmp_path / "e.db", isolation_level=None)
    try:
        migrate(conn)
        for at in range(5):
            lifts.add_equivocator(conn, f"r{at}", f"l{at}", {"n": at}, at, keep=3)
        lifts.add_equivocator(conn, "r4", "later", {"n": 9}, 9, keep=3)  # known: unchanged
        assert [lifts.equivocated_on(conn, f"r{at}") for at in range(5)] == [
            None, None, "l2", "l3", "l4"]
        conn.execute("INSERT INTO lifts (lift, kind, state, units, referee, deadline, record,"
                     " query_due, created, updated) VALUES ('l', 'linear', 'good', 1, 'r', 1,"
                     " x'80', 1, 1, 1)")
        assert lifts.contradict(conn, "l", {"state": "void", "n": 1})
        assert not lifts.contradict(conn, "l", {"state": "void", "n": 2})
        row = conn.execute("SELECT contradicted FROM lifts").fetchone()
        assert unpack(row[0]) == {"state": "void", "n": 1}
    finally:
        conn.close()


def test_migration_16_keeps_tallies_logged_under_their_uuid_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tally whose evidence went under its bare uuid before version 16 (a receipt, or a
    request not answered yet) keeps logging there; one whose every log was refused (its
    process taken), or that logged nothing, logs under the node's namespace from then on."""
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    try:
        monkeypatch.setattr("store.schema.migrations", lambda: migrations()[:15])
        assert migrate(conn) == 15
        conn.execute("INSERT INTO users (cuid, name, seed, public, created) VALUES ('u', '',"
                     " x'00', x'00', 1)")
        for tally in ("receipted", "waiting", "refused", "silent"):
            conn.execute("INSERT INTO tallies (uuid, cuid, side, state, body, token, created,"
                         " updated) VALUES (?, 'u', 'foil', 'open', x'80', x'00', 1, 1)",
                         (tally,))
        clearing.add_receipt(conn, request=b"r", ch="h", pid="receipted", seq=1,
                             document_id="d", token="t", kind="tally.open", ref="receipted",
                             payload_sha256="0" * 64, status="valid", problem=None, now_ms=1)
        clearing.add_receipt(conn, request=b"s", ch="h", pid="silent", seq=1, document_id="d",
                             token="t", kind="ch.log", ref=None, payload_sha256="0" * 64,
                             status="valid", problem=None, now_ms=1)  # a user's, by hand
        for pid, state in (("waiting", "waiting"), ("refused", "refused")):
            conn.execute("INSERT INTO ch_requests (ch, action, pid, kind, ref, state, created)"
                         " VALUES ('h', 'log', ?, 'chit.good', 'c', ?, 1)", (pid, state))
        monkeypatch.undo()
        assert migrate(conn) == LATEST
        assert [credit.evidence_under_uuid(conn, tally) for tally in (
            "receipted", "waiting", "refused", "silent")] == [True, True, False, False]
    finally:
        conn.close()


def test_migration_17_keeps_what_a_chain_lacks_and_repairs_it_until_it_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chains from before version 17 lack nothing (``chain_ahead`` 0): the settled one stays
    settled. One whose partner's conf is past its own is repaired (``credit.unsettled``)."""
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        monkeypatch.setattr("store.schema.migrations", lambda: migrations()[:16])
        assert migrate(conn) == 16
        for tally, length, conf in (("settled", 5, 5), ("unconfirmed", 5, 4)):
            conn.execute("INSERT INTO tallies (uuid, cuid, side, state, body, token, created,"
                         " updated, chain_origin, chain_length, chain_conf) VALUES (?, 'u',"
                         " 'stock', 'open', x'80', x'00', 1, 1, x'00', ?, ?)",
                         (tally, length, conf))
        monkeypatch.undo()
        assert migrate(conn) == LATEST
        assert [row["uuid"] for row in credit.unsettled(conn)] == ["unconfirmed"]
        conn.execute("UPDATE tallies SET chain_ahead = 9 WHERE uuid = 'settled'")
        assert sorted(row["uuid"] for row in credit.unsettled(conn)) == [
            "settled", "unconfirmed"]
    finally:
        conn.close()


def test_migration_9_keeps_decisions_made_before_they_named_their_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A referee's decision from before migration 9 (kept under the lift uuid, not naming its
    record) is found by its stored record, answered again signed with the record's digest,
    and then kept under that digest; another record with the same uuid finds nothing."""
    referee, payor = SigningKey(bytes([7]) * 32), SigningKey(bytes([8]) * 32)
    made = lf.make_record(
        lift_uuid=str(uuid.UUID(int=1)), kind="linear", units=5, memo="",
        path=[{"cuid": "a", "agent": payor.agent_id, "tally": str(uuid.UUID(int=2))},
              {"cuid": "b", "agent": referee.agent_id, "tally": None}],
        referee=ChipAddress(agent=referee.agent_id, host="127.0.0.1", port=1),
        date_ms=1_000, life_ms=60_000, key=payor)
    old = {"lift": made["lift"], "state": "good", "date": 2_000, "referee": referee.agent_id}
    old["sign"] = referee.sign(digest(old))
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    try:
        monkeypatch.setattr("store.schema.migrations", lambda: migrations()[:8])
        assert migrate(conn) == 8
        conn.execute("INSERT INTO lift_decisions VALUES (?, 'good', ?, ?, 2000)",
                     (made["lift"], pack(old), pack(made)))
        monkeypatch.undo()
        assert migrate(conn) == LATEST
        assert lifts.decision(conn, made["lift"], made) == old
        other = {**made, "units": 6}
        assert lifts.decision(conn, made["lift"], other) is None
        decision, _ = lf.decide(old, "query", made, now_ms=3_000, key=referee,
                                asker=payor.agent_id)
        assert lf.check_decision(decision, made) == "good" and decision["date"] == 2_000
        lifts.decide(conn, made, decision, 3_000, legacy=True)
        assert lifts.decision(conn, made["lift"], made) == decision
        assert conn.execute("SELECT count(*) FROM lift_decisions").fetchone()[0] == 1
    finally:
        conn.close()


def test_migrate_refuses_a_newer_database(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "new.db", isolation_level=None)
    try:
        conn.execute(f"PRAGMA user_version = {LATEST + 1}")
        with pytest.raises(SchemaError, match="newer"):
            migrate(conn)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST + 1
        assert _tables(conn) == set()
    finally:
        conn.close()


async def test_open_sets_the_latest_version_and_reopening_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    async with Database.open(path) as db:
        assert db.read("PRAGMA user_version")[0][0] == LATEST
        await db.write(_insert_meta("first"))
    async with Database.open(path) as db:
        assert db.read("PRAGMA user_version")[0][0] == LATEST
        assert _meta_keys(db) == {"first"}


async def test_open_refuses_a_database_newer_than_the_code(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {LATEST + 5}")
    conn.close()
    with pytest.raises(DatabaseError, match=f"newer than this agentd \\({LATEST}\\)"):
        async with Database.open(path):
            pytest.fail("opened a database from the future")


async def test_open_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not an SQLite database, not even close" * 100)
    with pytest.raises(DatabaseError, match="cannot open database"):
        async with Database.open(path):
            pytest.fail("opened junk")


async def test_wal_mode_and_pragmas(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "wal.db") as db:
        assert db.read("PRAGMA journal_mode")[0][0] == "wal"

        def pragmas(conn: sqlite3.Connection) -> tuple[int, int]:
            return (
                conn.execute("PRAGMA foreign_keys").fetchone()[0],
                conn.execute("PRAGMA synchronous").fetchone()[0],
            )

        assert await db.write(pragmas) == (1, 2)  # foreign keys on, synchronous FULL
    assert (tmp_path / "wal.db").exists()


async def test_a_savepoint_that_changes_many_pages_writes_no_temporary_file(
        tmp_path: Path) -> None:
    """Each job of a batch runs in a savepoint, whose undo journal SQLite by default spills to
    a temporary file past 64 KiB and keeps until the commit: a syscall per page on every
    busy commit. The writer keeps it in memory."""
    def temporary_files() -> list[str]:
        links = (os.path.join("/proc/self/fd", fd) for fd in os.listdir("/proc/self/fd"))
        return [target for target in map(_readlink, links) if "etilqs" in target]

    async with Database.open(tmp_path / "big.db") as db:
        await db.write(lambda conn: conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)"))
        await db.write(lambda conn: conn.executemany(
            "INSERT INTO t (v) VALUES (?)", [(os.urandom(3000),) for _ in range(100)]))

        def rewrite(conn: sqlite3.Connection) -> list[str]:
            with savepoint(conn, "job"):  # as the writer wraps each job of a batch
                conn.execute("UPDATE t SET v = ?", (os.urandom(3000),))  # ~100 pages
                return temporary_files()

        assert await db.write(rewrite) == []


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:  # closed meanwhile
        return ""


# -- the writer ---------------------------------------------------------------------------------


async def test_write_returns_the_result_after_commit(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "w.db") as db:
        assert await db.write(_insert_meta("a")) == 1
        # Committed: the reader connection, outside the writer's transaction, sees it.
        assert _meta_keys(db) == {"a"}
        assert db.read_one("SELECT value FROM meta WHERE key = ?", ("a",))["value"] == b"v"
        assert db.read_one("SELECT value FROM meta WHERE key = ?", ("zz",)) is None
        assert db.commits >= 1 and db.jobs >= 1


async def test_reader_cannot_write(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "r.db") as db:
        with pytest.raises(sqlite3.OperationalError):
            db.read("INSERT INTO meta (key, value) VALUES ('x', x'00')")


async def test_a_reading_sees_one_commit_whatever_commits_between_its_statements(
        tmp_path: Path) -> None:
    """Each statement of its own would see a commit made between two of them: a tally gone
    from the requests and not yet found among the tallies (tally.wait said UNKNOWN_TALLY of
    one its node had just taken). A reading is one snapshot, a reading within it too."""
    async with Database.open(tmp_path / "s.db") as db:
        await db.write(_insert_meta("before"))

        def read(conn: sqlite3.Connection) -> tuple[set[str], set[str], set[str]]:
            first = {row["key"] for row in conn.execute("SELECT key FROM meta")}
            other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
            other.execute("INSERT INTO meta (key, value) VALUES ('between', x'00')")
            other.close()
            inner = {row["key"] for row in db.read("SELECT key FROM meta")}
            return first, {row["key"] for row in conn.execute("SELECT key FROM meta")}, inner

        first, second, inner = db.reading(read)
        assert first == second == inner == {"before"}
        assert _meta_keys(db) == {"before", "between"}  # the next reading sees it


async def test_group_commit_of_500_concurrent_writes(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "g.db") as db:
        commits0, jobs0 = db.commits, db.jobs
        pending = [db.start(_insert_meta(f"k{i:03d}")) for i in range(500)]
        results = [await write.outcome() for write in pending]
        assert results == [1] * 500
        assert all(write.done for write in pending)
        commits, jobs = db.commits - commits0, db.jobs - jobs0
        assert jobs == 500
        assert commits < jobs
        assert commits <= 50, f"{commits} commits for 500 jobs: no group commit"
        assert len(_meta_keys(db)) == 500


async def test_concurrent_writers_from_many_tasks(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "t.db") as db:
        commits0 = db.commits

        async def writer(i: int) -> None:
            assert await db.write(_insert_meta(f"task{i}")) == 1

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(writer, i)
        assert len(_meta_keys(db)) == 200
        assert db.commits - commits0 < 200


async def test_jobs_see_the_state_left_by_earlier_jobs(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "seq.db") as db:

        def increment(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT value FROM meta WHERE key = 'n'").fetchone()
            n = int(row[0]) + 1 if row else 1
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('n', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(n).encode(),),
            )
            return n

        pending = [db.start(increment) for _ in range(300)]
        assert [await write.outcome() for write in pending] == list(range(1, 301))


class Boom(Exception):
    pass


async def test_a_failing_job_is_rolled_back_alone(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "f.db") as db:
        # Hold the writer inside a job so that the next three land in one batch.
        release = threading.Event()
        entered = threading.Event()

        def blocker(conn: sqlite3.Connection) -> None:
            entered.set()
            assert release.wait(10)

        blocked = db.start(blocker)
        await trio.to_thread.run_sync(entered.wait, 10)
        commits0 = db.commits

        def failing(conn: sqlite3.Connection) -> None:
            _insert_meta("bad1")(conn)
            _insert_meta("bad2")(conn)
            raise Boom("job failed")

        first = db.start(_insert_meta("good1"))
        middle = db.start(failing)
        last = db.start(_insert_meta("good2"))
        release.set()
        await blocked.outcome()
        assert await first.outcome() == 1
        with pytest.raises(Boom, match="job failed"):
            await middle.outcome()
        assert await last.outcome() == 1
        assert db.commits - commits0 == 2  # the blocker's batch, then one batch of three
        assert _meta_keys(db) == {"good1", "good2"}


async def test_a_lone_failing_job_is_undone_without_a_savepoint(tmp_path: Path) -> None:
    """A batch of one job runs without a savepoint (two statements fewer per commit): its
    failure rolls the whole transaction back, and the next job starts from a clean state."""
    async with Database.open(tmp_path / "lone.db") as db:
        def failing(conn: sqlite3.Connection) -> None:
            _insert_meta("bad")(conn)
            raise Boom("job failed")

        with pytest.raises(Boom, match="job failed"):
            await db.write(failing)
        def twice(conn: sqlite3.Connection) -> None:
            _insert_meta("twice")(conn)
            _insert_meta("twice")(conn)  # a constraint the job breaks itself

        with pytest.raises(sqlite3.IntegrityError):
            await db.write(twice)
        assert await db.write(_insert_meta("after")) == 1
        assert _meta_keys(db) == {"after"}  # neither "bad" nor the first "twice"


async def test_a_constraint_violation_fails_only_its_job(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "c.db") as db:
        await db.write(_insert_meta("dup"))
        pending = [
            db.start(_insert_meta("x1")),
            db.start(_insert_meta("dup")),
            db.start(_insert_meta("x2")),
        ]
        assert await pending[0].outcome() == 1
        with pytest.raises(sqlite3.IntegrityError):
            await pending[1].outcome()
        assert await pending[2].outcome() == 1
        assert _meta_keys(db) == {"dup", "x1", "x2"}


async def test_submit_commits_with_the_next_batch(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "s.db") as db:
        db.submit(_insert_meta("fire-and-forget"))

        def keys(conn: sqlite3.Connection) -> set[str]:
            return {row[0] for row in conn.execute("SELECT key FROM meta")}

        assert await db.write(keys) == {"fire-and-forget"}  # jobs run in queue order


async def test_a_failing_submitted_job_is_logged_and_harmless(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def failing(conn: sqlite3.Connection) -> None:
        _insert_meta("never")(conn)
        raise Boom("background failure")

    with caplog.at_level(logging.ERROR, logger="agentd.store"):
        async with Database.open(tmp_path / "sf.db") as db:
            db.submit(failing)
            assert await db.write(_insert_meta("after")) == 1
            assert _meta_keys(db) == {"after"}
    assert "background failure" in caplog.text


async def test_pending_write_survives_a_cancelled_caller(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "cancel.db") as db:
        with trio.move_on_after(0):
            await db.write(_insert_meta("shielded"))
        # The job was queued before the cancel; its effects are committed regardless.
        assert await db.write(lambda conn: None) is None
        assert _meta_keys(db) == {"shielded"}


async def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "durable.db"
    async with Database.open(path) as db:
        pending = [db.start(_insert_meta(f"d{i}")) for i in range(20)]
        db.submit(_insert_meta("submitted"))  # queued before close: written before close
    assert all(write.done for write in pending)
    async with Database.open(path) as db:
        assert _meta_keys(db) == {f"d{i}" for i in range(20)} | {"submitted"}


async def test_closed_database_refuses_new_jobs(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "closed.db") as db:
        pass
    with pytest.raises(DatabaseError, match="closed"):
        db.start(_insert_meta("late"))
    with pytest.raises(DatabaseError, match="closed"):
        await db.write(_insert_meta("late"))
    db.submit(_insert_meta("late"))  # dropped silently, by contract


async def test_a_shared_writer_commits_for_many_databases_each_alone(tmp_path: Path) -> None:
    """One thread, three databases: each job lands in its own database, a failing job is
    rolled back alone, and closing one database waits for its queued jobs."""
    threads: set[str] = set()

    def insert(key: str) -> Callable[[sqlite3.Connection], int]:
        def job(conn: sqlite3.Connection) -> int:
            threads.add(threading.current_thread().name)
            return _insert_meta(key)(conn)
        return job

    with SharedWriter() as writer:
        opened = [Database.open(tmp_path / f"{i}.db", shared=writer, synchronous="NORMAL")
                  for i in range(3)]
        dbs = [await context.__aenter__() for context in opened]
        async with trio.open_nursery() as nursery:
            for i, db in enumerate(dbs):
                for n in range(50):
                    nursery.start_soon(db.write, insert(f"db{i}-{n}"))
        with pytest.raises(sqlite3.IntegrityError):
            await dbs[0].write(insert("db0-1"))  # a duplicate key: this job alone fails
        dbs[1].submit(insert("db1-late"))
        await opened[1].__aexit__(None, None, None)  # commits what db 1 had queued first
        assert dbs[1].closed and not dbs[0].closed
        for i, context in enumerate(opened):
            if i != 1:
                await context.__aexit__(None, None, None)
    assert threads == {"sqlite-writer:shared"}
    for i in range(3):
        async with Database.open(tmp_path / f"{i}.db") as db:
            keys = {key for key in _meta_keys(db) if key.startswith("db")}
            assert keys == {f"db{i}-{n}" for n in range(50)} | (
                {"db1-late"} if i == 1 else set())


async def test_synchronous_normal_is_set_on_the_writer(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "normal.db", synchronous="NORMAL") as db:
        assert await db.write(
            lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0]) == 1
    with pytest.raises(ValueError, match="synchronous"):
        Database.open(tmp_path / "off.db", synchronous="OFF")


# -- repositories -------------------------------------------------------------------------------


async def test_inbox_claim_is_false_the_second_time(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "in.db") as db:
        mid = bytes(range(16))
        assert await db.write(lambda c: inbox.claim(c, mid, "peerA", 1_000)) is True
        assert await db.write(lambda c: inbox.claim(c, mid, "peerA", 2_000)) is False
        assert await db.write(lambda c: inbox.claim(c, mid, "peerB", 3_000)) is False
        other = bytes(16)
        assert await db.write(lambda c: inbox.claim(c, other, "peerA", 5_000)) is True
        rows = db.read("SELECT id, peer, received FROM inbox ORDER BY received")
        assert [tuple(row) for row in rows] == [(mid, "peerA", 1_000), (other, "peerA", 5_000)]
        # Concurrent claims of one id in one batch: exactly one wins.
        third = b"\x03" * 16
        pending = [db.start(lambda c: inbox.claim(c, third, "p", 9)) for _ in range(10)]
        assert sorted([await p.outcome() for p in pending]) == [False] * 9 + [True]


async def test_inbox_prune(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "prune.db") as db:
        for i in range(5):
            await db.write(lambda c, i=i: inbox.claim(c, bytes([i]) * 16, "p", i * 100))
        assert await db.write(lambda c: inbox.prune(c, 250)) == 3
        assert len(db.read("SELECT id FROM inbox")) == 2
        # A pruned id can be claimed again.
        assert await db.write(lambda c: inbox.claim(c, bytes(16), "p", 999)) is True


async def test_refused_outbox_rows_are_pruned_and_pending_ones_kept(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "prune.db") as db:
        for i in range(4):
            await db.write(lambda c, i=i: outbox.enqueue(
                c, message_id=bytes([i]) * 16, peer="p", address=None, target="node",
                action="ping", body=b"x", now_ms=i * 100))
        for i in (0, 1, 3):
            await db.write(lambda c, i=i: outbox.mark_failed(c, bytes([i]) * 16, "NO: no"))
        assert await db.write(lambda c: outbox.prune_failed(c, 250)) == 2  # 0 and 1
        rows = db.read("SELECT id, state FROM outbox ORDER BY seq")
        assert [(row["id"][0], row["state"]) for row in rows] == [(2, "pending"), (3, "failed")]


async def test_a_peers_refused_rows_keep_no_body_and_only_the_newest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox, "FAILED_KEPT", 2)
    async with Database.open(tmp_path / "kept.db") as db:
        for i, peer in enumerate("ppppqp"):
            await db.write(lambda c, i=i, peer=peer: outbox.enqueue(
                c, message_id=bytes([i]) * 16, peer=peer, address=None, target="chit",
                action="chain", body=b"x" * 1000, now_ms=i))
        for i in (0, 1, 2, 4):
            await db.write(lambda c, i=i: outbox.mark_failed(c, bytes([i]) * 16, "NO: no"))
        rows = db.read("SELECT id, peer, state, length(body) FROM outbox ORDER BY seq")
        assert [(row[0][0], row[1], row[2], row[3]) for row in rows] == [
            (1, "p", "failed", 0), (2, "p", "failed", 0), (3, "p", "pending", 1000),
            (4, "q", "failed", 0), (5, "p", "pending", 1000)]


async def test_unanswered_ch_calls_are_pruned_and_owed_answers_kept(tmp_path: Path) -> None:
    """A ch.* call whose answer never came is forgotten once old; evidence, a JWKS question
    and newer calls are kept (lost.py sends the owed ones again)."""
    async with Database.open(tmp_path / "prune.db") as db:
        rows = [("query", None, "sent", 100), ("log", None, "sent", 200),
                ("keys", None, "sent", 100), ("log", "chit.good", "sent", 100),
                ("query", None, "sent", 900), ("create_process", None, "refused", 100)]
        for n, (action, kind, state, created) in enumerate(rows):
            await db.write(lambda c, n=n, a=action, k=kind, s=state, t=created:
                           clearing.add_request(c, message_id=bytes([n]) * 16, ch="house",
                                                action=a, pid="p", kind=k, ref=None,
                                                payload_sha256=None, state=s, now_ms=t))
        assert await db.write(lambda c: clearing.prune_unanswered_calls(c, 500)) == 2
        kept = db.read("SELECT action, kind, created FROM ch_requests ORDER BY seq")
        assert [tuple(row) for row in kept] == [
            ("keys", None, 100), ("log", "chit.good", 100), ("query", None, 900),
            ("create_process", None, 100)]


def _enqueue(conn: sqlite3.Connection, i: int, peer: str = "bob") -> int:
    return outbox.enqueue(
        conn,
        message_id=bytes([i]) * 16,
        peer=peer,
        address="127.0.0.1:7001" if i % 2 else None,
        target="tally",
        action=f"act{i}",
        body=b"body%d" % i,
        now_ms=1_000 + i,
    )


def _failures(conn: sqlite3.Connection) -> list[tuple[bytes, str]]:
    rows = conn.execute("SELECT id, error FROM outbox WHERE state = 'failed'")
    return [tuple(row) for row in rows]


def _pending_count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0]


async def test_outbox_enqueue_pending_depth(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "out.db") as db:
        assert await db.write(_pending_count) == 0
        assert await db.write(lambda c: outbox.pending_to(c, "bob", 0, 10)) == []
        seqs = [await db.write(lambda c, i=i: _enqueue(c, i, "bob" if i < 4 else "carol"))
                for i in range(1, 6)]
        assert await db.write(_pending_count) == 5
        rows = await db.write(lambda c: outbox.pending_to(c, "bob", 0, 10))
        assert [row.id for row in rows] == [bytes([i]) * 16 for i in range(1, 4)]
        first = rows[0]
        assert (first.peer, first.address, first.target, first.action, first.body) == (
            "bob",
            "127.0.0.1:7001",
            "tally",
            "act1",
            b"body1",
        )
        assert rows[1].address is None
        assert all(row.tries == 0 for row in rows)
        assert [row.seq for row in rows] == seqs[:3] == sorted(seqs[:3])
        assert len(set(seqs)) == 5
        after = await db.write(lambda c: outbox.pending_to(c, "carol", seqs[0], 1))
        assert [row.seq for row in after] == seqs[3:4]  # carol's first, one at most
        assert await db.write(lambda c: outbox.count_pending_to(c, "bob", seqs[0])) == 2


async def test_outbox_enqueue_of_a_duplicate_id_fails_its_job(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "dup.db") as db:
        await db.write(lambda c: _enqueue(c, 1))
        with pytest.raises(sqlite3.IntegrityError):
            await db.write(lambda c: _enqueue(c, 1))
        assert await db.write(_pending_count) == 1


async def test_outbox_delete(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "del.db") as db:
        for i in range(1, 5):
            await db.write(lambda c, i=i: _enqueue(c, i))
        ids = [bytes([1]) * 16, bytes([3]) * 16]
        assert await db.write(lambda c: outbox.delete(c, ids)) == 2
        assert await db.write(lambda c: outbox.delete(c, ids)) == 0  # already gone
        assert await db.write(lambda c: outbox.delete(c, [])) == 0
        assert await db.write(lambda c: outbox.delete(c, iter([bytes([2]) * 16]))) == 1
        pending = await db.write(lambda c: outbox.pending_to(c, "bob", 0, 10))
        assert [row.id for row in pending] == [bytes([4]) * 16]
        assert await db.write(_pending_count) == 1


async def test_outbox_mark_failed_and_record_tries(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "fail.db") as db:
        for i in range(1, 4):
            await db.write(lambda c, i=i: _enqueue(c, i))
        two = bytes([2]) * 16
        await db.write(lambda c: outbox.record_tries(c, [(3, two), (1, bytes([3]) * 16)]))
        row = await db.write(lambda c: outbox.mark_failed(c, two, "NOT_FOUND: no such tally"))
        assert row is not None and row.id == two and row.tries == 3 and row.action == "act2"
        assert await db.write(lambda c: outbox.mark_failed(c, two, "again")) is None
        assert await db.write(lambda c: outbox.mark_failed(c, bytes(16), "unknown")) is None
        assert await db.write(_pending_count) == 2
        pending = await db.write(lambda c: outbox.pending_to(c, "bob", 0, 10))
        assert [(r.id, r.tries) for r in pending] == [(bytes([1]) * 16, 0), (bytes([3]) * 16, 1)]
        failures = await db.write(_failures)
        assert failures == [(two, "NOT_FOUND: no such tally")]
        # A failed row is kept (for the record) until deleted explicitly.
        assert await db.write(lambda c: outbox.delete(c, [two])) == 1
        assert await db.write(_failures) == []


async def test_outbox_rows_written_with_a_failed_job_are_rolled_back(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "tx.db") as db:

        def state_change_then_failure(conn: sqlite3.Connection) -> None:
            _enqueue(conn, 7)
            _insert_meta("state")(conn)
            raise Boom("guard failed")

        with pytest.raises(Boom):
            await db.write(state_change_then_failure)
        assert await db.write(_pending_count) == 0
        assert _meta_keys(db) == set()


async def test_peers_upsert_keeps_known_fields(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "peers.db") as db:
        await db.write(lambda c: peers.upsert(c, "agentB", name="bob", address="h:1"))
        await db.write(lambda c: peers.upsert(c, "agentB", last_seen=5))
        await db.write(lambda c: peers.upsert(c, "agentA", address="h:2"))
        await db.write(lambda c: peers.upsert(c, "agentB", address="h:3"))
        rows = [tuple(row) for row in await db.write(peers.all_peers)]
        assert rows == [("agentA", None, "h:2", None), ("agentB", "bob", "h:3", 5)]
        assert await db.write(lambda c: peers.address_of(c, "agentB")) == "h:3"
        assert await db.write(lambda c: peers.address_of(c, "nobody")) is None


async def test_users_add_get_list(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "users.db") as db:
        seed, public = b"s" * 32, b"p" * 32
        assert await db.write(lambda c: users.add(c, "bob", "Bob", seed, public, 10)) is True
        taken = await db.write(lambda c: users.add(c, "bob", "Other", b"x" * 32, public, 11))
        assert taken is False
        assert await db.write(lambda c: users.add(c, "alice", "Alice", seed, public, 12)) is True
        row = await db.write(lambda c: users.get(c, "bob"))
        assert tuple(row) == ("bob", "Bob", seed, public, 10)
        assert await db.write(lambda c: users.get(c, "nobody")) is None
        listed = await db.write(users.all_users)
        assert [(r["cuid"], r["name"]) for r in listed] == [("alice", "Alice"), ("bob", "Bob")]
        assert listed[0].keys() == ["cuid", "name", "public", "created"]  # no seed


def test_a_gap_in_migration_numbers_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from store import schema

    class Entry:
        def __init__(self, name: str) -> None:
            self.name = name

        def read_text(self, encoding: str) -> str:
            return "CREATE TABLE t (x);"

    class Folder:
        def iterdir(self) -> list[Entry]:
            return [Entry("001_core.sql"), Entry("003_late.sql")]

    monkeypatch.setattr(schema.resources, "files", lambda package: Folder())
    with pytest.raises(schema.SchemaError, match=r"003_late\.sql is out of sequence"):
        schema.migrations()


async def test_a_savepoint_undoes_its_block_alone_when_it_raises(tmp_path: Path) -> None:
    async with Database.open(tmp_path / "s.db") as db:
        def job(conn: sqlite3.Connection) -> None:
            _insert_meta("before")(conn)
            with pytest.raises(ValueError), savepoint(conn):
                _insert_meta("undone")(conn)
                raise ValueError("refused")
            with savepoint(conn):
                _insert_meta("kept")(conn)

        await db.write(job)
        assert _meta_keys(db) >= {"before", "kept"}
        assert "undone" not in _meta_keys(db)
        assert db.reading(lambda conn: users.all_users(conn)) == []


async def test_a_database_deleted_or_replaced_while_open_takes_no_more_writes(
        tmp_path: Path, monkeypatch) -> None:
    """What a node writes after its database file (or the WAL) was deleted or replaced would
    be lost at the next start: every later write fails, as a failure of ours, naming why,
    from the first (the files were looked at once a second: a write just after a deletion was
    told it had succeeded, and was lost)."""
    for victim in ("gone.db", "gone.db-wal"):
        path = tmp_path / "gone.db"
        async with Database.open(path) as db:
            await db.write(lambda c: inbox.claim(c, b"\x01" * 16, "p", 1))
            os.unlink(tmp_path / victim)
            with pytest.raises(DatabaseError, match=f"not written: .*{victim} was deleted"):
                await db.write(lambda c: inbox.claim(c, b"\x02" * 16, "p", 2))
            assert db.errors == 1 and "was deleted while the node ran" in db.last_error
        for leftover in tmp_path.glob("gone.db*"):
            leftover.unlink()
    early = tmp_path / "early.db"  # replaced before the first commit: the files as opened
    async with Database.open(early) as db:
        os.rename(early, tmp_path / "early-old.db")
        early.write_bytes(b"")
        with pytest.raises(DatabaseError, match=r"early\.db was replaced"):
            await db.write(lambda c: inbox.claim(c, b"\x01" * 16, "p", 1))
    path = tmp_path / "swapped.db"
    async with Database.open(path) as db:
        await db.write(lambda c: inbox.claim(c, b"\x01" * 16, "p", 1))
        os.rename(path, tmp_path / "old.db")
        path.write_bytes(b"")
        with pytest.raises(DatabaseError, match=r"swapped\.db was replaced"):
            await db.write(lambda c: inbox.claim(c, b"\x02" * 16, "p", 2))


def test_a_query_without_dates_reads_its_page_by_seq_not_the_whole_process(tmp_path: Path):
    """A query bound by no dates sorted every entry of the process (a temporary B-tree for
    ORDER BY seq over the timestamp index): 0.1 to 4.6 s of a clearing house's writer at
    100,000 to 1,000,000 entries, for a page of one, and a stranger owns processes of its
    own. Its page is now a range of seqs; the answers are what they were."""
    from store import clearing

    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    migrate(conn)
    clearing.create_process(conn, "big", ["a" * 43], 0)
    conn.executemany(
        "INSERT INTO ch_entries (pid, seq, prev_hash, timestamp, client_id, header,"
        " payload_sha256, payload_type, payload, entry_hash) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (("big", seq, "0" * 64, 1000 + seq // 3, "a" * 43, b"\x80", "0" * 64, "t", None,
          f"{seq:064x}") for seq in range(1, 1001)))

    def request(**given):
        return {"pid": "big", "page": 1, "size": 100, "sort": "desc", "date_from": None,
                "date_to": None, **given}

    def seqs(**given) -> tuple[list[int], int]:
        at = clearing.page(conn, request(**given))
        return [entry["seq"] for entry in clearing.query(conn, at)], at.total

    assert seqs(size=3) == ([1000, 999, 998], 1000)
    assert seqs(size=3, page=2, sort="asc") == ([4, 5, 6], 1000)
    assert seqs(size=300, page=4) == ([100, *range(99, 0, -1)], 1000)
    assert seqs(size=300, page=4, sort="asc") == (list(range(901, 1001)), 1000)
    assert seqs(size=10, page=10**9) == ([], 1000)
    assert seqs(size=3, date_from=1100, date_to=1101) == ([305, 304, 303], 6)  # dates: as before
    assert clearing.page(conn, request(size=3)).scanned == 0
    assert clearing.page(conn, request(size=3, page=2, date_from=1100, date_to=1101)
                         ).scanned == 6 + 3  # the 6 in the dates counted, then 3 skipped
    assert clearing.page_bytes(conn, clearing.page(conn, request(size=5))) == 5  # 1-byte headers
    for given in ({"page": 5}, {"page": 2, "date_from": 1100, "date_to": 1200}):
        at = clearing.page(conn, request(**given))
        plan = " ".join(row[3] for row in conn.execute(
            f"EXPLAIN QUERY PLAN SELECT seq FROM ch_entries WHERE {at.where}", at.values))
        assert "TEMP B-TREE" not in plan, (given, plan)  # with dates: 134-176 ms at 100,000


def test_a_request_from_before_migration_25_shows_its_inviter_agent_as_partner(tmp_path):
    """Migration 025 added the inviter's address to a request; one made before it has only
    the inviter's agent, which tally.list showed as no partner at all."""
    from store import credit

    conn = sqlite3.connect(tmp_path / "db")
    conn.row_factory = sqlite3.Row
    migrate(conn)
    conn.execute("INSERT INTO tally_requests (tally, cuid, inviter, created) VALUES "
                 "('t1', 'bob', 'AGENT', 1)")
    conn.execute("INSERT INTO tally_requests (tally, cuid, inviter, partner, created) VALUES "
                 "('t2', 'bob', 'AGENT', 'ann:AGENT@h:1', 2)")
    assert [row["partner"] for row in credit.list_requests(conn, "bob")] == [
        "AGENT", "ann:AGENT@h:1"]
