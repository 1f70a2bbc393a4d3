"""The database handle: open, pragmas, migrations, and running transactions."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import aiosqlite

from node.storage.schema import MIGRATIONS
from node.types import FcnodeError

T = TypeVar("T")


class StorageError(FcnodeError):
    pass


def explain(path: Path, exc: sqlite3.Error) -> StorageError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return StorageError(f"database {path} is locked by another process ({text})")
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return StorageError(f"database {path} is corrupt ({text}); restore it from a backup")
    if "disk" in text and "full" in text:
        return StorageError(f"disk full while writing {path}; nothing was written")
    if "readonly" in text or "unable to open" in text:
        return StorageError(f"cannot open database {path} for writing ({text})")
    return StorageError(f"database {path}: {text}")


def _configure(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA busy_timeout = 2000")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise sqlite3.OperationalError(f"could not switch to WAL (journal_mode={mode})")
    # A committed record survives power loss (DESIGN.md section 7).
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    # Freed pages are zeroed, so purged content does not linger in the file.
    conn.execute("PRAGMA secure_delete = ON")


def _check(conn: sqlite3.Connection) -> None:
    row = conn.execute("PRAGMA quick_check").fetchone()
    if row[0] != "ok":
        raise sqlite3.DatabaseError(f"database disk image is malformed: {row[0]}")


def _migrate(conn: sqlite3.Connection) -> int:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise sqlite3.DatabaseError(
            f"schema version {version} is newer than this fcnode knows ({len(MIGRATIONS)})"
        )
    for number in range(version, len(MIGRATIONS)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(MIGRATIONS[number]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)


def _statements(script: str) -> list[str]:
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    return [s for s in out if s]


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction on a plain connection: committed whole, or rolled back."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def open_sync(path: Path, create: bool = False) -> sqlite3.Connection:
    """A plain connection, configured and migrated (init and tests use it)."""
    if not create and not path.exists():
        raise StorageError(f"database {path} does not exist (run fcnode init)")
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        _configure(conn)
        _check(conn)
        _migrate(conn)
    except sqlite3.Error as exc:
        raise explain(path, exc) from None
    return conn


def open_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection of its own (metrics, backups): it cannot write,
    and in WAL mode it neither blocks the writer nor waits for it."""
    if not path.exists():
        raise StorageError(f"database {path} does not exist (run fcnode init)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 2000")
    except sqlite3.Error as exc:
        raise explain(path, exc) from None
    return conn


class Database:
    """One connection on one thread; every transaction is a single hop to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        if not self.path.exists():
            raise StorageError(f"database {self.path} does not exist (run fcnode init)")
        path = self.path
        self._db = aiosqlite.connect(path, isolation_level=None)
        try:
            await self._db
            await self.run(lambda conn: (_configure(conn), _check(conn), _migrate(conn)),
                           transaction=False)
        except (sqlite3.Error, StorageError) as exc:
            # Close, or aiosqlite's connection thread keeps the process alive.
            await self.close()
            raise exc if isinstance(exc, StorageError) else explain(path, exc) from None

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    async def run(self, fn: Callable[[sqlite3.Connection], T], transaction: bool = True) -> T:
        """Run ``fn(conn)`` on the connection thread, in one IMMEDIATE transaction.

        aiosqlite has no public "run this on your thread" call; ``_execute`` is
        what its own methods use (pinned in pyproject). One hop per transaction
        is the whole point, so we depend on it here and nowhere else.
        """
        if self._db is None:
            raise StorageError("database is closed")
        db = self._db

        def call() -> T:
            conn = db._conn
            if not transaction:
                return fn(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        try:
            return await db._execute(call)
        except sqlite3.Error as exc:
            raise explain(self.path, exc) from None

    async def checkpoint(self) -> None:
        """Fold the WAL into the database and truncate it, so content deleted by
        a purge does not survive in old WAL frames."""
        await self.run(lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall(),
                       transaction=False)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only function (a deferred transaction: a consistent snapshot)."""
        if self._db is None:
            raise StorageError("database is closed")
        db = self._db

        def call() -> T:
            conn = db._conn
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("ROLLBACK")

        try:
            return await db._execute(call)
        except sqlite3.Error as exc:
            raise explain(self.path, exc) from None
