"""Peer names: one name, one peer.

Names are what ``peers.list`` and the log show a person, so two peers under one name would
leave them guessing which is which. The config file decides: each ``[[peers]]`` entry's name
is that agent's (the config already refuses one name on two entries), and the clearing house,
when no entry names it, keeps the name it has or else is called ``clearinghouse`` — unless an
entry has that name. A peer that carried one of those names before (taken out of the config,
renamed, or an older config file restored) is listed without a name from then on: it is
still known, by its agent id, and ``peers.remove`` forgets it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agentd.config import Config

HOUSE_NAME = "clearinghouse"


@dataclass(frozen=True)
class Unnamed:
    """``agent`` lost ``name``, which is ``now``'s."""

    agent: str
    name: str
    now: str

    def to_map(self) -> dict[str, str]:
        return {"agent": self.agent, "name": self.name, "now": self.now}

    def __str__(self) -> str:
        return (f"peer {self.agent} is no longer called {self.name!r}: that name is "
                f"{self.now}'s (peers.list shows it unnamed; peers.remove agent={self.agent} "
                "forgets it)")


def given(config: Config, names: Mapping[str, str]) -> dict[str, str]:
    """The names ``config`` gives, by agent, where ``names`` are the names known now."""
    out = {peer.agent: peer.name for peer in config.peers}
    house = config.clearinghouse
    if house is not None and house.agent not in out:
        taken = set(out.values())
        name = next((name for name in (names.get(house.agent), HOUSE_NAME)
                     if name is not None and name not in taken), None)
        if name is not None:
            out[house.agent] = name
    return out


def settle(names: dict[str, str], config: Config) -> list[Unnamed]:
    """Give every agent ``config`` names its name in ``names`` (agent → name, changed in
    place), and take it from any other agent that carried it. Returns who lost a name (and
    got none from the config)."""
    named = given(config, names)
    owner = {name: agent for agent, name in named.items()}
    lost = [Unnamed(agent, name, owner[name]) for agent, name in sorted(names.items())
            if agent not in named and owner.get(name, agent) != agent]
    for gone in lost:
        del names[gone.agent]
    names.update(named)
    return lost


def load(names: dict[str, str], stored: list[tuple[str, str]]) -> list[Unnamed]:
    """Take the names the database keeps (``(agent, name)``, in order) into ``names``, the
    config's already in it: a name another agent has already is not taken. Returns the
    stored names not taken, for the database to forget."""
    owner = {name: agent for agent, name in names.items()}
    lost = []
    for agent, name in stored:
        if agent in names:
            continue
        if name in owner:
            lost.append(Unnamed(agent, name, owner[name]))
        else:
            names[agent], owner[name] = name, agent
    return lost


def describe(config: Config, agent: str, name: str | None, known: bool, key: str = "agent"
             ) -> tuple[str, str]:
    """How a log line names ``agent`` (its ``name``, if it has one, and the start of its
    id), and where an operator checks the ``key`` (``agent`` or ``address``) the node dials
    it by: the config's entry, or (``known``: an address learned) where that came from."""
    who = f"{name} (agent {agent[:8]})" if name else f"agent {agent[:8]}"
    house = config.clearinghouse
    peer = next((peer for peer in config.peers if peer.agent == agent), None)
    if peer is not None:
        value = agent if key == "agent" else peer.address
        return who, f'{key} = "{value}" of [[peers]] "{peer.name}" in {config.path}'
    if house is not None and house.agent == agent:
        return who, f"[clearinghouse] {key} in {config.path}"
    if not known:  # removed, or never one: what was queued goes
        return who, ("the messages queued to it (getinfo outbox_depth): this node knows no "
                     "address of it (a peer removed, or never one), and they are tried at "
                     "the address they were queued with until they expire")
    return who, ("the address learned for it (peers.list; learned from a ticket, a "
                 f"tally or a route): if it moved, peers.add name=… agent={agent} "
                 "address=HOST:PORT dials it there")
