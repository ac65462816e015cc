"""The chit state table: where one holder's chit can be, which event moves it where, and in
which tally states chits move at all.

A holder's chit state has a prefix that says whose pledge it is: ``A.`` an asset (the partner
pays us), ``L.`` a liability (we pay the partner). :data:`TRANSITIONS` is the whole table,
kept apart from the events that use it (:mod:`protocol.chit`, :mod:`protocol.chit_lift`) so a
reader sees every guarded transition at a glance; :func:`next_state` refuses an event the table
does not list (``bad_state``), and :func:`require_tally` one on a tally that takes no chits
(:func:`require_issue` for our own user's, saying what to do instead).
"""

from __future__ import annotations

from .errors import Refusal
from .tally_hints import hint
from .tally_local import LocalTally
from .tally_states import C_OPEN, CLOSE, OFFER_OPEN, OPEN

A_PEND = "A.pend"  # our invoice waits for the payer
L_PEND = "L.pend"  # the partner's invoice waits for our user
A_GOOD = "A.good"
L_GOOD = "L.good"
A_VOID = "A.void"  # our invoice was refused
L_VOID = "L.void"  # we refused the partner's invoice
A_LIFT = "A.lift"  # a pending lift chit the partner pays us
L_LIFT = "L.lift"  # a pending lift chit we pay the partner
STATES = (A_PEND, L_PEND, A_GOOD, L_GOOD, A_VOID, L_VOID, A_LIFT, L_LIFT)

# (state, event) -> new state; ``None`` is "no local chit yet".
TRANSITIONS: dict[tuple[str | None, str], str] = {
    (None, "pay"): L_GOOD,
    (None, "invoice"): A_PEND,
    (L_PEND, "accept"): L_GOOD,
    (L_PEND, "refuse"): L_VOID,
    (None, "got pend"): L_PEND,
    (None, "got good"): A_GOOD,
    (A_PEND, "got good"): A_GOOD,
    (A_PEND, "got void"): A_VOID,
    # lift chits: pending from the promise, settled by the referee's decision
    (None, "lift out"): L_LIFT,
    (None, "lift in"): A_LIFT,
    (L_LIFT, "lift good"): L_GOOD,
    (A_LIFT, "lift good"): A_GOOD,
    (L_LIFT, "lift void"): L_VOID,
    (A_LIFT, "lift void"): A_VOID,
}

ISSUE_STATES = frozenset({OPEN, C_OPEN})  # tally states in which our user may pledge value
# ... and in which the partner's chits are taken (an acceptor in offer.open is already bound).
# A partner's chit is its word in every binding state; on a closed tally it reopens it
# (``protocol.tally.reopen``): the partner signed it before it learned of the close.
RECEIVE_STATES = frozenset({OFFER_OPEN, OPEN, C_OPEN, CLOSE})


def next_state(state: str | None, event: str) -> str:
    """The state ``event`` moves a chit in ``state`` to, or ``bad_state`` if it may not."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise Refusal("bad_state", f"cannot {event} a chit in state {state or 'none'}") from None


def require_tally(local: LocalTally, states: frozenset[str]) -> None:
    """Refuse a chit event on a tally whose state is not one of ``states``."""
    if local.state not in states:
        raise Refusal("bad_state", f"tally {local.uuid} is {local.state}: no chits now")


def require_issue(local: LocalTally) -> None:
    """Refuse our user's chit (a payment, an invoice or its acceptance) on a tally that takes
    none, saying what the tally's state means and what to do: "tally T is P.offer: no chits
    now" left the user to find out that the partner's offer waits for an answer."""
    if local.state not in ISSUE_STATES:
        told = hint(local.state, local.tally[local.partner_side]["cert"] is not None)
        raise Refusal("bad_state", f"tally {local.uuid} is {local.state}: our user's chits "
                                   f"move only on an open tally; {told}")
