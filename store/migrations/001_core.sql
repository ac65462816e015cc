-- Core node state: metadata, known peers, hosted users, the transactional outbox and the
-- inbox used for exactly-once processing.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE peers (
    agent     TEXT PRIMARY KEY,
    name      TEXT,
    address   TEXT,
    last_seen INTEGER
) WITHOUT ROWID;

CREATE TABLE users (
    cuid    TEXT PRIMARY KEY,
    name    TEXT NOT NULL,
    seed    BLOB NOT NULL,
    public  BLOB NOT NULL,
    created INTEGER NOT NULL
) WITHOUT ROWID;

-- One row per message that must reach a peer. Written in the same transaction as the state
-- change that causes it; deleted when the peer acks it; kept with state 'failed' and the
-- peer's error when the peer rejects it for good.
CREATE TABLE outbox (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    id      BLOB NOT NULL UNIQUE,
    peer    TEXT NOT NULL,
    address TEXT,
    target  TEXT NOT NULL,
    action  TEXT NOT NULL,
    body    BLOB NOT NULL,
    tries   INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL,
    state   TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'failed')),
    error   TEXT
);
CREATE INDEX outbox_pending ON outbox (state, peer, seq);

-- Ids of messages already processed, so a redelivered message is acked and ignored.
CREATE TABLE inbox (
    id       BLOB PRIMARY KEY,
    peer     TEXT NOT NULL,
    received INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX inbox_received ON inbox (received);
