"""Scenarios: the TOML file that names a simulation's nodes, topology, traffic and invariants.

``load_scenario`` checks a scenario as strictly as a node config: an unknown key, a value of
the wrong type or range, an impossible topology, a fault naming a node that does not exist —
every such error at once, each naming its key and the file — and refuses it before anything
starts. What the machine cannot hold (open files, memory) is judged by :mod:`.limits`.
"""

from __future__ import annotations

import random
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentd.config import name_problem
from agentd.config_files import not_text
from agentd.configs_dir import shipped_scenarios
from agentd.errors import UserError, did_you_mean
from protocol.keys import valid_cuid

TOPOLOGIES = ("ring", "random", "explicit", "full")
# the keys each [[traffic]] kind takes besides ``kind`` (a new kind adds its line here)
TRAFFIC: dict[str, tuple[str, ...]] = {
    "ping": ("count",),
    "payments": ("count", "units"),
    "invoices": ("count", "units"),
    "relay": ("count", "confidential"),
    "evidence": ("count",),
    "lifts": ("count", "units", "max_hops"),
    "clearing": ("count",),
}
LIFT_TRAFFIC = frozenset({"lifts", "clearing"})
# over a link each (lifts and clearing over several)
LINKED_TRAFFIC = frozenset({"ping", "payments", "invoices", "relay", "lifts", "clearing"})
# kinds that need a user on every node and a tally on every link
CREDIT_TRAFFIC = frozenset({"payments", "invoices"}) | LIFT_TRAFFIC
INVARIANTS = ("all_delivered", "outbox_drained", "exactly_once", "chains_agree",
              "balances_zero_sum", "receipts_verify", "lifts_atomic")
# the keys each [[faults]] kind takes besides ``kind`` (see agentd.sim.faults)
FAULTS: dict[str, tuple[str, ...]] = {
    "cut": ("at_s", "for_s", "every_s", "rate"),
    "partition": ("at_s", "for_s", "every_s", "groups"),
    "crash": ("at_s", "every_s", "down_s", "count", "nodes"),
    "delay": ("at_s", "for_s", "every_s", "links", "ms", "jitter_ms"),
    "loss": ("at_s", "for_s", "every_s", "links", "rate"),
}
LINK_FAULTS = frozenset({"delay", "loss"})  # shape frames on a share of the topology's links
HOUSE = "clearinghouse"  # the name of the scenario's clearing-house node, when it has one
SECTIONS = {
    "sim": ("name", "seed", "concurrency"),
    "nodes": ("count", "names", "clearinghouse"),
    "topology": ("kind", "degree", "links", "edges"),
    "invariants": ("check",),
}


@dataclass
class Scenario:
    name: str
    nodes: list[str]
    edges: list[tuple[str, str]]
    traffic: list[dict[str, Any]]
    invariants: list[str]
    seed: int
    concurrency: int = 16
    house: str | None = None  # the clearing-house node every other node logs to
    path: Path = field(default=Path("scenario.toml"))
    faults: list[dict[str, Any]] = field(default_factory=list)

    @property
    def all_nodes(self) -> list[str]:
        return [*self.nodes, *([self.house] if self.house else [])]


