"""The ports a node listens on, bound before it starts any work: a port in use stops the
start with one clear line, before a service has asked anything of anyone (a chain repair
had asked partners for blocks, and died mid-send with a traceback in the log)."""

from __future__ import annotations

import errno
import socket

import trio

from agentd.config import Config
from agentd.errors import UserError
from agentd.runtime.limits import defer_accept
from protocol.keys import parse_hostport


async def bind_ports(config: Config, host: str | None, port: int
                     ) -> tuple[list[trio.SocketListener], list[trio.SocketListener]]:
    """The peer port's listeners and the metrics port's (none when not configured)."""
    listeners = await _listen(config, "node.listen", config.listen, host, port)
    defer_accept(listeners, config.limits.defer_accept)
    if not config.metrics_listen:
        return listeners, []
    try:
        metrics_host, metrics_port = parse_hostport(config.metrics_listen)
        return listeners, await _listen(config, "metrics.listen", config.metrics_listen,
                                        metrics_host, metrics_port)
    except BaseException:
        for listener in listeners:
            await listener.aclose()
        raise


async def _listen(config: Config, key: str, listen: str, host: str | None, port: int
                  ) -> list[trio.SocketListener]:
    """Listeners on ``listen``, else a config error naming the file and the key, as every
    other config error does."""
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except (OSError, UnicodeError) as exc:  # UnicodeError: a name IDNA refuses (a..b)
        raise UserError(f"{config.path}: {key} {listen}: cannot listen there: "
                        f"{_why(exc)}") from exc


def _why(exc: OSError | UnicodeError) -> str:
    if isinstance(exc, UnicodeError):
        return f"not a valid host name ({exc})"
    if exc.errno == errno.EADDRINUSE:  # not this node: its data_dir's lock is taken first
        return ("address already in use by another process (ss -ltnp names it): stop that "
                "or pick another port")
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no interface of this host has that address"
    if isinstance(exc, socket.gaierror):
        return f"no such host ({exc.strerror})"
    return exc.strerror or str(exc)
