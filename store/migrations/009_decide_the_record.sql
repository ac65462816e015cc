-- A referee decides a lift's record, not its uuid.
--
-- A made-up record can carry a real lift's uuid: decided under the uuid alone, the first
-- record to arrive took the uuid's one decision, and a peer who knew the uuid could settle
-- someone else's lift. A decision now names its record's digest (protocol.lift.record_digest)
-- and is kept under (lift, record_hash), so each record gets its own decision and a
-- participant applies only the one on the record it holds. Decisions made before this have
-- record_hash X'': they are matched by their stored record and signed again on first use.
CREATE TABLE lift_decisions_by_record (
    lift        TEXT NOT NULL,
    record_hash BLOB NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('good', 'void')),
    decision    BLOB NOT NULL,
    record      BLOB NOT NULL,
    created     INTEGER NOT NULL,
    PRIMARY KEY (lift, record_hash)
);
INSERT INTO lift_decisions_by_record (lift, record_hash, state, decision, record, created)
    SELECT lift, X'', state, decision, record, created FROM lift_decisions;
DROP TABLE lift_decisions;
ALTER TABLE lift_decisions_by_record RENAME TO lift_decisions;
