-- Only receipts waiting for their clearing house's JWKS are ever looked up by status, and
-- they are few: index those alone, so storing a verified receipt skips this index.
DROP INDEX receipts_status;
CREATE INDEX receipts_unchecked ON receipts (ch) WHERE status = 'unchecked';
