"""The node's SQLite database (WAL mode): the one place where state that must survive a crash lives.

Each component owns its tables and declares them with :meth:`Database.ensure_schema` (idempotent
``CREATE TABLE IF NOT EXISTS`` statements) when it is constructed. Connections are per thread, kept by
the :class:`Database` instance (no module-level state).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from dicomnode.errors import DicomNodeError


class DatabaseError(DicomNodeError):
    """The node's database could not be opened or written."""


class Database:
    """A SQLite database file shared by the node's components (and by CLI commands reading it)."""

    def __init__(self, path: Path | str, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self._timeout = timeout
        self._local = threading.local()
        self._schema_lock = threading.Lock()
        self._schemas: set[str] = set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.transaction() as conn:
                conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as exc:
            raise DatabaseError(f"Cannot open the node database '{self.path}': {exc}.") from exc
        with suppress(OSError):
            self.path.chmod(0o600)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (autocommit mode; use :meth:`transaction` for atomic groups)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (or ``ROLLBACK`` on error) on this thread's connection."""
        conn = self.conn
        if conn.in_transaction:  # nested use joins the outer transaction
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def ensure_schema(self, ddl: str) -> None:
        """Run idempotent DDL once per Database instance."""
        with self._schema_lock:
            if ddl in self._schemas:
                return
            self.conn.executescript(ddl)
            self._schemas.add(ddl)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
