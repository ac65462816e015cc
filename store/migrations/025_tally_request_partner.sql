-- The inviter a request was presented to, as its ticket names it (cuid:agent@host:port), so
-- tally.list and tally.show can show a requested tally's partner before the offer brings the
-- tally itself. A request made before this version has none: its inviter agent shows instead.
ALTER TABLE tally_requests ADD COLUMN partner TEXT;
