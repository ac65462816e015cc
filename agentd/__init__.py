"""The agentd runtime: config, node lifecycle, transport, peers, dispatch, services, RPC, CLI."""

__version__ = "0.1.0"
