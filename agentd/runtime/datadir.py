"""The data directory: claimed by one node at a time, private to its owner.

The lock is taken before anything else starts (database, listener, peers, services), so a
second node on the same directory refuses at once and touches nothing. The directory holds
every hosted user's signing seed, so it is made 0700 when we create it, and an existing one
that others can read draws a warning at start.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from agentd.errors import UserError

log = logging.getLogger("agentd.runtime.datadir")
LOCK_NAME = "agentd.lock"


@contextlib.contextmanager
def claim(data_dir: Path) -> Iterator[None]:
    """Create (0700) or check ``data_dir`` and hold its lock until the block ends."""
    created = not data_dir.exists()
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise UserError(f"{data_dir}: cannot create data dir: {exc.strerror}") from exc
    if created:
        os.chmod(data_dir, 0o700)  # whatever the umask
    if not os.access(data_dir, os.R_OK | os.W_OK | os.X_OK):
        raise UserError(f"{data_dir}: data dir is not readable and writable")
    warn_if_shared(data_dir, "data dir", "chmod 700 it")
    try:
        fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UserError(f"{data_dir}: cannot create {LOCK_NAME}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{data_dir}: another agentd is already running on this data dir"
                            " (stop it first, or give this node its own data_dir)") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def in_use(data_dir: Path) -> bool:
    """Whether a node holds ``data_dir``'s lock: it does until its very end (its database
    closed), after it has removed its control socket."""
    try:
        fd = os.open(data_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # and with it the shared lock, if it was taken
    return False


def warn_if_shared(path: Path, what: str, fix: str) -> None:
    """Log a warning when group or others may read ``path``."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s: %s is readable by others (mode %o); %s", path, what, mode, fix)


__all__ = ["claim", "in_use", "warn_if_shared"]
