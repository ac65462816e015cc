-- Clearing-house answers that never came (the LostAnswers task, agentd/services/clearing).
--
-- A clearing house keeps its answer (a receipt) for an hour; a client down longer never got
-- it, and its request stayed 'sent' for ever. `delivered` is when the client first saw the
-- request's message gone from its outbox (acked by the clearing house); a request still
-- unanswered an hour after that is sent again. A sent evidence log now keeps its object
-- until it is answered, so that it can be.
ALTER TABLE ch_requests ADD COLUMN delivered INTEGER;
