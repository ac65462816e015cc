-- A lift referee that equivocated (protocol/lift_equivocation.py, agentd/services/credit/
-- lift_decisions.py): it signed both good and void on one lift record.
--
-- `lifts.contradicted`: the referee's decision that lost, once a node holds both (the one
-- applied stays in `decision`, and is the good one): lift.show's `equivocation`.
-- `equivocators`: the referees proven to have equivocated on a lift this node took part in,
-- each with its first proof (msgpack {record, good, void}); a promise naming one is refused,
-- and so is a lift of ours. The node keeps the newest 1,024 (agentd: MAX_EQUIVOCATORS).
ALTER TABLE lifts ADD COLUMN contradicted BLOB;
CREATE TABLE equivocators (
    referee TEXT PRIMARY KEY,
    lift    TEXT NOT NULL,
    proof   BLOB NOT NULL,
    created INTEGER NOT NULL
);
CREATE INDEX equivocators_created ON equivocators (created);
