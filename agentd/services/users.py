"""Hosted CHIP users: each has its own Ed25519 signing key, kept in the node's database."""

from __future__ import annotations

import re

from agentd.printable import CONTROLS, SEPARATORS
from agentd.rpc import invalid_params
from agentd.runtime.context import Reject, Runtime
from protocol.keys import CUID_RULE, SigningKey, b64u, valid_cuid
from protocol.tally_fields import MAX_CERT_NAME
from store import users

NAME_RULE = (f"must be at most {MAX_CERT_NAME} characters (the user's certificate carries "
             "it, and its tally partners see it), with no line breaks, tabs or other control "
             "characters")
_CONTROL = re.compile(f"[{CONTROLS}{SEPARATORS}]")  # bidi marks are a name's own


def _check_name(name: object) -> None:
    """A user's name as its certificate may carry it: a longer one was taken, and every
    tally the user then invited or offered was refused (``BAD_FIELD``) with no way to rename
    the user. Any script's characters are taken (a ZWNJ in a Persian name, a no-break space);
    an empty name means the cuid, as no name does."""
    if not isinstance(name, str):
        raise invalid_params(f"name {NAME_RULE}, not {type(name).__name__}")
    if len(name) <= MAX_CERT_NAME and not _CONTROL.search(name):
        return
    shown = f"{len(name)} characters ({name[:24]!r}...)" if len(name) > MAX_CERT_NAME \
        else repr(name)
    raise invalid_params(f"name {NAME_RULE}, not {shown}")


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
        if name is not None:
            _check_name(name)
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
