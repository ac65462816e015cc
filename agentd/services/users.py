"""Hosted CHIP users: each has its own Ed25519 signing key, kept in the node's database."""

from __future__ import annotations

from agentd.rpc import invalid_params
from agentd.runtime.context import Reject, Runtime
from protocol.keys import CUID_RULE, SigningKey, b64u, valid_cuid
from store import users


class Users:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        runtime.register_method("users.add", self.rpc_add)
        runtime.register_method("users.list", self.rpc_list)

    async def rpc_add(self, cuid: str, name: str | None = None) -> dict:
        """Create a user with a fresh signing key; returns its CHIP address. ``name`` goes
        into the user's certificate, which tally partners see (default: the cuid)."""
        if not valid_cuid(cuid):
            raise invalid_params(
                f"cuid {cuid!r} must be {CUID_RULE}")
        if name is not None and not isinstance(name, str):
            raise invalid_params("name must be text")
        key = SigningKey.generate()
        now = self.runtime.clock.now_ms()
        added = await self.runtime.db.write(
            lambda conn: users.add(conn, cuid, name or cuid, key.seed, key.public, now))
        if not added:
            raise Reject("USER_EXISTS", f"user {cuid!r} already exists on this node")
        return {"cuid": cuid, "address": str(self.runtime.own_address(cuid))}

    async def rpc_list(self) -> list[dict]:
        """Users hosted on this node, with their CHIP addresses and public keys."""
        return [
            {"cuid": row["cuid"], "name": row["name"],
             "address": str(self.runtime.own_address(row["cuid"])), "public": b64u(row["public"])}
            for row in self.runtime.db.reading(users.all_users)
        ]
