-- Receipts (a ~1 KB token each), chain entries (a payload of up to a quarter of a frame)
-- and relay requests (a notarized view) are rows too large for WITHOUT ROWID tables, which
-- keep whole rows in the primary-key B-tree: a receipt's random request id made each insert
-- split pages of big rows (about five times the cost of a rowid insert, measured). Rebuilt
-- as rowid tables, with the same keys as unique indexes.

CREATE TABLE receipts_rowid (
    request        BLOB NOT NULL UNIQUE,  -- the id of the log request it answers
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
);
INSERT INTO receipts_rowid (request, ch, pid, seq, document_id, token, kind, ref,
                            payload_sha256, status, problem, received)
    SELECT request, ch, pid, seq, document_id, token, kind, ref, payload_sha256, status,
           problem, received
    FROM receipts;
DROP TABLE receipts;
ALTER TABLE receipts_rowid RENAME TO receipts;
CREATE INDEX receipts_pid ON receipts (pid, seq);
CREATE INDEX receipts_object ON receipts (kind, ref);
-- Only receipts waiting for their clearing house's JWKS are looked up by status, and they
-- are few: index those alone.
CREATE INDEX receipts_unchecked ON receipts (ch) WHERE status = 'unchecked';

CREATE TABLE ch_entries_rowid (
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
    UNIQUE (pid, seq)              -- two appends can never both become seq N: no fork
);
INSERT INTO ch_entries_rowid (pid, seq, prev_hash, timestamp, client_id, header,
                              payload_sha256, payload_type, payload, entry_hash)
    SELECT pid, seq, prev_hash, timestamp, client_id, header, payload_sha256, payload_type,
           payload, entry_hash
    FROM ch_entries ORDER BY pid, seq;
DROP TABLE ch_entries;
ALTER TABLE ch_entries_rowid RENAME TO ch_entries;
CREATE UNIQUE INDEX ch_entries_hash ON ch_entries (pid, entry_hash);
CREATE INDEX ch_entries_time ON ch_entries (pid, timestamp);

-- Likewise the relay's requests, which keep the notarized view and the result.
CREATE TABLE relay_requests_rowid (
    request_id   TEXT NOT NULL UNIQUE,
    status       INTEGER NOT NULL,
    source       TEXT NOT NULL,
    address      TEXT NOT NULL,
    nonce        TEXT NOT NULL,
    confidential INTEGER NOT NULL,
    required     TEXT NOT NULL,
    query_id     BLOB NOT NULL,
    deadline     INTEGER NOT NULL,
    view         BLOB,
    result       BLOB,
    signers      TEXT,
    error        TEXT,
    created      INTEGER NOT NULL,
    updated      INTEGER NOT NULL
);
INSERT INTO relay_requests_rowid (request_id, status, source, address, nonce, confidential,
                                  required, query_id, deadline, view, result, signers, error,
                                  created, updated)
    SELECT request_id, status, source, address, nonce, confidential, required, query_id,
           deadline, view, result, signers, error, created, updated
    FROM relay_requests ORDER BY created;
DROP TABLE relay_requests;
ALTER TABLE relay_requests_rowid RENAME TO relay_requests;
CREATE INDEX relay_requests_deadline ON relay_requests (status, deadline);
CREATE INDEX relay_requests_updated ON relay_requests (status, updated);
