"""Node configuration: a TOML file validated into frozen dataclasses.

Unknown keys and bad values are errors that name the key and the file. Relative paths are
resolved against the directory of the config file, so a config works from any cwd.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentd.config_files import not_text, refuse_scenario, unreadable
from agentd.errors import UserError
from protocol.frames import DEFAULT_MAX_FRAME
from protocol.keys import IdentityError, agent_id_problem, is_agent_id, parse_hostport
from protocol.lift import MAX_LIFE_MS
from protocol.relay_fields import is_network
from protocol.relay_policy import served_problem
from protocol.tally_fields import MAX_UNITS

ROLES = frozenset({"clearinghouse"})
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
MAX_NAME = 64  # characters of a node's or a peer's name
# What ``[node] name``, ``agentd init --name``, ``[[peers]] name`` and ``peers.add name=`` must
# be: text log lines and ``-H`` tables show a name on one line, in a column.
NAME_RULE = (f"must be 1 to {MAX_NAME} printable characters (no line breaks, tabs or other "
             "control characters)")
# What ``[node] network`` (and ``agentd init --network``) must be: relay addresses name it.
NETWORK_RULE = ("must start with a letter or '_' and hold up to 64 letters, digits, '_', '-' "
                "(relay addresses name it: RELAY/NETWORK/VIEW)")


@dataclass(frozen=True)
class PeerConfig:
    name: str
    agent: str
    address: str


@dataclass(frozen=True)
class ClearingHouseConfig:
    agent: str
    address: str


@dataclass(frozen=True)
class AccessRule:
    principal: str
    resource: str


@dataclass(frozen=True)
class VerifyPolicy:
    view: str
    signers: tuple[str, ...]


@dataclass(frozen=True)
class Limits:
    """What a peer can make us hold (``[node]`` keys of the same names; see the README)."""

    max_handshakes: int = 256            # inbound handshakes in progress, in total
    max_handshakes_per_address: int = 16  # ... from one source address
    busy_handshake_timeout: float = 2.0  # the deadline once half the handshake slots are taken
    frame_timeout: float = 30.0          # seconds to finish a frame once it has begun
    max_channels: int = 1024             # established channels, in total
    max_channels_per_address: int = 64   # ... from one address (peers we know are exempt)
    max_channels_per_agent: int = 8      # ... to one identity
    partial_frames_budget: int = 16 << 20  # bytes of unfinished frames over all channels
    defer_accept: int = 10               # seconds the kernel holds a connection that is silent
    stranger_pipeline: int = 64          # a stranger's messages being processed at once
    stranger_write_rate: int = 1 << 20   # bytes a second one stranger may make us write...
    stranger_write_burst: int = 16 << 20  # ... and at once, before the rate applies
    all_strangers_write_rate: int = 4 << 20  # the same for all strangers together
    all_strangers_write_burst: int = 64 << 20
    inbox_per_peer: int = 1_000_000  # processed-message ids kept of one peer (besides 30 days)


LIMIT_RANGES: dict[str, tuple[float, float]] = {
    "max_handshakes": (1, 1 << 16), "max_handshakes_per_address": (1, 1 << 16),
    "busy_handshake_timeout": (0.05, 3600), "frame_timeout": (0.05, 3600),
    "max_channels": (1, 1 << 20), "max_channels_per_address": (1, 1 << 20),
    "max_channels_per_agent": (1, 1024), "partial_frames_budget": (1 << 16, 1 << 40),
    "defer_accept": (0, 3600), "stranger_pipeline": (1, 4096),
    "stranger_write_rate": (1024, 1 << 40), "stranger_write_burst": (1024, 1 << 40),
    "all_strangers_write_rate": (1024, 1 << 40), "all_strangers_write_burst": (1024, 1 << 40),
    "inbox_per_peer": (1000, 1 << 40),
}


@dataclass(frozen=True)
class LiftConfig:
    """``[lift]``: who referees our lifts, which referees our hops accept, how long a lift
    lives, and optional automatic clearing."""

    referee: str | None = None  # agent id; default: the clearing house, else this node
    referees: tuple[str, ...] = ()  # when set, a hop refuses lifts refereed by anyone else
    life_s: float = 120.0
    auto_clear: bool = False
    minimum: int = 1  # mCHIP: the smallest debt cycle worth clearing
    interval_s: float = 60.0


@dataclass(frozen=True)
class Config:
    path: Path
    name: str
    data_dir: Path
    listen: str
    key_file: Path
    network: str = "agentd"
    roles: tuple[str, ...] = ()
    max_frame: int = DEFAULT_MAX_FRAME
    advertise: str | None = None
    handshake_timeout: float = 10.0
    idle_timeout: float = 60.0
    peers: tuple[PeerConfig, ...] = ()
    clearinghouse: ClearingHouseConfig | None = None
    relay_access: tuple[AccessRule, ...] = ()
    relay_verify: tuple[VerifyPolicy, ...] = ()
    log_level: str = "info"
    log_format: str = "text"
    metrics_listen: str | None = None
    limits: Limits = Limits()
    lift: LiftConfig = LiftConfig()

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "agentd.sock"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "agentd.db"

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return parse_hostport(self.listen)

    @property
    def referee(self) -> str | None:
        """The agent that decides the lifts this node starts: ``[lift] referee``, else the
        clearing house; None: this node itself (DESIGN.md §4)."""
        if self.lift.referee is not None or self.clearinghouse is None:
            return self.lift.referee
        return self.clearinghouse.agent


class _Problems:
    """Every complaint about one config file, raised together (one line each, naming the key
    and the file), so a user fixes them in one edit rather than one per try."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.found: list[str] = []

    def add(self, complaint: str) -> None:
        self.found.append(f"{self.source}: {complaint}")

    def raise_any(self) -> None:
        if self.found:
            raise UserError("\n".join(self.found))


