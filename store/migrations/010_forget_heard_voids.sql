-- Voids heard of on lifts this node held nothing of, forgotten.
--
-- A node told of a void decision on a lift it never saw used to keep a row for it for ever
-- (so a promise that came late was refused), and anyone who signs records as their own
-- referee could make it keep as many as they liked. Such a void is now remembered in memory
-- only, bounded, and only while the lift could still come (protocol: a promise past its
-- deadline is refused anyway). The rows kept before go: a row with no payor and no chits.
DELETE FROM lifts
WHERE payor IS NULL
  AND NOT EXISTS (SELECT 1 FROM chits WHERE chits.lift = lifts.lift);
