-- Void lifts are kept 30 days, then forgotten with their void lift chits (which never enter
-- a chain): each one a partner's promise made us hold would otherwise stay for good. This
-- index finds them without reading every lift (good ones, the history, are kept).
CREATE INDEX lifts_void ON lifts (updated) WHERE state = 'void';
