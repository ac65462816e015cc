-- The clearing house (DESIGN §6): its side (processes, owners, the per-process hash chains,
-- the receipt-signing keyring) and every node's client side (requests it sent, the clearing
-- houses' JWKS, the receipts it keeps).

-- Clearing-house side -----------------------------------------------------------------------

CREATE TABLE ch_processes (
    pid     TEXT PRIMARY KEY,
    created INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE ch_owners (
    pid   TEXT NOT NULL REFERENCES ch_processes (pid),
    agent TEXT NOT NULL,
    PRIMARY KEY (pid, agent)
) WITHOUT ROWID;

-- One link of a process's chain. The primary key is UNIQUE(pid, seq): two appends can never
-- both become seq N, so the chain cannot fork. document_id is the entry hash.
CREATE TABLE ch_entries (
    pid            TEXT NOT NULL REFERENCES ch_processes (pid),
    seq            INTEGER NOT NULL CHECK (seq >= 1),
    prev_hash      TEXT NOT NULL,
    timestamp      INTEGER NOT NULL,
    client_id      TEXT NOT NULL,
    header         BLOB NOT NULL,  -- canonical msgpack map
    payload_sha256 TEXT NOT NULL,
    payload_type   TEXT NOT NULL,
    payload        BLOB,           -- NULL when the client logged the header or hash alone
    entry_hash     TEXT NOT NULL,
    PRIMARY KEY (pid, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX ch_entries_hash ON ch_entries (pid, entry_hash);
CREATE INDEX ch_entries_time ON ch_entries (pid, timestamp);

-- Every public key that has signed receipts here. The current one has retired = NULL; the
-- others stay in the JWKS forever so that old receipts keep verifying after a key change.
CREATE TABLE ch_keys (
    public  BLOB PRIMARY KEY,
    kid     TEXT NOT NULL UNIQUE,
    added   INTEGER NOT NULL,
    retired INTEGER
) WITHOUT ROWID;

-- Client side -------------------------------------------------------------------------------

-- Requests this node sent to a clearing house and has no answer for yet, plus evidence logs
-- not sent yet (state 'waiting': id NULL, object = the log request; they wait for their
-- process to be created, then for the next evidence batch) and evidence the clearing house
-- refused (state 'refused', kept for audits).
-- kind is NULL for requests made through the ch.* RPC methods.
CREATE TABLE ch_requests (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             BLOB UNIQUE,
    ch             TEXT NOT NULL,
    action         TEXT NOT NULL,
    pid            TEXT,
    kind           TEXT,
    ref            TEXT,
    payload_sha256 TEXT,
    object         BLOB,
    state          TEXT NOT NULL CHECK (state IN ('waiting', 'sent', 'refused')),
    error          TEXT,
    created        INTEGER NOT NULL
);
CREATE INDEX ch_requests_state ON ch_requests (state, ch, pid);

-- Processes this node asked a clearing house to create for its evidence: 'creating' until
-- the answer comes, then 'ready' (evidence logs are sent straight away).
CREATE TABLE ch_client_processes (
    ch    TEXT NOT NULL,
    pid   TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('creating', 'ready')),
    PRIMARY KEY (ch, pid)
) WITHOUT ROWID;

-- Each clearing house's JWKS (JSON), stored so that receipts verify with it down.
CREATE TABLE ch_jwks (
    ch      TEXT PRIMARY KEY,
    jwks    TEXT NOT NULL,
    updated INTEGER NOT NULL
) WITHOUT ROWID;

-- Every receipt this node received, beside the object it proves (kind, ref). status is the
-- check made on arrival: 'unchecked' while the JWKS that holds its key is being fetched.
CREATE TABLE receipts (
    request        BLOB PRIMARY KEY,  -- the id of the log request it answers
    ch             TEXT NOT NULL,
    pid            TEXT NOT NULL,
    seq            INTEGER,
    document_id    TEXT,
    token          TEXT NOT NULL,
    kind           TEXT NOT NULL,
    ref            TEXT,
    payload_sha256 TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('unchecked', 'valid', 'invalid')),
    problem        TEXT,
    received       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX receipts_pid ON receipts (pid, seq);
CREATE INDEX receipts_object ON receipts (kind, ref);
CREATE INDEX receipts_status ON receipts (status, ch);
