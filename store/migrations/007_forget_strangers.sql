-- Strangers stored by older versions, forgotten (issue 12).
--
-- Before strangers lived in a bounded in-memory table, every handshake stored the peer and
-- the `listen` address its hello claimed: such a row has no name, and at start it made the
-- stranger "known" (dialled at the address it chose, found by relay.query HOST:PORT). A row
-- is kept when something of ours names its agent: a name (a configured peer, or one a user
-- named), a tally partner (its address came with a ticket), a lift referee. Configured peers
-- are stored again at every start, so nothing the config file says is lost.
DELETE FROM peers
WHERE name IS NULL
  AND agent NOT IN (SELECT partner FROM tallies WHERE partner IS NOT NULL)
  AND agent NOT IN (SELECT referee FROM lifts);
