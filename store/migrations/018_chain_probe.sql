-- Once a start a node asks each tally partner on another node whether it holds blocks the
-- node lacks (protocol.chain.probe). A partner that is away, or never acks, left each
-- start's probe waiting in the outbox (tally and chit messages never expire): one row more
-- per tally at every start, for ever. Each chain keeps the id of its last probe, and the
-- next start's probe takes its place while it still waits.
ALTER TABLE tallies ADD COLUMN chain_probe BLOB;
