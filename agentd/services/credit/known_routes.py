"""Routes our users' lifts took, remembered so the next lift to the same payee (or round the
same circle) can check that route again with a directed query instead of a flood.

Only a route whose lift ended ``good`` is remembered, so a partner's made-up answer, or a hop
that refuses promises, is never tried twice; a route whose lift went ``void`` is forgotten.
A directed check that finds nothing forgets the route and leaves its payee to the flood for
``COOL_S`` (a node on the way that does not take directed queries costs one try a minute, not
one a lift). While our own lifts along a route are undecided, the units they hold are counted
against what a check finds there, so several lifts at once do not all pile onto one route the
flood could have spread.

A route a search found is only what the users on it said: one of them may have made up the
rest (a hop that does not exist, or room it does not have), and the lift along it goes void.
So the users between the payor and the payee on a route whose lift went void are *suspects*
for that payee for ``SUSPECT_S`` (those on a good lift's route are cleared): the searches'
routes through fewer of them come first, and a lift waits for a route through none before it
takes the first one found (``protocol.route.Search``). A liar that answers first thus voids
one lift to a payee every ``SUSPECT_S``, not every one, while a route through a user whose
lift was void by bad luck (a race for room) is still taken when there is no other.
Everything here is in memory and bounded: ``KNOWN`` routes, cooling payees and payees with
suspects (least recently used out first; ``SUSPECTS`` users each), and lifts in flight as
many as ``FLYING``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from protocol import route

KNOWN = 1024  # routes remembered, and payees cooling
COOL_S = 60.0  # after a directed check finds nothing, this long before the payee's next one
FLYING = 65_536  # our lifts in flight whose routes are followed
SUSPECT_S = 600.0  # how long the users on a void lift's route come last for its payee
SUSPECTS = 64  # suspects kept for one payee, the latest

User = tuple[Any, Any]  # (cuid, agent)
Key = tuple[str, str, User]  # (our user, the lift's kind, the payee: our user for a circle)


@dataclass(frozen=True)
class Known:
    via: tuple[User, ...]  # the users between the payor and the payee
    took_s: float  # how long the search that found it took


def lift_key(record: dict[str, Any]) -> Key:
    path = record["path"]
    return path[0]["cuid"], record["kind"], route.user_key(path[-1])


def route_users(record: dict[str, Any]) -> tuple[User, ...]:
    return tuple(route.user_key(hop) for hop in record["path"][1:-1])


class KnownRoutes:
    def __init__(self, longest: int) -> None:
        self.longest = longest  # hops: a longer route is not worth remembering
        self._known: OrderedDict[Key, Known] = OrderedDict()
        self._cool: OrderedDict[Key, float] = OrderedDict()
        # lift -> (key, users between, units, took_s, the payee's path entry)
        self._flying: dict[str, tuple[Key, tuple[User, ...], int, float, dict[str, Any]]] = {}
        self._held: dict[tuple[Key, tuple[User, ...]], int] = {}
        self._suspects: OrderedDict[Key, dict[User, float]] = OrderedDict()  # user -> until

    def to_check(self, key: Key, now: float) -> Known | None:
        """The route to check for ``key``, unless there is none or its payee cools."""
        until = self._cool.get(key)
        if until is not None:
            if until > now:
                return None
            del self._cool[key]
        return self._known.get(key)

    def suspects(self, key: Key, now: float) -> frozenset[User]:
        """The users on routes to ``key``'s payee whose lift went void lately."""
        users = self._suspects.get(key)
        if not users:
            return frozenset()
        for user in [user for user, until in users.items() if until <= now]:
            del users[user]
        return frozenset(users)

    def held(self, key: Key, via: tuple[User, ...]) -> int:
        """Units our undecided lifts along ``via`` hold."""
        return self._held.get((key, via), 0)

    def failed(self, key: Key, now: float) -> None:
        """A directed check found nothing: forget the route, and flood for a while."""
        self._known.pop(key, None)
        self._cool[key] = now + COOL_S
        self._cool.move_to_end(key)
        if len(self._cool) > KNOWN:
            self._cool.popitem(last=False)

    def started(self, record: dict[str, Any], took_s: float) -> None:
        """A lift of ours started along ``record``'s path, found in ``took_s``."""
        users = route_users(record)
        if not users or len(self._flying) >= FLYING:
            return
        key, units = lift_key(record), record["units"]
        self._flying[record["lift"]] = (key, users, units, took_s, record["path"][-1])
        self._held[key, users] = self._held.get((key, users), 0) + units

    def decided(self, lift: str, state: str, now: float) -> dict[str, Any] | None:
        """A lift of ours ended: remember its route if it was good (its users are suspects no
        more), forget it and suspect its users if void. A good one's payee, as its path
        entry (with where its node listens, when the route said), for the caller to learn."""
        entry = self._flying.pop(lift, None)
        if entry is None:
            return None
        key, users, units, took_s, payee = entry
        held = self._held.pop((key, users)) - units
        if held:
            self._held[key, users] = held
        self._suspect(key, users, now if state == "void" else None)
        known = self._known.get(key)
        if state == "good" and len(users) < self.longest:
            self._known[key] = Known(users, took_s)
            self._known.move_to_end(key)
            if len(self._known) > KNOWN:
                self._known.popitem(last=False)
        elif state == "void" and known is not None and known.via == users:
            del self._known[key]
        return payee if state == "good" else None

    def _suspect(self, key: Key, users: tuple[User, ...], now: float | None) -> None:
        """Suspect ``users`` for ``key`` from ``now`` on, or clear them (``now`` None)."""
        suspects = self._suspects.get(key)
        if now is None:
            for user in users if suspects else ():
                suspects.pop(user, None)
            return
        if suspects is None:
            suspects = self._suspects[key] = {}
        for user in users:
            suspects.pop(user, None)  # the latest last
            suspects[user] = now + SUSPECT_S
        while len(suspects) > SUSPECTS:
            del suspects[next(iter(suspects))]
        self._suspects.move_to_end(key)
        if len(self._suspects) > KNOWN:
            self._suspects.popitem(last=False)
