-- Referees of lifts decided here, forgotten (the red team of the twenty-fifth session).
--
-- A hop learnt the referee of every lift it took part in, and kept it as a known peer for
-- good: a partner's promises, each naming a made-up referee that it then voided itself with
-- that referee's key, left a row each (and each such agent passed the limits a stranger
-- meets). A referee is known now only while a lift pending here names it
-- (agentd.runtime.peer_admin.forget_referee). A row is kept when something else names its
-- agent: a name (a configured peer, or one a user named), a tally partner, a pending lift.
-- Configured peers and the clearing house are stored again at every start.
DELETE FROM peers
WHERE name IS NULL
  AND agent IN (SELECT referee FROM lifts)
  AND agent NOT IN (SELECT referee FROM lifts WHERE state = 'pend')
  AND agent NOT IN (SELECT partner FROM tallies WHERE partner IS NOT NULL);
