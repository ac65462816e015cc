"""docs/protocol.md stays true: every target, action, state and event in the code is in it.

Found in the code, not listed here, so new targets and tables are picked up as they land:

- the targets the envelope accepts (``protocol.envelope.TARGETS``), each with a heading;
- every message target a node registers, with the actions it declares (``Service.actions``,
  which the dispatcher enforces, so the list cannot drift from what the node takes);
- every ``protocol`` module's ``STATES``, ``TRANSITIONS`` (states and events, ``got X``
  events naming the wire action X) and ``CMDS``.
"""

from __future__ import annotations

import enum
import importlib
import pkgutil
import re
from pathlib import Path

import protocol
from agentd.methods import offline_node
from protocol.envelope import TARGETS

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def _quoted() -> set[str]:
    return set(re.findall(r"`([^`]+)`", DOC.read_text()))


def _headings() -> list[str]:
    return [line for line in DOC.read_text().splitlines() if line.startswith("#")]


def _name(value: object) -> str | None:
    if isinstance(value, enum.Enum):
        return value.name
    return value if isinstance(value, str) else None


def _table_names() -> dict[str, set[str]]:
    """Module -> the state, event and command names of its tables."""
    found: dict[str, set[str]] = {}
    for info in pkgutil.iter_modules(protocol.__path__):
        module = importlib.import_module(f"protocol.{info.name}")
        names: set[str] = set()
        for attribute in ("STATES", "CMDS"):
            names |= {n for v in getattr(module, attribute, ()) if (n := _name(v))}
        for key, value in dict(getattr(module, "TRANSITIONS", {})).items():
            for item in (*(key if isinstance(key, tuple) else (key,)),
                         *(value if isinstance(value, frozenset) else (value,))):
                if (name := _name(item)) is not None:
                    names.add(name)
                    if name.startswith("got "):
                        names.add(name[4:])
        if names:
            found[info.name] = names
    return found


def test_every_target_has_a_section():
    headings = _headings()
    for target in TARGETS:
        assert any(f"`{target}`" in heading for heading in headings), \
            f"docs/protocol.md has no heading naming target `{target}`"


def test_every_served_target_declares_its_actions_and_each_is_documented():
    services = offline_node().dispatcher.services  # as every service registered its target
    assert {"node", "tally", "chit", "relay", "ch"} <= set(services)
    quoted = _quoted()
    for target, service in services.items():
        assert service.actions, f"the {target} service declares no actions (Service.actions)"
        missing = sorted(set(service.actions) - quoted)
        assert not missing, f"docs/protocol.md does not name {target} actions {missing}"


def test_every_state_event_and_command_is_documented():
    tables = _table_names()
    assert {"tally_states", "chit_states", "relay", "chain"} <= set(tables)
    quoted = _quoted()
    for module, names in tables.items():
        missing = sorted(names - quoted)
        assert not missing, f"docs/protocol.md does not name protocol.{module}'s {missing}"
