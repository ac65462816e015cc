-- Routes and lifts, DESIGN.md §4.
--
-- tallies gain what route discovery reads with one indexed query instead of unpacking every
-- tally body: `lim` (the most the partner may owe this holder: our side's terms.limit) and
-- `partner_limit` (the most this holder may owe the partner), kept in step with `body` by
-- store.credit (NULL on rows made before this migration until the node's first start fills
-- them); and the capacity pending lift chits hold: `lift_in` (units the partner pays us in
-- pending lift chits) and `lift_out` (units we pay it), counted as already spent.
ALTER TABLE tallies ADD COLUMN lim INTEGER;
ALTER TABLE tallies ADD COLUMN partner_limit INTEGER;
ALTER TABLE tallies ADD COLUMN lift_in INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tallies ADD COLUMN lift_out INTEGER NOT NULL DEFAULT 0;
CREATE INDEX tallies_routes ON tallies (cuid, state);

-- chits.lift: the lift a lift chit belongs to (its ref.lift), to find every chit of a lift.
ALTER TABLE chits ADD COLUMN lift TEXT;
CREATE INDEX chits_lift ON chits (lift) WHERE lift IS NOT NULL;

-- lifts: every lift this node takes part in (as payor, intermediary or payee of one or more
-- of its users). `record` is the payor's signed lift record (msgpack); `state` pend, good or
-- void; `decision` the referee's signed decision once applied; `query_due` when a pending
-- lift past its deadline next asks the referee (`query_tries` paces it).
CREATE TABLE lifts (
    lift        TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('linear', 'circular')),
    state       TEXT NOT NULL CHECK (state IN ('pend', 'good', 'void')),
    units       INTEGER NOT NULL,
    payor       TEXT,             -- our user who pays, when the lift started here
    referee     TEXT NOT NULL,
    deadline    INTEGER NOT NULL,
    record      BLOB NOT NULL,
    decision    BLOB,
    query_due   INTEGER NOT NULL,
    query_tries INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    created     INTEGER NOT NULL,
    updated     INTEGER NOT NULL
);
CREATE INDEX lifts_due ON lifts (query_due) WHERE state = 'pend';

-- lift_decisions: the lifts this node referees, decided once and kept forever (asking again
-- gets the same signed answer).
CREATE TABLE lift_decisions (
    lift     TEXT PRIMARY KEY,
    state    TEXT NOT NULL CHECK (state IN ('good', 'void')),
    decision BLOB NOT NULL,
    record   BLOB NOT NULL,
    created  INTEGER NOT NULL
);
