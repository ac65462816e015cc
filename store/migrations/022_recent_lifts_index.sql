-- The lifts that came over a tally, by when they last changed: a partner's promises may name
-- at most 4 referees that never answered this node among those lifts pending or decided in
-- the last hour (protocol.lift.check_held). Counting the pending ones alone let a partner
-- that voids its own lifts (with a made-up referee's key) have the node dial a new address
-- of its choosing at each lift, without end.
CREATE INDEX lifts_recent ON lifts (via_tally, via_cuid, updated);
