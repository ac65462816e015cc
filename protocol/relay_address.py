"""View addresses ``relay/network/view`` and the views the ledger driver serves (sans-IO)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from protocol.keys import IdentityError, is_agent_id, parse_hostport, valid_cuid
from protocol.relay_fields import AddressError, is_network, is_uuid

MAX_VIEW_LENGTH = 256
MAX_HOSTNAME_LENGTH = 253

_HOSTNAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_VIEW = re.compile(r"[A-Za-z0-9_.-]+(?::[A-Za-z0-9_.-]+)*")


def _check_relay(relay: object) -> None:
    """``host:port`` (IPv6 in brackets, port 1..65535 without leading zeros) or an agent id."""
    if not isinstance(relay, str):
        raise AddressError("the relay part of an address must be text")
    if ":" not in relay:
        if not is_agent_id(relay):
            raise AddressError(f"relay {relay!r} is neither HOST:PORT nor a 43-character agent id")
        return
    try:
        host, port = parse_hostport(relay)
    except IdentityError as exc:
        raise AddressError(f"relay {relay!r}: {exc}") from exc
    if port == 0 or relay.rpartition(":")[2] != str(port):
        raise AddressError(f"relay {relay!r}: the port must be 1..65535 without leading zeros")
    if relay.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise AddressError(f"relay {relay!r}: {host!r} is not an IPv6 address") from exc
    elif len(host) > MAX_HOSTNAME_LENGTH or not _HOSTNAME.fullmatch(host):
        raise AddressError(f"relay {relay!r}: {host!r} is not a host name or IPv4 address")


def check_view(view: object) -> None:
    if not isinstance(view, str) or len(view) > MAX_VIEW_LENGTH or not _VIEW.fullmatch(view):
        raise AddressError(
            f"view {view!r} must be up to {MAX_VIEW_LENGTH} characters of ':'-separated "
            "non-empty parts made of letters, digits, '_', '.', '-'"
        )


@dataclass(frozen=True)
class ViewAddress:
    """``relay/network/view``: which node to ask, which of its networks, and what to read.

    The text is kept as written, because the requestor signs it and the source echoes it
    inside the notarized view: both ends compare the exact string.
    """

    relay: str
    network: str
    view: str

    def __post_init__(self) -> None:
        _check_relay(self.relay)
        if not is_network(self.network):
            raise AddressError(
                f"network {self.network!r} must start with a letter or '_' and hold up to 64 "
                "letters, digits, '_', '-'"
            )
        check_view(self.view)

    @classmethod
    def parse(cls, text: object) -> ViewAddress:
        if not isinstance(text, str):
            raise AddressError("a view address must be text")
        parts = text.split("/")
        if len(parts) != 3:
            raise AddressError(
                "a view address is RELAY/NETWORK/VIEW (the source's HOST:PORT or agent id, its "
                f"[node] network and a view, as in 127.0.0.1:7102/local/node:info), got {text!r}")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.relay}/{self.network}/{self.view}"

    @property
    def agent(self) -> str | None:
        """The source's agent id when the relay part names one."""
        return None if ":" in self.relay else self.relay

    @property
    def endpoint(self) -> tuple[str, int] | None:
        """``(host, port)`` when the relay part is an endpoint (IPv6 without brackets)."""
        return parse_hostport(self.relay) if ":" in self.relay else None


def parse_view(segment: str) -> tuple[str, tuple[str, ...]]:
    """Split a view segment into the kind the driver serves and its arguments.

    ``tally:<uuid>`` -> ``("tally", (uuid,))``, ``tally:<uuid>:chits`` -> ``("tally.chits",
    (uuid,))``, ``user:<cuid>:balance`` -> ``("user.balance", (cuid,))``, ``lift:<uuid>`` ->
    ``("lift", (uuid,))``, and agentd's own ``node:info`` -> ``("node.info", ())``.
    """
    check_view(segment)
    if segment == "node:info":
        return "node.info", ()
    match segment.split(":"):
        case ["tally", tally]:
            kind, arg, ok = "tally", tally, is_uuid(tally)
        case ["tally", tally, "chits"]:
            kind, arg, ok = "tally.chits", tally, is_uuid(tally)
        case ["user", cuid, "balance"]:
            kind, arg, ok = "user.balance", cuid, valid_cuid(cuid)
        case ["lift", lift]:
            kind, arg, ok = "lift", lift, is_uuid(lift)
        case _:
            raise AddressError(
                f"unknown view {segment!r}: expected tally:<uuid>, tally:<uuid>:chits, "
                "user:<cuid>:balance, lift:<uuid> or node:info"
            )
    if not ok:
        expected = "a user id (cuid)" if kind == "user.balance" else "a lowercase UUID"
        raise AddressError(f"view {segment!r}: {arg!r} is not {expected}")
    return kind, (arg,)
