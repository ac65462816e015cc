-- What promises over one incoming tally make a node hold (agentd/services/credit/lifts.py).
--
-- A hop cannot void a lift on its own (its referee may have decided good), so a partner whose
-- promises named referees that never answer made the node hold their lifts, and ask (dial)
-- those referees at the addresses the records named, without end. A lift a promise brought
-- now remembers the tally it came over (`via_tally`, held by our user `via_cuid`; NULL for a
-- lift our user started) and where its record says the referee listens (`referee_at`,
-- HOST:PORT, NULL when it says nowhere), and `lifts_held` counts a tally's pending lifts and
-- lists their referees from the index alone (`state` in it makes it covering). Pending lifts
-- from before this version get their tally from their incoming pending chit; their referee_at
-- stays NULL (taken as the address the node knows for their referee).
ALTER TABLE lifts ADD COLUMN via_tally TEXT;
ALTER TABLE lifts ADD COLUMN via_cuid TEXT;
ALTER TABLE lifts ADD COLUMN referee_at TEXT;
UPDATE lifts SET (via_tally, via_cuid) = (
    SELECT tally, cuid FROM chits
    WHERE chits.lift = lifts.lift AND chits.state = 'A.lift' ORDER BY seq LIMIT 1)
WHERE state = 'pend' AND payor IS NULL;
CREATE INDEX lifts_held ON lifts (via_tally, via_cuid, referee, referee_at, state)
    WHERE state = 'pend';
