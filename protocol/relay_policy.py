"""Access rules (who may read which views at a source) and verification policies (whose
notarizations a destination requires), matched by view pattern (sans-IO)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from protocol.keys import is_agent_id
from protocol.relay_address import MAX_VIEW_LENGTH, check_view, parse_view
from protocol.relay_fields import AddressError, Message, as_tuple, map_fields, require

_PATTERN_PREFIX = re.compile(r"[A-Za-z0-9_.:-]*")


def pattern_problem(pattern: object) -> str | None:
    """The problem with a view pattern (a view, or a prefix followed by one ``*``), or None."""
    if not isinstance(pattern, str):
        return "must be text"
    if "*" in pattern.removesuffix("*"):  # tally:*:chits: the parts check would say less
        return f"{pattern!r}: '*' may appear only once, at the end"
    if pattern.endswith("*"):
        prefix = pattern[:-1]
        if len(prefix) > MAX_VIEW_LENGTH or not _PATTERN_PREFIX.fullmatch(prefix):
            return f"{pattern!r}: '*' may appear only once, at the end, after view characters"
        return None
    try:
        check_view(pattern)
    except AddressError as exc:
        return str(exc).removeprefix("view ")  # after the key's name ("….view"), once
    return None


# What agentd's source serves (``relay_address.parse_view``), as a pattern's start must read.
SERVED = ("tally:", "user:", "lift:", "node:info")
SERVED_VIEWS = "tally:<uuid>, tally:<uuid>:chits, user:<cuid>:balance, lift:<uuid>, node:info"


def served_problem(pattern: object, server: str = "this node") -> str | None:
    """The problem with an access rule's ``resource`` or a verification policy's ``view``:
    a view pattern (``pattern_problem``) that can match a view ``server`` serves (an agentd
    node: every source serves the same kinds), or None. A mistyped view kind (``talley:*``,
    ``nothing:here``) granted nothing, or verified nothing, silently."""
    problem = pattern_problem(pattern)
    if problem is not None or not isinstance(pattern, str):
        return problem
    star = pattern.endswith("*")
    start = pattern[:-1] if star else pattern
    if not any((star and served.startswith(start))
               or (start.startswith(served) if served.endswith(":") else start == served)
               for served in SERVED):
        return (f"{pattern!r} matches no view {server} serves (views: {SERVED_VIEWS}; one "
                "'*' at the end matches a prefix)")
    if not star:  # a served kind: its argument as a view names it (a lowercase uuid, a cuid)
        try:
            parse_view(pattern)
        except AddressError as exc:
            return str(exc).removeprefix("view ")
    return None


def _match_rank(pattern: str, view: str) -> tuple[int, int] | None:
    """How specifically ``pattern`` matches ``view``: an exact match beats any ``*``, then the
    longest prefix wins; None when it does not match."""
    if pattern.endswith("*"):
        prefix = pattern[:-1]
        return (0, len(prefix)) if view.startswith(prefix) else None
    return (1, len(pattern)) if view == pattern else None


@dataclass(frozen=True)
class AccessRule(Message):
    """Lets ``principal`` (an agent id, or ``*`` for anyone) read views matching ``resource``."""

    principal: str
    resource: str

    def __post_init__(self) -> None:
        require(
            "AccessRule.principal",
            self.principal == "*" or is_agent_id(self.principal),
            "must be an agent id or '*'",
        )
        problem = pattern_problem(self.resource)
        require("AccessRule.resource", problem is None, problem or "")

    @classmethod
    def from_map(cls, value: object) -> AccessRule:
        return cls(**map_fields("AccessRule", value, ("principal", "resource")))


@dataclass(frozen=True)
class VerificationPolicy(Message):
    """Views matching ``view`` are accepted only when every agent in ``signers`` notarized them."""

    view: str
    signers: tuple[str, ...]

    def __post_init__(self) -> None:
        problem = pattern_problem(self.view)
        require("VerificationPolicy.view", problem is None, problem or "")
        require(
            "VerificationPolicy.signers",
            isinstance(self.signers, tuple)
            and bool(self.signers)
            and all(is_agent_id(signer) for signer in self.signers),
            "must be a non-empty list of agent ids (a view is never accepted unverified)",
        )

    @classmethod
    def from_map(cls, value: object) -> VerificationPolicy:
        items = map_fields("VerificationPolicy", value, ("view", "signers"))
        return cls(view=items["view"], signers=as_tuple(items["signers"]))  # type: ignore[arg-type]


def check_access(rules: Iterable[AccessRule], requestor_agent: str, view: str) -> bool:
    """True when some rule names this requestor (or ``*``) and a resource matching ``view``.

    Rules only grant, so the first match decides; with no matching rule the answer is no.
    """
    return any(
        rule.principal in ("*", requestor_agent) and _match_rank(rule.resource, view) is not None
        for rule in rules
    )


def required_signers(policies: Iterable[VerificationPolicy], view: str) -> list[str]:
    """The agents that must have notarized ``view``, from the most specific matching policy.

    An exact pattern beats any ``*`` pattern, then the longest prefix wins; policies repeating
    the winning pattern are merged (the stricter reading of a duplicated config entry). An
    empty list means no policy matches: the caller then requires the queried source agent.
    """
    best: tuple[int, int] | None = None
    signers: list[str] = []
    for policy in policies:
        rank = _match_rank(policy.view, view)
        if rank is None or (best is not None and rank < best):
            continue
        if rank != best:
            best, signers = rank, []
        signers.extend(signer for signer in policy.signers if signer not in signers)
    return signers
