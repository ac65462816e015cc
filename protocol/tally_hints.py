"""What a user can do about a tally in a state that refuses what it asked (``tally.offer``,
``.accept``, ``.refuse``, ``.counter``, ``.close``): "cannot offer a tally in state draft"
alone does not say that nobody has presented the ticket yet, nor what to do about it.

Keyed by the state codes of :mod:`protocol.tally_states`, written out here;
``tests/test_credit_tally.py`` checks that they are its states.
"""

from __future__ import annotations

WAIT_OFFER = "tally.wait state=P.offer waits for it"

HINTS: dict[str, str] = {
    "P.draft": "it is ours to offer: tally.offer signs it and sends it to the partner (or "
               "tally.refuse gives it up)",
    "draft.offer": "our offer is on its way to the partner, who accepts, refuses or counters "
                   "it (tally.wait shows when)",
    "H.offer": "our offer waits for the partner, who accepts, refuses or counters it "
               "(tally.wait shows when)",
    "P.offer": "the partner's offer waits for us: tally.accept, tally.refuse or tally.counter",
    "B.offer": "the partner's node turned our acceptance down: tally.accept again, or "
               "tally.refuse",
    "offer.open": "we accepted it; the acceptance is on its way to the partner's node",
    "offer.void": "we refused it; the refusal is on its way to the partner's node",
    "offer.draft": "we countered it; the partner's node is being told, then it is ours to "
                   "offer (tally.offer)",
    "open": "it is open: chits move on it, and tally.close closes it",
    "C.open": "it is closing, until its balance reaches zero",
    "close": "it is closed: tally.invite starts another",
    "void": "it is void, and nothing more happens to it: tally.invite starts another",
}


def hint(state: str, has_partner: bool) -> str:
    """What the user can do about a tally in ``state`` (``has_partner``: the partner's
    certificate is in it), said after the refusal."""
    if state != "draft":
        return HINTS.get(state, "")
    if has_partner:
        return (f"the partner countered our offer and offers next ({WAIT_OFFER}; "
                "tally.refuse gives the tally up, and tells the partner)")
    return ("nobody has requested it yet: hand the ticket tally.invite printed to the partner, "
            "whose node presents it with tally.request; then tally.offer (or tally.refuse "
            "withdraws the invitation)")
