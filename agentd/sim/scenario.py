"""Scenarios: the TOML file that names a simulation's nodes, topology, traffic and invariants.

``load_scenario`` parses and checks one; a scenario it returns can run.
"""

from __future__ import annotations

import random
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentd.errors import UserError

TOPOLOGIES = ("ring", "random", "explicit", "full")
TRAFFIC = ("ping", "payments", "invoices", "relay", "evidence")
CREDIT_TRAFFIC = frozenset({"payments", "invoices"})  # kinds that need a tally on every link
INVARIANTS = ("all_delivered", "outbox_drained", "exactly_once", "chains_agree",
              "balances_zero_sum", "receipts_verify")
HOUSE = "clearinghouse"  # the name of the scenario's clearing-house node, when it has one


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

    @property
    def all_nodes(self) -> list[str]:
        return [*self.nodes, *([self.house] if self.house else [])]


def load_scenario(path: Path) -> Scenario:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise UserError(f"{path}: scenario file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from exc

    def bad(key: str, why: str) -> UserError:
        return UserError(f"{path}: {key} {why}")

    unknown = set(raw) - {"sim", "nodes", "topology", "traffic", "invariants"}
    if unknown:
        raise bad(sorted(unknown)[0], "is not a scenario section")
    sim = raw.get("sim", {})
    seed = sim.get("seed", 1)
    if not isinstance(seed, int):
        raise bad("sim.seed", "must be an integer")
    nodes_section = raw.get("nodes", {})
    if "names" in nodes_section:
        names = nodes_section["names"]
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            raise bad("nodes.names", "must be a non-empty list of text")
    else:
        count = nodes_section.get("count")
        if not isinstance(count, int) or not 1 <= count <= 200:
            raise bad("nodes.count", "must be an integer from 1 to 200 (or give nodes.names)")
        names = [f"n{i}" for i in range(count)]
    if len(set(names)) != len(names):
        raise bad("nodes.names", "has duplicates")
    with_house = nodes_section.get("clearinghouse", False)
    if not isinstance(with_house, bool):
        raise bad("nodes.clearinghouse", "must be true or false")
    if with_house and HOUSE in names:
        raise bad("nodes.names", f"cannot hold {HOUSE!r}: that is the clearing house's name")
    rng = random.Random(seed)
    edges = _topology(raw.get("topology", {"kind": "full"}), names, rng, bad)
    traffic = raw.get("traffic", [])
    if not isinstance(traffic, list):
        raise bad("traffic", "must be an array of tables ([[traffic]])")
    for i, item in enumerate(traffic):
        if item.get("kind") not in TRAFFIC:
            raise bad(f"traffic[{i}].kind", f"must be one of {', '.join(TRAFFIC)}")
        if not isinstance(item.get("count", 1), int) or item.get("count", 1) < 1:
            raise bad(f"traffic[{i}].count", "must be a positive integer")
        if not isinstance(item.get("units", 1), int) or item.get("units", 1) < 1:
            raise bad(f"traffic[{i}].units", "must be a positive integer")
        if not isinstance(item.get("confidential", False), bool):
            raise bad(f"traffic[{i}].confidential", "must be true or false")
    kinds = {item.get("kind") for item in traffic}
    paying = bool(kinds & CREDIT_TRAFFIC)  # exactly_once counts pings; credit checks need tallies
    if "evidence" in kinds and not with_house:
        raise bad("traffic", "has evidence, which needs a clearing house: set "
                  "[nodes] clearinghouse = true")
    default = ["all_delivered", "outbox_drained",
               *(["chains_agree", "balances_zero_sum"] if paying
                 else [] if with_house or "relay" in kinds else ["exactly_once"]),
               *(["receipts_verify"] if with_house else [])]
    invariants = raw.get("invariants", {"check": default}).get("check", [])
    for name in invariants:
        if name not in INVARIANTS:
            raise bad("invariants.check", f"has unknown invariant {name!r} "
                      f"(known: {', '.join(INVARIANTS)})")
    if "exactly_once" in invariants and (paying or with_house or "relay" in kinds):
        raise bad("invariants.check", "exactly_once counts ping messages, so it cannot be "
                  "checked with credit or relay traffic or a clearing house (check "
                  "chains_agree or receipts_verify instead)")
    if "receipts_verify" in invariants and not with_house:
        raise bad("invariants.check", "has receipts_verify, which needs a clearing house: "
                  "set [nodes] clearinghouse = true")
    return Scenario(sim.get("name", path.stem), names, edges, traffic, invariants, seed,
                    sim.get("concurrency", 16), HOUSE if with_house else None)


def _topology(spec: dict, names: list[str], rng: random.Random, bad) -> list[tuple[str, str]]:
    kind = spec.get("kind", "full")
    if kind not in TOPOLOGIES:
        raise bad("topology.kind", f"must be one of {', '.join(TOPOLOGIES)}")
    if kind == "full":
        return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    if kind == "ring":
        if len(names) < 2:
            return []
        return [(names[i], names[(i + 1) % len(names)]) for i in range(len(names))
                if len(names) > 2 or i == 0]
    if kind == "random":
        degree = spec.get("degree", 3)
        if not isinstance(degree, int) or degree < 1:
            raise bad("topology.degree", "must be a positive integer")
        edges = {(names[i], names[(i + 1) % len(names)]) for i in range(len(names) - 1)}
        for a in names:  # a connected backbone, then random extra links
            for b in rng.sample(names, min(degree, len(names))):
                if a != b and (b, a) not in edges:
                    edges.add((a, b))
        return sorted(edges)
    edges = []
    for i, edge in enumerate(spec.get("edges", [])):
        if not (isinstance(edge, list) and len(edge) == 2 and set(edge) <= set(names)):
            raise bad(f"topology.edges[{i}]", "must be a pair of node names")
        edges.append((edge[0], edge[1]))
    return edges
