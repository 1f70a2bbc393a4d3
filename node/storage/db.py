"""The database handle: open, pragmas, migrations, and running transactions."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from node.core.types import FcnodeError
from node.storage.schema import MIGRATIONS

T = TypeVar("T")

# Read connections beside the one writer. Two: a status and a search (or a
# replication read) at once on a 2-core machine; more would only contend.
READERS = 2


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
    if version < len(MIGRATIONS):
        # A migration that rebuilds a table (the log, migration 16) writes the copy and
        # the old pages, zeroed (secure_delete), through the WAL: a 121 MB log left a
        # 122 MB WAL file, kept at that size until a truncating checkpoint. Fold it now.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
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
    """One write transaction on a plain connection: committed whole, or rolled back.
    (If SQLite rolled it back itself, e.g. a full disk, the original error is the
    one raised, not the failing ROLLBACK's.)"""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
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


class _Reader:
    """One read-only connection on its own thread (a one-worker executor), so
    every read transaction is a single hop and the connection is never shared
    by two threads at once."""

    def __init__(self, path: Path) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fcnode-reader")
        self.conn: sqlite3.Connection | None = None
        self.path = path

    def open(self) -> None:  # runs on the reader's thread
        self.conn = open_reader(self.path)

    def close(self) -> None:  # runs on the reader's thread
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.close()


class Database:
    """One writer connection on one thread, and a few read connections on
    their own threads; every transaction is a single hop to one of them.

    Writes stay serialized on the writer. Reads run on the readers: in WAL mode
    each read transaction sees the last committed state (whatever ``run``
    returned from has been committed) and neither waits for the writer nor
    delays it, so a status or a search answers while a catch-up is ingesting.
    """

    def __init__(self, path: Path, readers: int = READERS) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._readers_wanted = readers
        self._readers: list[_Reader] = []
        self._idle: asyncio.Queue[_Reader] | None = None
        # Urgent writes queued for the writer and not started yet (see run_steps).
        # Changed on the event loop and the writer thread under the GIL.
        self._urgent = 0
        # While run_steps holds the writer, urgent writes join its transaction after
        # the current step (one commit, no second hop): (fn, loop, future) each.
        self._stepping = False
        self._joining: collections.deque[tuple[Callable[[sqlite3.Connection], Any],
                                               asyncio.AbstractEventLoop,
                                               asyncio.Future[Any]]] = collections.deque()
        self._join_lock = threading.Lock()

    async def open(self) -> None:
        if not self.path.exists():
            raise StorageError(f"database {self.path} does not exist (run fcnode init)")
        path = self.path
        self._db = aiosqlite.connect(path, isolation_level=None)
        try:
            await self._db
            await self.run(lambda conn: (_configure(conn), _check(conn), _migrate(conn)),
                           transaction=False)
            # Readers open after the writer switched to WAL and migrated: a
            # read-only connection can do neither.
            await self._open_readers()
        except (sqlite3.Error, StorageError) as exc:
            # Close, or aiosqlite's connection thread keeps the process alive.
            await self.close()
            raise exc if isinstance(exc, StorageError) else explain(path, exc) from None

    async def _open_readers(self) -> None:
        loop = asyncio.get_running_loop()
        self._idle = asyncio.Queue()
        for _ in range(self._readers_wanted):
            reader = _Reader(self.path)
            self._readers.append(reader)
            await loop.run_in_executor(reader.executor, reader.open)
            self._idle.put_nowait(reader)

    async def close(self) -> None:
        readers, self._readers, self._idle = self._readers, [], None
        loop = asyncio.get_running_loop()
        for reader in readers:
            with contextlib.suppress(sqlite3.Error):
                await loop.run_in_executor(reader.executor, reader.close)
            reader.executor.shutdown(wait=False)
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    async def run(self, fn: Callable[[sqlite3.Connection], T], transaction: bool = True,
                  urgent: bool = False) -> T:
        """Run ``fn(conn)`` on the connection thread, in one IMMEDIATE transaction.

        ``urgent``: a short write a user waits for (the audit entry of a search):
        while a long write of several steps holds the writer (run_steps), it joins
        that transaction after the current step, in a savepoint, and returns once
        that commit is durable (one commit, no wait for the rest of the steps).

        aiosqlite has no public "run this on your thread" call; ``_execute`` is
        what its own methods use (pinned in pyproject). One hop per transaction
        is the whole point, so we depend on it here and nowhere else.
        """
        if self._db is None:
            raise StorageError("database is closed")
        db = self._db
        if urgent and transaction:
            loop = asyncio.get_running_loop()
            joined: asyncio.Future[T] = loop.create_future()
            with self._join_lock:
                stepping = self._stepping
                if stepping:  # joins the long write's transaction (run_steps)
                    self._joining.append((fn, loop, joined))
            if stepping:
                return await joined

        def call() -> T:
            if urgent:
                with self._join_lock:  # the event loop adds, this thread takes away
                    self._urgent -= 1
            conn = db._conn
            if not transaction:
                return fn(conn)
            with immediate(conn):
                return fn(conn)

        if urgent:
            with self._join_lock:
                self._urgent += 1
        try:
            return await db._execute(call)
        except sqlite3.Error as exc:
            raise explain(self.path, exc) from None

    async def run_steps(self, steps: Sequence[Callable[[sqlite3.Connection], T]],
                        committed: list[T] | None = None) -> list[T]:
        """Run the steps in order on the writer, as few IMMEDIATE transactions as
        possible: one, unless an urgent write (``run(urgent=True)``) is waiting,
        in which case the transaction commits after the current step, the urgent
        write runs, and the remaining steps continue in a new transaction. So a
        long write (a catch-up's batches) never holds a user's write back for
        more than one step. Each transaction commits whole or not at all: after a
        failure, the steps committed before it stay, and the error is raised.
        Returns every step's result, in order; ``committed`` (if given) receives
        the results of the steps committed so far, also when a later one fails."""
        if self._db is None:
            raise StorageError("database is closed")
        db = self._db
        out: list[T] = []

        def call(todo: Sequence[Callable[[sqlite3.Connection], T]]) -> list[T]:
            conn = db._conn
            done: list[T] = []
            joined: list[tuple[Any, Any, BaseException | None]] = []
            taken: list[Any] = []  # urgent writes taken into this transaction
            failed: BaseException | None = None
            with self._join_lock:
                self._stepping = True
            try:
                with immediate(conn):
                    for step in todo:
                        done.append(step(conn))
                        if self._urgent > 0 or self._joining:
                            break  # commit and let the urgent write in (or with it)
                    with self._join_lock:
                        taken = self._take_joined()
                    joined = self._run_joined(conn, taken)
            except BaseException as exc:
                failed = exc
            finally:
                with self._join_lock:
                    self._stepping = False
                    left = self._take_joined()
            if failed is None:
                self._settle_joined(joined)  # committed: durable, their callers go on
            else:  # rolled back with the long write: they run again, on their own
                left = taken + left
            if left:
                self._run_alone(conn, left)
            if failed is not None:
                raise failed
            return done

        while len(out) < len(steps):
            rest = steps[len(out):]
            try:
                part = await db._execute(call, rest)
            except sqlite3.Error as exc:
                raise explain(self.path, exc) from None
            out.extend(part)
            if committed is not None:
                committed.extend(part)
        return out

    def _take_joined(self) -> list[Any]:
        out = list(self._joining)
        self._joining.clear()
        return out

    def _run_joined(self, conn: sqlite3.Connection, todo: list[Any]
                    ) -> list[tuple[Any, Any, BaseException | None]]:
        """Urgent writes that joined, each in a savepoint of the transaction in
        progress (one that fails leaves the rest): (entry, result, error) each.
        If SQLite undid the whole transaction (the savepoint is gone) this raises,
        and the caller runs them all again on their own."""
        out = []
        for entry in todo:
            conn.execute("SAVEPOINT joined")
            try:
                result = entry[0](conn)
            except BaseException as exc:  # that caller's error, not the long write's
                # (signals reach the main thread only: nothing here is a Ctrl-C)
                conn.execute("ROLLBACK TO joined")
                conn.execute("RELEASE joined")
                err = explain(self.path, exc) if isinstance(exc, sqlite3.Error) else exc
                out.append((entry, None, err))
                continue
            conn.execute("RELEASE joined")
            out.append((entry, result, None))
        return out

    @staticmethod
    def _settle_joined(results: list[tuple[Any, Any, BaseException | None]]) -> None:
        for (_, loop, fut), result, err in results:
            def settle(fut: asyncio.Future[Any] = fut, result: Any = result,
                       err: BaseException | None = err) -> None:
                if fut.done():
                    return
                if err is not None:
                    fut.set_exception(err)
                else:
                    fut.set_result(result)
            loop.call_soon_threadsafe(settle)

    def _run_alone(self, conn: sqlite3.Connection, entries: list[Any]) -> None:
        """Urgent writes that joined after the last step (or whose long write
        failed): each in a transaction of its own, on the writer thread, so that
        one failing cannot take the others with it."""
        for entry in entries:
            try:
                with immediate(conn):
                    [settled] = self._run_joined(conn, [entry])
            except BaseException as exc:
                err = explain(self.path, exc) if isinstance(exc, sqlite3.Error) else exc
                settled = (entry, None, err)
            self._settle_joined([settled])

    async def checkpoint(self) -> None:
        """Fold the WAL into the database and truncate it, so content deleted by
        a purge does not survive in old WAL frames."""
        await self.run(lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall(),
                       transaction=False)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only function on a reader connection, in a deferred
        transaction: a consistent snapshot of the last committed state, taken
        without waiting for a write transaction in progress. ``fn`` must not
        write (the connection is read-only: a write raises)."""
        idle = self._idle
        if self._db is None or idle is None:
            raise StorageError("database is closed")
        reader = await idle.get()

        def call() -> T:
            conn = reader.conn
            if conn is None:
                raise StorageError("database is closed")
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("ROLLBACK")

        try:
            return await asyncio.get_running_loop().run_in_executor(reader.executor, call)
        except sqlite3.Error as exc:
            raise explain(self.path, exc) from None
        finally:
            # Back even if the caller was cancelled: the one-worker executor
            # runs the next call only after this one finished on the connection.
            idle.put_nowait(reader)
