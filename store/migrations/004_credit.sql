-- Credit (MyCHIPs tallies and chits), DESIGN.md §4.
--
-- tallies: one row per holder, keyed (uuid, cuid), so a tally between two users of this node
-- has two rows, one per side. `body` is the shared tally map (msgpack), `state` the MyCHIPs
-- state code, `partner`/`partner_cuid` the other holder once known. `balance` (integer
-- milliCHIPs, what the partner owes this holder) moves with every chit that becomes good.
-- The chain_* columns are the small part of protocol.chain.Chain (its chits are rows of
-- `chits`): block 0 (`chain_origin`, NULL until both users signed), length, head hash, the
-- index the partner confirmed, and how many good chits wait unlinked. `token` is random and
-- changes with every write to the row: the writer's in-memory copy of a chain is used only
-- while the stored token equals the one it was cached with. `resync_due`/`resync_tries`
-- pace the repair of an unsettled chain (protocol.chain.resync); `error` keeps the
-- partner's last refusal of one of our messages.
CREATE TABLE tallies (
    uuid          TEXT NOT NULL,
    cuid          TEXT NOT NULL REFERENCES users (cuid),
    side          TEXT NOT NULL CHECK (side IN ('stock', 'foil')),
    state         TEXT NOT NULL,
    partner       TEXT,
    partner_cuid  TEXT,
    body          BLOB NOT NULL,
    balance       INTEGER NOT NULL DEFAULT 0,
    chain_origin  BLOB,
    chain_length  INTEGER NOT NULL DEFAULT 0,
    chain_head    BLOB,
    chain_conf    INTEGER NOT NULL DEFAULT 0,
    chain_pending INTEGER NOT NULL DEFAULT 0,
    resync_due    INTEGER NOT NULL DEFAULT 0,
    resync_tries  INTEGER NOT NULL DEFAULT 0,
    token         BLOB NOT NULL,
    error         TEXT,
    created       INTEGER NOT NULL,
    updated       INTEGER NOT NULL,
    PRIMARY KEY (uuid, cuid)
) WITHOUT ROWID;
CREATE INDEX tallies_cuid ON tallies (cuid, created);
CREATE INDEX tallies_unsettled ON tallies (resync_due)
    WHERE chain_origin IS NOT NULL AND (chain_conf < chain_length OR chain_pending > 0);

-- chits: one row per chit a holder knows, in any state (A./L. pend, good, void). `body` is
-- the chit map with its chain block cleared (msgpack); `block` is the block it carries (the
-- foil's order, msgpack) and `chain_index`/`chain_hash` where it is linked in this holder's
-- chain, NULL while it is not. `seq` is arrival order, the order of unlinked good chits.
CREATE TABLE chits (
    seq         INTEGER PRIMARY KEY,
    tally       TEXT NOT NULL,
    cuid        TEXT NOT NULL,
    uuid        TEXT NOT NULL,
    issuer      TEXT NOT NULL CHECK (issuer IN ('stock', 'foil')),
    type        TEXT NOT NULL,
    units       INTEGER NOT NULL,
    memo        TEXT NOT NULL,
    date        INTEGER NOT NULL,
    state       TEXT NOT NULL,
    hash        BLOB NOT NULL,
    body        BLOB NOT NULL,
    block       BLOB,
    chain_index INTEGER,
    chain_hash  BLOB,
    error       TEXT,
    created     INTEGER NOT NULL,
    updated     INTEGER NOT NULL,
    UNIQUE (cuid, uuid, tally),  -- also finds a user's chit by its uuid alone
    FOREIGN KEY (tally, cuid) REFERENCES tallies (uuid, cuid)
);
CREATE INDEX chits_chain ON chits (tally, cuid, chain_index);

-- tickets: invitations made by tally.invite. A one-time ticket puts its subject into the
-- draft `tally` itself; a reusable one clones that draft for each subject. `used` counts
-- the tallies it started.
CREATE TABLE tickets (
    token   TEXT PRIMARY KEY,
    tally   TEXT NOT NULL,
    cuid    TEXT NOT NULL,
    reuse   INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    used    INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL,
    FOREIGN KEY (tally, cuid) REFERENCES tallies (uuid, cuid)
) WITHOUT ROWID;
