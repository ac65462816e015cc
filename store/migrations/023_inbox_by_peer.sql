-- A peer's processed-message ids by when they came: the inbox keeps at most the newest
-- `inbox_per_peer` of any one peer (agentd.runtime.peer_rows), as well as 30 days of
-- them. Without a bound per peer, a peer we know (a tally partner: no write ration applies
-- to it) could have us keep an id for every message it sent in 30 days, as fast as it could
-- send them.
CREATE INDEX inbox_peer ON inbox (peer, received);
