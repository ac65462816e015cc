"""Typed outgoing messages: what a protocol decision asks the runtime to send, and to whom.

A transition returns ``Send`` events (like h11's events) instead of untyped dicts bound
implicitly for somebody: the recipient is part of the value, so the runtime never guesses.
``to`` is a ``ChipAddress`` (``cuid`` names the user the message is for, ``None`` the node
itself); ``from_cuid`` is our user it comes from, if any. The runtime queues each one in the
outbox in the transaction that made it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .keys import ChipAddress


@dataclass(frozen=True)
class Send:
    """Queue ``{target, action, object}`` for ``to``, from our user ``from_cuid``."""

    to: ChipAddress
    target: str
    action: str
    object: dict[str, Any] = field(default_factory=dict)
    from_cuid: str | None = None
