"""The node's SQLite database (WAL mode): the one place where state that must survive a crash lives.

Each table has one owner module: the only module whose SQL names the table. The owner declares a
:class:`Schema` — its name and an ordered list of :class:`Step` s (DDL, or a function for a table
rebuild) — and applies it with :meth:`Database.migrate` when it is constructed, i.e. at start-up. Other
stages call the owner's methods, never its SQL (``tests/unit/test_architecture_sql.py`` keeps it so).

Versions: the ``schema_versions`` table holds how many steps of each owner's schema the file has; ``PRAGMA
user_version`` holds their sum (the file's overall schema version; 0 is a file from before migrations,
whose tables are each owner's step 1 — that step is ``CREATE TABLE IF NOT EXISTS`` as it always was, so
an old file upgrades in place). Steps are append-only: a change to a table (a new column, a new member of
a state enum and so the CHECK it generates) is a new step at the end, never an edit of an applied one.
A file whose version of an owner is newer than this code knows is refused (a downgrade).

Connections are per thread, kept by the :class:`Database` instance (no module-level state).
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from dicomnode.errors import DicomNodeError

VERSIONS_DDL = """CREATE TABLE IF NOT EXISTS schema_versions (
    owner TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    updated_at REAL NOT NULL
)"""


class DatabaseError(DicomNodeError):
    """The node's database could not be opened or written."""


def sql_list(values: Iterable[str]) -> str:
    """``'a', 'b'`` — the members of a value set quoted for an ``IN (…)`` list in an owner's SQL."""
    return ", ".join("'" + str(v).replace("'", "''") + "'" for v in values)


def check_in(column: str, values: type[StrEnum] | Iterable[str]) -> str:
    """``CHECK (column IN ('a', 'b'))`` for a state column, generated from its :class:`StrEnum`."""
    return f"CHECK ({column} IN ({sql_list(values)}))"


def split_statements(script: str) -> list[str]:
    """The complete SQL statements of ``script`` (``executescript`` would commit; steps run in a
    transaction, so they are executed one by one)."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip().strip(";").strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        raise DatabaseError(f"Incomplete SQL statement in a schema step: {buffer.strip()!r}.")
    return statements


def rebuild_table(conn: sqlite3.Connection, table: str, ddl: str) -> None:
    """Re-create ``table`` from ``ddl`` (its ``CREATE TABLE`` plus its ``CREATE INDEX`` statements) and
    copy the rows over, for what ``ALTER TABLE`` cannot do (a new or changed CHECK constraint). Columns
    present in both keep their values; a column the old table lacks gets its default."""
    statements = split_statements(ddl)
    create = re.compile(rf"^CREATE TABLE (IF NOT EXISTS )?{re.escape(table)}\b", re.IGNORECASE)
    if not statements or not create.match(statements[0]):
        raise DatabaseError(f"A rebuild of table '{table}' needs its CREATE TABLE first, got {ddl[:60]!r}.")
    scratch = f"{table}__rebuild"
    old = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
    conn.execute(f"DROP TABLE IF EXISTS {scratch}")
    conn.execute(create.sub(f"CREATE TABLE {scratch}", statements[0], count=1))
    new = {r[1] for r in conn.execute(f"PRAGMA table_info({scratch})")}
    if old:
        shared = ", ".join(c for c in old if c in new)
        conn.execute(f"INSERT INTO {scratch} ({shared}) SELECT {shared} FROM {table}")
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"ALTER TABLE {scratch} RENAME TO {table}")
    for statement in statements[1:]:
        conn.execute(statement)


@dataclass(frozen=True)
class Step:
    """One schema step: DDL statements, or a function run on the migrating connection."""

    description: str
    apply: str | Callable[[sqlite3.Connection], None]

    def run(self, conn: sqlite3.Connection) -> None:
        if callable(self.apply):
            self.apply(conn)
            return
        for statement in split_statements(self.apply):
            conn.execute(statement)


@dataclass(frozen=True)
class Schema:
    """An owner's tables and the steps that build them; its version is the number of steps."""

    owner: str
    tables: tuple[str, ...]
    steps: tuple[Step, ...]

    @property
    def version(self) -> int:
        return len(self.steps)


class Database:
    """A SQLite database file shared by the node's components (and by CLI commands reading it)."""

    def __init__(self, path: Path | str, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self._timeout = timeout
        self._local = threading.local()
        self._schema_lock = threading.Lock()
        self._migrated: dict[str, int] = {}
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

    def migrate(self, schema: Schema) -> int:
        """Bring ``schema``'s tables to its latest version (once per Database instance); returns the
        version the file had before. Runs in one transaction: a failed step leaves the file as it was."""
        with self._schema_lock:
            if schema.owner in self._migrated:
                return self._migrated[schema.owner]
            with self.transaction() as conn:
                conn.execute(VERSIONS_DDL)
                row = conn.execute(
                    "SELECT version FROM schema_versions WHERE owner = ?", (schema.owner,)
                ).fetchone()
                before = int(row["version"]) if row is not None else 0
                if before > schema.version:
                    raise DatabaseError(
                        f"The node database '{self.path}' has version {before} of the '{schema.owner}' "
                        f"schema, newer than this dicomnode knows ({schema.version}); it was written by a "
                        "newer release. Run that release, or restore a backup made before the upgrade."
                    )
                for number, step in enumerate(schema.steps[before:], start=before + 1):
                    try:
                        step.run(conn)
                    except sqlite3.Error as exc:
                        raise DatabaseError(
                            f"Schema step {number} of '{schema.owner}' ({step.description}) failed on the "
                            f"node database '{self.path}': {exc}."
                        ) from exc
                if before != schema.version:
                    conn.execute(
                        "INSERT INTO schema_versions (owner, version, updated_at) VALUES (?, ?, ?) "
                        "ON CONFLICT(owner) DO UPDATE SET version = excluded.version, "
                        "updated_at = excluded.updated_at",
                        (schema.owner, schema.version, time.time()),
                    )
                    total = conn.execute("SELECT COALESCE(SUM(version), 0) FROM schema_versions").fetchone()
                    conn.execute(f"PRAGMA user_version = {int(total[0])}")
            self._migrated[schema.owner] = before
            return before

    def schema_versions(self) -> dict[str, int]:
        """Each owner's applied version (``schema_versions``); empty for a file from before migrations."""
        self.conn.execute(VERSIONS_DDL)
        return {r["owner"]: int(r["version"]) for r in self.conn.execute("SELECT * FROM schema_versions")}

    def user_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
