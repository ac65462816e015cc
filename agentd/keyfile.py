"""The agent key file: one base64url Ed25519 seed, readable by its owner only (0600)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from agentd.errors import UserError
from protocol.keys import IdentityError, SigningKey

log = logging.getLogger("agentd.keyfile")


def write_key(path: Path, key: SigningKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise UserError(f"{path}: key file already exists; refusing to overwrite it") from exc
    with os.fdopen(fd, "w") as handle:
        handle.write(key.dump())


def missing_key(path: Path) -> str:
    """What to do about a key file that is not there."""
    return (f"{path}: key file not found (a new node: create it with 'agentd init'; if "
            "data_dir was changed in the config, move the old data_dir's files there, or set "
            "it back: they hold the node's key and database)")


def read_key(path: Path) -> SigningKey:
    try:
        text = path.read_text(encoding="ascii")
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise UserError(missing_key(path)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read key file: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s: key file is readable by others (mode %o); chmod 600 it",
                    path, stat.S_IMODE(mode))
    try:
        return SigningKey.load(text)
    except IdentityError as exc:
        raise UserError(f"{path}: not an agentd key file: {exc}") from exc
