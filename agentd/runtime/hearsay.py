"""Addresses taken on hearsay: where a good payment's route said its payee's node listens
(``RouteService.decided``), which a hop on the way could have made up.

Noise refuses an impostor there (we dial by agent id), but a lie would still have the node
dial a wrong host for ever, and keep it across restarts. So such an address is held in
memory only until a dial there is answered, which proves it: then it is stored as any
learned address is. After ``FORGET_AFTER`` failed dials in a row it is forgotten, and the
payee's node is again one this node cannot ask (``NO_ROUTE`` says so) until a later good
payment teaches an address again. An address the config names is never forgotten here. At
most ``MAX_UNPROVEN`` are held: one more forgets the oldest, as a failed one is forgotten.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("agentd.runtime.hearsay")
FORGET_AFTER = 3  # failed dials in a row at an unproven address before it is forgotten
MAX_UNPROVEN = 1024  # unproven addresses held at once (the payees of our users' payments)


class Hearsay:
    def __init__(self, addresses: dict[str, str], store: Callable[[str, str], None],
                 configured: Callable[[str], bool]) -> None:
        """``addresses``: the node's table of where to dial each agent, which this edits;
        ``store(agent, address)`` keeps a proven one; ``configured(agent)`` whether the
        config names it."""
        self._addresses = addresses
        self._store = store
        self._configured = configured
        self._unproven: dict[str, tuple[str, int]] = {}  # agent -> (address, failed dials)

    def learn(self, agent: str, address: str) -> None:
        """Dial ``agent`` at ``address`` from now on, until dials there fail."""
        self._addresses[agent] = address
        self._unproven.pop(agent, None)  # re-learnt: the newest again
        self._unproven[agent] = (address, 0)
        if len(self._unproven) > MAX_UNPROVEN:
            oldest = next(iter(self._unproven))
            self._forget(oldest, self._unproven.pop(oldest)[0])

    def drop(self, agent: str) -> None:
        """``agent``'s address came from elsewhere (the config, a hello, a ticket): not ours."""
        self._unproven.pop(agent, None)

    def dialled(self, agent: str, address: str, answered: bool) -> None:
        """A dial of ``agent`` at ``address`` was answered (a handshake) or failed."""
        unproven = self._unproven.get(agent)
        if unproven is None or unproven[0] != address:
            return
        if answered:
            del self._unproven[agent]
            self._store(agent, address)
            return
        failed = unproven[1] + 1
        if failed < FORGET_AFTER:
            self._unproven[agent] = (address, failed)
            return
        del self._unproven[agent]
        if self._forget(agent, address):
            log.warning("agent %s: forgot %s, which a payment's route gave as where its node "
                        "listens, after %d failed dials there", agent[:8], address, failed)

    def _forget(self, agent: str, address: str) -> bool:
        """Stop dialling ``agent`` at ``address``, unless the config names it or another
        address replaced it; whether it was forgotten."""
        if self._addresses.get(agent) != address or self._configured(agent):
            return False
        del self._addresses[agent]
        return True
