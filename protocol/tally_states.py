"""The tally state table: where one holder's tally can be, and which event moves it where.

A holder's state is a MyCHIPs ``phase.status.request`` code. :data:`TRANSITIONS` is the whole
table, kept apart from the events that use it (:mod:`protocol.tally`) so a reader sees every
guarded transition at a glance: :func:`next_state` looks an event up and refuses one the table
does not list for the current state (``bad_state``), so late, duplicate or replayed messages
change nothing. The ``status.request`` states (``draft.offer``, ``offer.open``,
``offer.void``, ``offer.draft``) mean "our decision is made and its message is queued": the
node's ``delivered`` or ``rejected`` report settles them.
"""

from __future__ import annotations

from .errors import Refusal

DRAFT = "draft"  # no partner yet, or the partner holds the pen after countering our offer
P_DRAFT = "P.draft"  # partner known, our user edits and offers
DRAFT_OFFER = "draft.offer"  # we signed and offered; the offer is not yet delivered
H_OFFER = "H.offer"  # our offer (holder's signature) waits for the partner
P_OFFER = "P.offer"  # the partner's offer waits for our user
B_OFFER = "B.offer"  # both signatures, but the partner's node rejected our acceptance
OFFER_OPEN = "offer.open"  # we accepted; the acceptance is not yet delivered
OFFER_VOID = "offer.void"  # we refused; the refusal is not yet delivered
OFFER_DRAFT = "offer.draft"  # we countered; the notice is not yet delivered
OPEN = "open"
C_OPEN = "C.open"  # closing: open until the balance reaches zero
CLOSE = "close"
VOID = "void"

STATES = (
    DRAFT,
    P_DRAFT,
    DRAFT_OFFER,
    H_OFFER,
    P_OFFER,
    B_OFFER,
    OFFER_OPEN,
    OFFER_VOID,
    OFFER_DRAFT,
    OPEN,
    C_OPEN,
    CLOSE,
    VOID,
)

# (state, event) -> new state. ``None`` is "no local tally yet". Events are the local user's
# actions, "got X" for the partner's message X, and the node's own reports.
TRANSITIONS: dict[tuple[str | None, str], str] = {
    # the local user
    (None, "invite"): DRAFT,
    (DRAFT, "edit"): DRAFT,
    (P_DRAFT, "edit"): P_DRAFT,
    (P_DRAFT, "offer"): DRAFT_OFFER,
    (P_OFFER, "accept"): OFFER_OPEN,
    (B_OFFER, "accept"): OFFER_OPEN,  # send the acceptance again
    (P_OFFER, "refuse"): OFFER_VOID,
    (B_OFFER, "refuse"): OFFER_VOID,
    (DRAFT, "refuse"): VOID,  # our invitation withdrawn, while no ticket has come for it
    (P_DRAFT, "refuse"): VOID,  # a ticket's request turned down, before any offer of it
    (P_DRAFT, "give up"): OFFER_VOID,  # our counter-draft given up: the partner is told
    (DRAFT, "give up"): OFFER_VOID,  # the partner's counter-draft given up: it is told
    (P_OFFER, "counter"): OFFER_DRAFT,
    (OPEN, "close"): C_OPEN,
    # the partner's messages
    (DRAFT, "got ticket"): P_DRAFT,
    (None, "got offer"): P_OFFER,
    (DRAFT, "got offer"): P_OFFER,  # the counter-offer after the partner's counter notice
    (DRAFT_OFFER, "got offer"): P_OFFER,  # a counter-offer that overtook its notice
    (H_OFFER, "got offer"): P_OFFER,
    (DRAFT_OFFER, "got open"): OPEN,
    (H_OFFER, "got open"): OPEN,
    (DRAFT_OFFER, "got void"): VOID,
    (H_OFFER, "got void"): VOID,
    (DRAFT, "got void"): VOID,  # the partner gave up the counter-draft it holds the pen of
    (P_DRAFT, "got void"): VOID,  # the partner gave up the counter-draft we hold the pen of
    (OFFER_DRAFT, "got void"): VOID,  # ... before our counter's notice was acked
    (DRAFT_OFFER, "got draft"): DRAFT,
    (H_OFFER, "got draft"): DRAFT,
    (OPEN, "got close"): C_OPEN,
    (C_OPEN, "got close"): C_OPEN,  # both users asked to close at once
    # the node: what became of our queued message, and the zero balance
    (DRAFT_OFFER, "delivered"): H_OFFER,
    (OFFER_OPEN, "delivered"): OPEN,
    (OFFER_VOID, "delivered"): VOID,
    (OFFER_DRAFT, "delivered"): P_DRAFT,
    (DRAFT_OFFER, "rejected"): P_DRAFT,
    (OFFER_OPEN, "rejected"): B_OFFER,
    (OFFER_VOID, "rejected"): VOID,
    (OFFER_DRAFT, "rejected"): P_DRAFT,
    (C_OPEN, "settle"): CLOSE,
    (CLOSE, "reopen"): C_OPEN,  # a partner's chit that was in flight when the tally closed
}

# States in which both users have signed and the tally binds its holder.
BINDING_STATES = frozenset({OFFER_OPEN, OPEN, C_OPEN, CLOSE})


def next_state(state: str | None, event: str) -> str:
    """The state ``event`` moves a tally in ``state`` to, or ``bad_state`` if it may not."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise Refusal("bad_state", f"cannot {event} a tally in state {state or 'none'}") from None