class _Errors:
    """Every complaint about one file, raised together."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.found: list[str] = []

    def add(self, key: str, why: str) -> None:
        self.found.append(f"{self.path}: {key} {why}")

    def unknown(self, table: dict, known: tuple[str, ...], where: str) -> None:
        for key in sorted(set(table) - set(known)):
            self.add(f"{where}.{key}" if where else key,
                     f"is not a known key{did_you_mean(key, known)} (known: {', '.join(known)})")

    def integer(self, table: dict, key: str, where: str, default: int, low: int = 1,
                high: int | None = None) -> int:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (
                high is not None and value > high):
            within = f"from {low} to {high}" if high is not None else f"of {low} or more"
            self.add(f"{where}.{key}", f"must be an integer {within}, not {value!r}")
            return default
        return value

    def seconds(self, table: dict, key: str, where: str, *, zero: bool = False) -> None:
        value = table.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or value < 0 or (value == 0 and not zero)):
            self.add(f"{where}.{key}", f"must be a number of seconds, "
                     f"{'0 or more' if zero else 'more than 0'}, not {value!r}")

    def boolean(self, table: dict, key: str, where: str) -> bool:
        value = table.get(key, False)
        if not isinstance(value, bool):
            self.add(f"{where}.{key}", f"must be true or false, not {value!r}")
            return False
        return value

    def table(self, raw: dict, key: str) -> dict:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            self.add(key, f"must be a table ([{key}])")
            return {}
        return value

    def raise_any(self) -> None:
        if self.found:
            raise UserError("\n".join(self.found))


def load_scenario(path: Path) -> Scenario:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        shipped = ", ".join(shipped_scenarios())
        raise UserError(f"{path}: scenario file not found (shipped scenarios, by name: "
                        f"{shipped})") from exc
    except OSError as exc:  # a directory, say
        raise UserError(f"{path}: cannot read the scenario: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise not_text(path, "scenario", exc) from exc
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from exc
    if "node" in raw and "sim" not in raw:  # not a misspelt scenario: say what it is
        raise UserError(f"{path}: a node's config ([node]), not a simulation scenario: agentd "
                        f"run -c {path} runs that node, agentd up {path} in the background")
    errors = _Errors(path)
    errors.unknown(raw, (*SECTIONS, "traffic", "faults"), "")
    sim, nodes_section = errors.table(raw, "sim"), errors.table(raw, "nodes")
    errors.unknown(sim, SECTIONS["sim"], "sim")
    seed = errors.integer(sim, "seed", "sim", 1, low=0, high=2**63 - 1)
    concurrency = errors.integer(sim, "concurrency", "sim", 16, high=10_000)
    name = sim.get("name", path.stem)
    if not isinstance(name, str):
        errors.add("sim.name", "must be text")
    names = _node_names(nodes_section, errors)
    with_house = errors.boolean(nodes_section, "clearinghouse", "nodes")
    if with_house and HOUSE in names:
        errors.add("nodes.names", f"cannot hold {HOUSE!r}: that is the clearing house's name")
    known = len(errors.found)
    edges = _topology(errors.table(raw, "topology"), names, random.Random(seed), errors)
    topology = len(errors.found) == known  # valid: what traffic needs of it can be told
    traffic = _traffic(raw.get("traffic", []), errors)
    kinds = {item.get("kind") for item in traffic}
    if "evidence" in kinds and not with_house:
        errors.add("traffic", "has evidence, which needs a clearing house: set "
                   "[nodes] clearinghouse = true")
    if credit := sorted(kind for kind in kinds if kind in CREDIT_TRAFFIC):
        for bad in (name for name in names if not valid_cuid(name)):
            errors.add("nodes.names", f"has {bad!r}, which cannot be a user id (1 to 64 ASCII "
                       "letters, digits, '_', '-' or '.'): each node's user is named as the "
                       f"node, and {credit[0]} traffic needs users")
    for i, item in enumerate(traffic):
        if not topology or not names:
            break
        if item.get("kind") in LINKED_TRAFFIC and not edges:
            errors.add(f"traffic[{i}]", f"has {item['kind']}, which goes between linked "
                       "nodes, and the topology links none: it needs 2 nodes or more and a "
                       "link between two of them")
        elif item.get("kind") == "lifts" and not _two_apart(names, edges):
            errors.add(f"traffic[{i}]", "has lifts, between users 2 or more tallies apart, and "
                       "the topology has no such two users (every node is linked to every "
                       "other it reaches): lifts need a longer path, such as a ring of 3 or "
                       "more nodes")
    invariants = _invariants(errors.table(raw, "invariants"), kinds, with_house, errors)
    faults = _faults(raw.get("faults", []), names, len(edges), errors)
    errors.raise_any()
    return Scenario(name, names, edges, traffic, invariants, seed, concurrency,
                    HOUSE if with_house else None, path, faults)


def _two_apart(names: list[str], edges: list[tuple[str, str]]) -> bool:
    """Whether two users are 2 tallies apart (so 2 to any ``max_hops``): some part of the
    topology is not every node linked to every other (along a shortest path of 2 or more
    links, the first two links' ends are 2 apart)."""
    part = {name: name for name in names}

    def root(name: str) -> str:
        while part[name] != name:
            part[name] = part[part[name]]
            name = part[name]
        return name

    links = {frozenset(edge) for edge in edges if edge[0] != edge[1]}
    for a, b in links:
        part[root(a)] = root(b)
    nodes: dict[str, int] = {}
    linked: dict[str, int] = {}
    for name in names:
        nodes[root(name)] = nodes.get(root(name), 0) + 1
    for a, _ in links:
        linked[root(a)] = linked.get(root(a), 0) + 1
    return any(linked.get(top, 0) < count * (count - 1) // 2 for top, count in nodes.items())


def _node_names(section: dict, errors: _Errors) -> list[str]:
    errors.unknown(section, SECTIONS["nodes"], "nodes")
    if "names" in section and "count" in section:
        errors.add("nodes", "gives both count and names: give one")
    if "names" in section:
        names = section["names"]
        if not (isinstance(names, list) and names and all(isinstance(n, str) and n
                                                          for n in names)):
            errors.add("nodes.names", "must be a non-empty list of non-empty text")
            return []
        for name in names:  # each becomes a node's [node] name
            if (problem := name_problem(name)) is not None:
                errors.add("nodes.names", f"has a name that {problem}")
        if len(set(names)) != len(names):
            twice = sorted({name for name in names if names.count(name) > 1})
            errors.add("nodes.names", f"names {', '.join(map(repr, twice))} more than once")
        return names
    if "count" not in section:
        errors.add("nodes.count", "is missing (or give nodes.names)")
        return []
    count = errors.integer(section, "count", "nodes", 0)
    return [f"n{i}" for i in range(count)]


def _topology(spec: dict, names: list[str], rng: random.Random, errors: _Errors
              ) -> list[tuple[str, str]]:
    errors.unknown(spec, SECTIONS["topology"], "topology")
    kind = spec.get("kind", "full")
    if kind not in TOPOLOGIES:
        errors.add("topology.kind", f"must be one of {', '.join(TOPOLOGIES)}, not {kind!r}")
        return []
    allowed = {"random": ("degree", "links"), "explicit": ("edges",)}.get(kind, ())
    for key in ("degree", "links", "edges"):
        if key in spec and key not in allowed:
            errors.add(f"topology.{key}", f"does not apply to kind = {kind!r}")
    n = len(names)
    if kind == "full":
        return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    if kind == "ring":
        return [(names[i], names[(i + 1) % n]) for i in range(n) if n > 2 or i == 0] \
            if n >= 2 else []
    if kind == "random":
        return _random(spec, names, rng, errors)
    edges = []
    raw_edges = spec.get("edges", [])
    if not isinstance(raw_edges, list):
        errors.add("topology.edges", "must be a list of [a, b] pairs")
        return []
    for i, edge in enumerate(raw_edges):
        if not (isinstance(edge, list) and len(edge) == 2 and all(isinstance(e, str)
                                                                  for e in edge)):
            errors.add(f"topology.edges[{i}]", "must be a pair of node names")
        elif unknown := [e for e in edge if e not in names]:
            errors.add(f"topology.edges[{i}]", f"names {', '.join(map(repr, unknown))}, "
                       "which is not a node")
        elif edge[0] == edge[1]:
            errors.add(f"topology.edges[{i}]", "links a node to itself")
        else:
            edges.append((edge[0], edge[1]))
    return edges


def _random(spec: dict, names: list[str], rng: random.Random, errors: _Errors
            ) -> list[tuple[str, str]]:
    """A connected backbone (a path through every node), then random extra links: ``degree``
    picks per node, or extra links until there are ``links`` in all."""
    n = len(names)
    pairs = n * (n - 1) // 2
    if "degree" in spec and "links" in spec:
        errors.add("topology", "gives both degree and links: give one")
        return []
    edges = {(names[i], names[i + 1]) for i in range(n - 1)}
    if "links" in spec:
        links = errors.integer(spec, "links", "topology", 0)
        if links > pairs:
            errors.add("topology.links", f"is {links}, more than the {pairs} pairs "
                       f"{n} nodes can form")
        elif 0 < links < n - 1:
            errors.add("topology.links", f"is {links}: {n} nodes need at least {n - 1} "
                       "to be connected")
        elif links:
            index = {name: i for i, name in enumerate(names)}
            while len(edges) < links:
                a, b = sorted(rng.sample(names, 2), key=index.__getitem__)
                edges.add((a, b))
        return sorted(edges)
    degree = errors.integer(spec, "degree", "topology", 3)
    if n and degree >= n:
        errors.add("topology.degree", f"is {degree}, but with {n} nodes a node can have at "
                   f"most {n - 1} links")
        return []
    for a in names:
        for b in rng.sample(names, min(degree, n)):
            if a != b and (b, a) not in edges:
                edges.add((a, b))
    return sorted(edges)


def _traffic(traffic: Any, errors: _Errors) -> list[dict[str, Any]]:
    if not isinstance(traffic, list) or not all(isinstance(i, dict) for i in traffic):
        errors.add("traffic", "must be an array of tables ([[traffic]])")
        return []
    for i, item in enumerate(traffic):
        where = f"traffic[{i}]"
        kind = item.get("kind")
        if kind not in TRAFFIC:
            errors.add(f"{where}.kind", f"must be one of {', '.join(TRAFFIC)}, not {kind!r}")
            continue
        errors.unknown(item, ("kind", "concurrency", *TRAFFIC[kind]), where)
        errors.integer(item, "count", where, 1)
        errors.integer(item, "concurrency", where, 16, high=10_000)
        errors.integer(item, "units", where, 1)
        errors.integer(item, "max_hops", where, 5, low=2, high=10)
        errors.boolean(item, "confidential", where)
    return traffic


def _invariants(section: dict, kinds: set, with_house: bool, errors: _Errors) -> list[str]:
    errors.unknown(section, SECTIONS["invariants"], "invariants")
    paying = bool(kinds & CREDIT_TRAFFIC)  # exactly_once counts pings; credit checks need tallies
    default = ["all_delivered", "outbox_drained",
               *(["chains_agree", "balances_zero_sum"] if paying
                 else [] if with_house or "relay" in kinds else ["exactly_once"]),
               *(["lifts_atomic"] if kinds & LIFT_TRAFFIC else []),
               *(["receipts_verify"] if with_house else [])]
    invariants = section.get("check", default)
    if not isinstance(invariants, list) or not all(isinstance(n, str) for n in invariants):
        errors.add("invariants.check", "must be a list of invariant names")
        return []
    for name in invariants:
        if name not in INVARIANTS:
            errors.add("invariants.check", f"has unknown invariant {name!r} "
                       f"(known: {', '.join(INVARIANTS)})")
    if "exactly_once" in invariants and (paying or with_house or "relay" in kinds):
        errors.add("invariants.check", "exactly_once counts ping messages, so it cannot be "
                   "checked with credit or relay traffic or a clearing house (check "
                   "chains_agree or receipts_verify instead)")
    if "receipts_verify" in invariants and not with_house:
        errors.add("invariants.check", "has receipts_verify, which needs a clearing house: "
                   "set [nodes] clearinghouse = true")
    return invariants


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _link_fault(fault: dict, kind: str, where: str, links: int, errors: _Errors) -> None:
    """``links``: a fraction of the topology's links or a count of them; a delay's ``ms``
    (and ``jitter_ms``), a loss's ``rate`` (the fraction of frames dropped)."""
    share = fault.get("links", 1.0)
    if isinstance(share, int) and not isinstance(share, bool):
        if not 1 <= share <= links:
            errors.add(f"{where}.links", f"is {share}, but the topology has {links} links "
                       f"(give a count from 1 to {links}, or a fraction such as 0.5)")
    elif not (isinstance(share, float) and 0 < share <= 1):
        errors.add(f"{where}.links", "must be a fraction of the links, more than 0 and at most"
                   f" 1.0, or a count of them, not {share!r}")
    needed = "ms" if kind == "delay" else "rate"
    if needed not in fault:
        errors.add(f"{where}.{needed}", "is missing: " + (
            "a delay needs the milliseconds it adds to each frame" if kind == "delay"
            else "a loss needs the fraction of frames dropped (0.1: one in ten)"))
    for key, low in (("ms", "more than 0"), ("jitter_ms", "0 or more")):
        value = fault.get(key)
        if value is not None and not (_number(value) and value >= 0
                                      and (value > 0 or key == "jitter_ms")):
            errors.add(f"{where}.{key}", f"must be a number of milliseconds, {low}, "
                       f"not {value!r}")
    rate = fault.get("rate")
    if kind == "loss" and rate is not None and not (_number(rate) and 0 < rate <= 1):
        errors.add(f"{where}.rate", "must be the fraction of frames dropped, more than 0 and "
                   f"at most 1 (0.1: one in ten), not {rate!r}")


def _faults(faults: Any, names: list[str], links: int, errors: _Errors
            ) -> list[dict[str, Any]]:
    if not isinstance(faults, list) or not all(isinstance(i, dict) for i in faults):
        errors.add("faults", "must be an array of tables ([[faults]])")
        return []
    known = set(names)
    for i, fault in enumerate(faults):
        where = f"faults[{i}]"
        kind = fault.get("kind")
        if kind not in FAULTS:
            errors.add(f"{where}.kind", f"must be one of {', '.join(FAULTS)}, not {kind!r}")
            continue
        errors.unknown(fault, ("kind", *FAULTS[kind]), where)
        errors.seconds(fault, "at_s", where, zero=True)
        for key in ("for_s", "every_s", "down_s", *(() if kind == "loss" else ("rate",))):
            errors.seconds(fault, key, where)
        if kind in LINK_FAULTS:
            _link_fault(fault, kind, where, links, errors)
        lasting = fault.get("down_s" if kind == "crash" else "for_s", 1.0)
        every = fault.get("every_s")
        if isinstance(every, int | float) and isinstance(lasting, int | float) \
                and every < lasting:
            errors.add(f"{where}.every_s", f"is {every}: shorter than the fault lasts "
                       f"({lasting} s), so they would overlap")
        errors.integer(fault, "count", where, 1, high=max(1, len(names)))
        chosen = fault.get("nodes", [])
        if not isinstance(chosen, list) or not all(isinstance(n, str) for n in chosen):
            errors.add(f"{where}.nodes", "must be a list of node names")
        elif unknown := [n for n in chosen if n not in known]:
            errors.add(f"{where}.nodes", f"names {', '.join(map(repr, unknown))}, which is "
                       "not a node")
        groups = fault.get("groups")
        if groups is None:
            continue
        if not (isinstance(groups, list) and len(groups) >= 2 and all(
                isinstance(g, list) and g and all(isinstance(n, str) for n in g)
                for g in groups)):
            errors.add(f"{where}.groups", "must be two or more non-empty lists of node names")
            continue
        flat = [n for g in groups for n in g]
        if unknown := [n for n in flat if n not in known]:
            errors.add(f"{where}.groups", f"names {', '.join(map(repr, unknown))}, which is "
                       "not a node")
        if len(set(flat)) != len(flat):
            errors.add(f"{where}.groups", "puts a node in more than one group")
    return faults
