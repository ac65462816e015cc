-- A partner's `conf` past the blocks a holder holds (chain_ahead, migration 017) has the
-- holder ask for the blocks at every repair, its chain not settled, until they come. A
-- partner that lies about its `conf` would keep the chain from settling (and the tally from
-- closing) for ever, at one small request a minute. Each chain counts the repairs that asked
-- since it last grew (a block linked, or one more confirmed): past a few, the holder gives
-- the claim up, and believes no further one until the chain grows again
-- (agentd.services.credit.repair).
ALTER TABLE tallies ADD COLUMN chain_asked INTEGER NOT NULL DEFAULT 0;
