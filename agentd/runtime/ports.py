"""The ports a node listens on, bound before it starts any work: a port in use stops the
start with one clear line, before a service has asked anything of anyone (a chain repair
had asked partners for blocks, and died mid-send with a traceback in the log)."""

from __future__ import annotations

import errno

import trio

from agentd.config import Config
from agentd.errors import UserError
from agentd.runtime.limits import defer_accept
from agentd.runtime.metrics import Metrics


async def bind_ports(config: Config, host: str | None, port: int
                     ) -> tuple[list[trio.SocketListener], list[trio.SocketListener]]:
    """The peer port's listeners and the metrics port's (none when not configured)."""
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise UserError(f"cannot listen on {config.listen}: {reason}") from exc
    defer_accept(listeners, config.limits.defer_accept)
    try:
        metrics = await Metrics.bind(config.metrics_listen) if config.metrics_listen else []
    except UserError:
        for listener in listeners:
            await listener.aclose()
        raise
    return listeners, metrics
