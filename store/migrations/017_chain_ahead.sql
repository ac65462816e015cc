-- A holder restored from a backup lost blocks its partner still holds (protocol/chain.py).
--
-- It learns so from the partner's `conf` (a foil's past the stock's head; a stock's past the
-- foil's own `conf`) and asks for the blocks a hundred at a time; a request whose answer was
-- not written (the partner answers a few repairs at a time) must be asked again by the chain
-- repair, so each holder keeps its partner's `conf` as last heard (`chain_ahead`), and a
-- chain that has not caught up with it is not settled: the partial index of the chains the
-- repair looks at takes it in.
ALTER TABLE tallies ADD COLUMN chain_ahead INTEGER NOT NULL DEFAULT 0;
DROP INDEX tallies_unsettled;
CREATE INDEX tallies_unsettled ON tallies (resync_due)
    WHERE chain_origin IS NOT NULL
    AND (chain_conf < chain_length OR chain_pending > 0 OR chain_ahead > chain_conf);
