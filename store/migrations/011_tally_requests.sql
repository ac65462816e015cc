-- tally_requests: the tickets our users presented (tally.request), by the tally each leads to
-- and the inviter's agent. A first offer of a tally (one we hold no row of) is taken only when
-- it answers one of them, and the row goes then: without it, anyone who had one of our users'
-- certificates could make us keep as many offers nobody asked for as they liked, for ever.
-- A ticket presented before this version has no row, so its offer is refused
-- (NOT_REQUESTED): the inviter makes a new ticket.
CREATE TABLE tally_requests (
    tally    TEXT NOT NULL,
    cuid     TEXT NOT NULL,
    inviter  TEXT NOT NULL,
    created  INTEGER NOT NULL,
    PRIMARY KEY (tally, cuid)
);
