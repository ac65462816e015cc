-- The owners a process was asked for with (canonical msgpack list of agent ids), beside its
-- state at a clearing house (ch_client_processes). When [clearinghouse] changes, the evidence
-- still waiting moves to the new clearing house (agentd/services/clearing/moves.py), which is
-- asked to create the process again with the same owners: without them the first log would
-- create it with this node as its sole owner, and the partner's logs would be refused.
-- A process created before this version has none: it is created again with this node alone.
ALTER TABLE ch_client_processes ADD COLUMN owners BLOB;
