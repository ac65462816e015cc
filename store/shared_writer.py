"""One writer thread for the databases of many nodes in one process (``agentd sim``).

Hundreds of writer threads fight for the GIL: the sim's nodes share this one, which commits
each database's jobs as ``Database.commit_shared`` does — in order, with no owner's slices
(its nodes are all ours) — at ``synchronous = NORMAL`` (see ``store.db``).
"""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING

from store.db import MAX_BATCH

if TYPE_CHECKING:
    from store.db import Database, _Job


class SharedWriter:
    """One writer thread for many databases of this process: it takes every job waiting,
    commits each database's share as one batch (savepoint per job, as alone), and goes on.
    ``with SharedWriter() as writer`` starts and joins it; open the databases within."""

    def __init__(self, name: str = "sqlite-writer:shared") -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name)

    def __enter__(self) -> SharedWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._queue.put((None, None))
        self._thread.join()

    def put(self, db: Database, job: _Job) -> None:
        self._queue.put((db, job))

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batches: dict[Database, list[_Job]] = {}
            item, taken = first, 1
            while True:
                db, job = item
                if job is None:  # __exit__'s
                    for db, jobs in batches.items():
                        db.commit_shared(jobs)
                    return
                batches.setdefault(db, []).append(job)
                if taken >= MAX_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                taken += 1
            for db, jobs in batches.items():
                db.commit_shared(jobs)


__all__ = ["SharedWriter"]
