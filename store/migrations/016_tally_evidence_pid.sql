-- Where a tally's evidence goes at the clearing house (agentd/services/credit/ledger.py).
--
-- Under the bare tally uuid, which anyone who saw the ticket can work out, whoever created the
-- process first owned it alone, and every piece of the partners' evidence was refused; a node
-- now logs it under AGENT/TALLY, in its own namespace, which nobody else may create. A tally
-- whose evidence this node had logged under the bare uuid (a receipt, or a request not
-- answered yet) is listed here and keeps logging there, so its chain of evidence stays in one
-- process; one whose every log was refused (its process taken by another) is not: what it
-- logs from now on goes to the new process.
CREATE TABLE tally_evidence_bare (
    tally TEXT PRIMARY KEY
) WITHOUT ROWID;
INSERT INTO tally_evidence_bare (tally)
SELECT DISTINCT uuid FROM tallies WHERE uuid IN (
    SELECT pid FROM receipts WHERE kind != 'ch.log'
    UNION SELECT pid FROM ch_requests WHERE kind IS NOT NULL AND state IN ('waiting', 'sent'));
