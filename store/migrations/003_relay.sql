-- Relay (Weaver data sharing), DESIGN.md §5.
--
-- relay_requests: the destination side, one row per relay.query this node made. status is
-- Weaver's RequestState number (0 PENDING_ACK, 1 PENDING, 2 ERROR, 3 COMPLETED, 7 DELETED)
-- and only moves forward (UPDATE ... WHERE status IN (...)). `source` is the agent the Query
-- went to, the only one whose ack or view is accepted. `required` lists (comma-separated)
-- the agents that must have notarized the view; `signers` those that did. `view` is the
-- notarized View as received (msgpack), `result` the ledger's answer in clear (decrypted
-- when confidential). `query_id` is the outbox id of the Query, withdrawn at the deadline.
CREATE TABLE relay_requests (
    request_id   TEXT PRIMARY KEY,
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
) WITHOUT ROWID;
CREATE INDEX relay_requests_deadline ON relay_requests (status, deadline);
CREATE INDEX relay_requests_updated ON relay_requests (status, updated);

-- relay_nonces: the source side's replay cache. A (requestor, nonce) pair is admitted once;
-- rows older than the retention window are pruned by the sweep.
CREATE TABLE relay_nonces (
    requestor  TEXT NOT NULL,
    nonce      TEXT NOT NULL,
    request_id TEXT NOT NULL,
    seen       INTEGER NOT NULL,
    PRIMARY KEY (requestor, nonce)
) WITHOUT ROWID;
CREATE INDEX relay_nonces_seen ON relay_nonces (seen);