class _Section:
    """Reads one TOML table, remembering which keys were used so leftovers are errors. A bad
    value is noted (``_Problems``) and read as its default, so parsing goes on to the end."""

    def __init__(self, problems: _Problems, where: str, table: object) -> None:
        if not isinstance(table, dict):
            problems.add(f"[{where}] must be a table")
            table = {}
        self.problems, self.where, self.table = problems, where, table
        self.used: set[str] = set()

    def name(self, key: str) -> str:
        shown = key if key.isprintable() else repr(key)  # a complaint stays one line
        return f"{self.where}.{shown}" if self.where else shown

    def bad(self, key: str, why: str) -> None:
        self.problems.add(f"{self.name(key)} {why}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, *,
            required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.table:
            if required:
                self.bad(key, "is required" + self._misspelt_as(key))
            return default
        value = self.table[key]
        if isinstance(value, bool) and kind is not bool:
            self.bad(key, f"must be {_kind_name(kind)}, not a boolean")
            return default
        if kind is list and isinstance(value, dict):  # [peers] written for [[peers]]
            self.bad(key, f"must be a list of tables: write each entry under "
                     f"[[{self.name(key)}]] (two brackets), not [{self.name(key)}]")
            return default
        if not isinstance(value, kind):
            self.bad(key, f"must be {_kind_name(kind)}, got {value!r}")
            return default
        return value

    def _misspelt_as(self, key: str) -> str:
        close = difflib.get_close_matches(key, [k for k in self.table if isinstance(k, str)],
                                          n=1, cutoff=0.75)
        return f" (is {self.name(close[0])} a misspelling of it?)" if close else ""

    def hostport(self, key: str, *, required: bool = False, default: str | None = None,
                 allow_zero: bool = False) -> str | None:
        value = self.get(key, str, default, required=required)
        if value is None:
            return None
        try:
            _, port = parse_hostport(value)
        except IdentityError as exc:
            self.bad(key, f"is not HOST:PORT ({exc})")
            return None
        if port == 0 and not allow_zero:
            self.bad(key, "needs a real port, not 0")
            return None
        return value

    def agent(self, key: str) -> str:
        value = self.get(key, str, required=True)
        if value is not None and (problem := agent_id_problem(value)) is not None:
            self.bad(key, f"is not an agent id ({problem})")
        return value or ""

    def finish(self) -> None:
        known = sorted(self.used)
        for key in sorted(map(str, set(self.table) - self.used)):
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}? " if close else ""
            self.problems.add(f"unknown key {self.name(key)} ({hint}known keys: "
                              f"{', '.join(known)})")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a node or a peer (``NAME_RULE`` and the name as typed, cut
    short and escaped, so the complaint is one line), or None. One rule for both: the sims'
    and benchmarks' configs name a node's peers by the peers' own node names."""
    if 0 < len(name) <= MAX_NAME and name.isprintable():
        return None
    if not name:
        return f"{NAME_RULE}, not empty"
    if len(name) > MAX_NAME:
        return f"{NAME_RULE}, not {len(name)} characters ({name[:24]!r}...)"
    return f"{NAME_RULE}, not {name!r}"


