-- A requestor's nonces by when they came: the relay's replay cache keeps at most the newest
-- NONCES_PER_REQUESTOR of one requestor (agentd.runtime.peer_rows), as well as a week of
-- them. A peer we know (no write ration) sent ~1,900 queries a second, each a row kept a
-- week: ~1.6 GB an hour.
CREATE INDEX relay_nonces_requestor ON relay_nonces (requestor, seen);
