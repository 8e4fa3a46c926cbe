"""The SQLite database under the data dir, used off the event loop through one thread of its own.

sqlite3 connections belong to the thread that made them, so every statement runs on a single
worker thread; features register their schema with `Database(path, schemas=[...])`, and the columns
they added since with `added_columns=[...]` (a database made by an earlier version gets them on open).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# The first 16 bytes of every SQLite database file.
SQLITE_HEADER = b"SQLite format 3\x00"
# Files SQLite keeps beside a database in WAL mode; they travel with it when it is set aside.
COMPANIONS = ("-wal", "-shm")


def broken_reason(path: Path) -> str | None:
    """Why the database file at `path` cannot be trusted (None when it is fine or not there yet).

    An empty file opens as a valid, empty database: the server then took every job folder for an
    orphan and deleted it. A file that exists is either a database SQLite vouches for, or broken.
    """
    if not path.exists():
        return None
    with path.open("rb") as file:
        header = file.read(len(SQLITE_HEADER))
    if not header:
        return "the file is empty (0 bytes)"
    if header != SQLITE_HEADER:
        return "the file is not an SQLite database"
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            verdict = connection.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            connection.close()
    except sqlite3.DatabaseError as e:
        return f"SQLite cannot read it ({e})"
    return None if verdict == "ok" else f"SQLite's quick_check found damage ({verdict})"


def set_aside(path: Path) -> Path:
    """Rename a broken database (and its WAL files) out of the way; returns its new name."""
    aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
    for suffix in ("", *COMPANIONS):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            companion.rename(aside.with_name(aside.name + suffix))
    return aside


class DatabaseBroken(RuntimeError):
    """The database file exists but cannot be trusted; serving it as empty would delete what it knew."""


# A column a feature added after its table first shipped: (table, column, declaration). A database
# made before it gets it on open (ALTER TABLE ... ADD COLUMN), holding NULL in the older rows.
AddedColumn = tuple[str, str, str]


class Database:
    def __init__(self, path: Path, schemas: Iterable[str] = (), added_columns: Iterable[AddedColumn] = ()) -> None:
        self.path = path
        self._schemas = list(schemas)
        self._added = list(added_columns)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stylize-db")
        self._connection: sqlite3.Connection | None = None

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._open)

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work(connection)` on the database thread as one transaction."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._transaction, work)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        reason = broken_reason(self.path)
        if reason is not None:
            raise DatabaseBroken(f"the database {self.path} is broken: {reason}")
        connection = sqlite3.connect(self.path, isolation_level=None)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        for schema in self._schemas:
            connection.executescript(schema)
        for table, column, declaration in self._added:
            present = {row["name"] for row in connection.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        self._connection = connection

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        connection = self._connection
        if connection is None:
            raise RuntimeError(f"database {self.path} is not open")
        connection.execute("BEGIN IMMEDIATE")
        try:
            result = work(connection)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        return result

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
