-- A referee forgets its void decisions a month past their record's deadline
-- (store.lifts.prune_void_decisions, hourly), and keeps its good ones for ever: without an
-- index the hourly look for old void rows read every decision it ever made. Only void rows
-- are in this one, so a good decision costs nothing more to write.
CREATE INDEX lift_decisions_void ON lift_decisions (created) WHERE state = 'void';
