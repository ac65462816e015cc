"""SQLite persistence: schema and migrations, the single-writer database, repositories.

No sockets and no protocol decisions live here.
"""

from store.db import Database, DatabaseError, SharedWriter, is_failure

__all__ = ["Database", "DatabaseError", "SharedWriter", "is_failure"]