def listens_everywhere(hostport: str) -> bool:
    """Whether ``HOST:PORT`` names every interface (0.0.0.0, ::): fine to bind, but a peer
    given it would dial itself, so the node must advertise another address."""
    host, _ = address_key(hostport)  # 0:7101 and [::ffff:0.0.0.0]:7101 are 0.0.0.0 too
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False  # a host name


def address_key(hostport: str) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port) to tell whether two addresses name one listening port:
    a host's case does not matter, ``localhost`` is loopback, an IP address is compared as
    an address (``::1`` and ``0:0::1`` alike, ``127.1`` and ``[::ffff:127.0.0.1]`` as
    ``127.0.0.1``)."""
    host, port = parse_hostport(hostport)
    host = host.lower().removesuffix(".")  # a name's root dot: localhost. is localhost
    if host == "localhost":
        return "127.0.0.1", port
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:  # the IPv4 forms a resolver takes too (127.1, 2130706433)
            return socket.inet_ntoa(socket.inet_aton(host)), port
        except OSError:
            return host, port  # a host name
    return str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip), port


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if set(kinds) == {int, float}:  # a number, whole or not
        return "a number"
    names = {str: "text", int: "an integer", float: "a number", bool: "true or false",
             list: "a list", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def load_config(path: Path | str) -> Config:
    source = Path(path)
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UserError(f"{source}: config file not found") from exc
    except OSError as exc:
        raise unreadable(source, exc) from exc
    except UnicodeDecodeError as exc:
        raise not_text(source, "config file", exc) from exc
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{source}: not valid TOML: {exc}") from exc
    return parse_config(raw, source)


def parse_config(raw: dict, source: Path) -> Config:
    """Validate a config's tables; every problem found is raised at once (``UserError``)."""
    refuse_scenario(raw, source)
    base = source.resolve().parent
    problems = _Problems(source)
    top = _Section(problems, "", raw)
    top.used.update(("clearinghouse", "relay", "lift", "log", "metrics"))  # optional tables

    node = _Section(problems, "node", top.get("node", dict, {}, required=True))
    name = node.get("name", str, required=True)
    if name is not None and (problem := name_problem(name)) is not None:
        node.bad("name", problem)
    given_dir = node.get("data_dir", str, required=True)
    if given_dir == "":  # it meant the config's own folder, and the key was looked for there
        node.bad("data_dir", 'is empty: name the folder for the key and the database ("." for '
                 "this config's own)")
    data_dir = Path(os.path.normpath(base / (given_dir or ".")))
    key_file = Path(os.path.normpath(base / node.get("key", str, str(data_dir / "agent.key"))))
    listen = node.hostport("listen", required=True, allow_zero=True)
    network = node.get("network", str, "agentd")
    if not is_network(network):
        node.bad("network", f"{NETWORK_RULE}, got {network!r}")
    roles = tuple(node.get("roles", list, []))
    for role in roles:
        if not isinstance(role, str) or role not in ROLES:
            node.bad("roles", f"has unknown role {role!r} (known: {', '.join(sorted(ROLES))})")
    max_frame = node.get("max_frame", int, DEFAULT_MAX_FRAME)
    if not DEFAULT_MAX_FRAME <= max_frame <= 64 << 20:  # the protocol's own batches need it
        node.bad("max_frame", f"must be between 1048576 and 67108864 bytes, got {max_frame} (a "
                 "chain batch or a relay view a node must be able to send takes up to 0.6 MiB)")
    advertise = node.hostport("advertise")
    if listen is not None and advertise is None and listens_everywhere(listen):
        node.bad("listen", f"{listen} listens on every interface, an address peers cannot dial:"
                           ' set node.advertise = "HOST:PORT", where they should dial')
    if advertise is not None and listens_everywhere(advertise):
        node.bad("advertise", f"{advertise} is not an address peers can dial")
    timeouts = {}
    for key, default, (low, high) in (("handshake_timeout", 10.0, (0.05, 3600)),
                                      ("idle_timeout", 60.0, (0.05, 86400))):
        given = node.get(key, (int, float), default)  # an int of any size: compared, not cast
        if not low <= given <= high:  # nan too: a deadline of nan fails every channel
            node.bad(key, f"must be between {low:g} and {high:g} seconds, got {given!r:.40}")
            given = default
        timeouts[key] = float(given)
    handshake_timeout, idle_timeout = timeouts["handshake_timeout"], timeouts["idle_timeout"]
    limits = _limits(node)
    node.finish()

    peers: list[PeerConfig] = []
    for i, entry in enumerate(top.get("peers", list, [])):
        section = _Section(problems, f"peers[{i}]", entry)
        peer = PeerConfig(
            name=section.get("name", str, required=True),
            agent=section.agent("agent"),
            address=section.hostport("address", required=True),
        )
        if peer.name is not None and (problem := name_problem(peer.name)) is not None:
            section.bad("name", problem)
        where = address_key(peer.address) if peer.address is not None else None
        if where is not None and (listens_everywhere(peer.address) or where[1] == 0):
            section.bad("address", f"{peer.address} is not an address a node can be dialled at "
                        "(every interface, or port 0): give where that node listens")
        for key, mine in (("listen", listen), ("advertise", advertise)):
            if where is not None and mine is not None and address_key(mine) == where:
                section.bad("address", f"{peer.address} is this node's own ([node] {key}): "
                            "a node is not its own peer")
        for j, other in enumerate(peers):  # every clash of an entry, not only its first
            if peer.agent and other.agent == peer.agent:
                section.bad("agent", f"is peers[{j}]'s too: one entry per peer")
                continue
            if peer.name is not None and other.name == peer.name:
                section.bad("name", f"{peer.name!r} is peers[{j}]'s too: names tell peers apart")
            if where is not None and other.address is not None \
                    and address_key(other.address) == where:
                section.bad("address", f"{peer.address} is peers[{j}]'s too: one address is "
                            "one node, whose key is one agent")
        peers.append(peer)
        section.finish()

    clearinghouse = None
    if "clearinghouse" in raw:
        section = _Section(problems, "clearinghouse", top.get("clearinghouse", dict, {}))
        clearinghouse = ClearingHouseConfig(
            agent=section.agent("agent"), address=section.hostport("address", required=True)
        )
        section.finish()
        house = clearinghouse
        for i, peer in enumerate(peers):  # as peers.add refuses it
            if (house.address is not None and peer.address is not None and house.agent
                    and peer.agent != house.agent
                    and address_key(peer.address) == address_key(house.address)):
                problems.add(f"peers[{i}].address {peer.address} is the clearing house's "
                             f"([clearinghouse] address, agent {house.agent}): one address is "
                             "one node, whose key is one agent")

    access: list[AccessRule] = []
    verify: list[VerifyPolicy] = []
    if "relay" in raw:
        relay = _Section(problems, "relay", top.get("relay", dict, {}))
        for i, entry in enumerate(relay.get("access", list, [])):
            section = _Section(problems, f"relay.access[{i}]", entry)
            principal = section.get("principal", str, required=True)
            if principal is not None and principal != "*" and not is_agent_id(principal):
                section.bad("principal", f"must be an agent id or *, got {principal!r}")
            resource = section.get("resource", str, required=True)
            if resource is not None and (problem := served_problem(resource)) is not None:
                section.bad("resource", problem)
            access.append(AccessRule(principal, resource))
            section.finish()
        for i, entry in enumerate(relay.get("verify", list, [])):
            section = _Section(problems, f"relay.verify[{i}]", entry)
            signers = section.get("signers", list, None, required=True)
            if signers is not None and not signers:
                section.bad("signers", "must be a non-empty list of agent ids (a view is never "
                            "accepted unverified), got []")
            elif signers is not None and (wrong := [s for s in signers if not is_agent_id(s)]):
                section.bad("signers", f"{wrong[0]!r} is not an agent id (43 characters of "
                            "base64url, as getinfo's agent shows it)")
            view = section.get("view", str, required=True)
            if view is not None and (problem := served_problem(view, "a source")) is not None:
                section.bad("view", problem)  # a typo would leave the default rule in force
            verify.append(VerifyPolicy(view, tuple(signers or ())))
            section.finish()
        relay.finish()

    lift = LiftConfig()
    if "lift" in raw:
        section = _Section(problems, "lift", top.get("lift", dict, {}))
        referee = section.agent("referee") if "referee" in section.table else None
        section.used.add("referee")
        referees = section.get("referees", list, [])
        if not all(is_agent_id(agent) for agent in referees):
            section.bad("referees", f"must be a list of agent ids, got {referees!r}")
        life_s = section.get("life_s", (int, float), 120.0)
        if not 1 <= life_s <= MAX_LIFE_MS // 1000:
            section.bad("life_s", f"must be seconds from 1 to {MAX_LIFE_MS // 1000}, got "
                                  f"{life_s!r:.40}")
            life_s = 120.0  # an int of any size: not cast while the file is refused
        auto_clear = section.get("auto_clear", bool, False)
        minimum = section.get("minimum", int, 1)
        if not 1 <= minimum <= MAX_UNITS:  # past it, no lift could clear it (nor SQLite hold it)
            section.bad("minimum", f"must be a whole number of mCHIP from 1 to {MAX_UNITS}, "
                                   f"got {minimum!r:.40}")
            minimum = 1
        interval_s = section.get("interval_s", (int, float), 60.0)
        if not 1 <= interval_s <= 86_400:
            section.bad("interval_s", f"must be seconds from 1 to 86400, got {interval_s!r:.40}")
            interval_s = 60.0
        section.finish()
        lift = LiftConfig(referee, tuple(referees), float(life_s), auto_clear, minimum,
                          float(interval_s))

    log_level, log_format = "info", "text"
    if "log" in raw:
        log = _Section(problems, "log", top.get("log", dict, {}))
        log_level = log.get("level", str, "info")
        if log_level not in LOG_LEVELS:
            log.bad("level", f"must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
        log_format = log.get("format", str, "text")
        if log_format not in LOG_FORMATS:
            log.bad("format", f"must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
        log.finish()

    metrics_listen = None
    if "metrics" in raw:
        metrics = _Section(problems, "metrics", top.get("metrics", dict, {}))
        metrics_listen = metrics.hostport("listen", required=True, allow_zero=True)
        ours = None if listen is None else address_key(listen)
        if metrics_listen is not None and ours is not None and ours[1] != 0 \
                and address_key(metrics_listen) == ours:
            metrics.bad("listen", f"{metrics_listen} is node.listen's address too: give the "
                        "metrics a port of their own")
        metrics.finish()

    top.finish()
    problems.raise_any()
    return Config(
        path=source, name=name, data_dir=data_dir, listen=listen, key_file=key_file,
        network=network, roles=roles, max_frame=max_frame, advertise=advertise,
        handshake_timeout=handshake_timeout, idle_timeout=idle_timeout, peers=tuple(peers),
        clearinghouse=clearinghouse, relay_access=tuple(access), relay_verify=tuple(verify),
        log_level=log_level, log_format=log_format, metrics_listen=metrics_listen,
        limits=limits, lift=lift,
    )


def _limits(node: _Section) -> Limits:
    values: dict[str, Any] = {}
    for key, (low, high) in LIMIT_RANGES.items():
        default = getattr(Limits, key)
        kind = float if isinstance(default, float) else int
        value = node.get(key, (int, float) if kind is float else int, default)
        if not low <= value <= high:
            node.bad(key, f"must be between {low} and {high}, got {value!r}")
            value = default
        values[key] = kind(value)
    return Limits(**values)
