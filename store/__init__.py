"""SQLite persistence: schema and migrations, the single-writer database, repositories.

No sockets and no protocol decisions live here.
"""

from store.db import Database, DatabaseError, is_failure
from store.shared_writer import SharedWriter

__all__ = ["Database", "DatabaseError", "SharedWriter", "is_failure"]
