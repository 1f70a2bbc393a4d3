"""Reads never wait behind writes (issue 10 item 1): Database.read runs on its
own read-only connections, so it answers while a write transaction holds the
writer, and it sees the last committed state."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from node.storage.db import Database, StorageError, open_sync

# How long a test waits for something that should happen at once. Not a
# timing assertion: it turns "the read queued behind the writer" into a
# failure instead of a hang.
GUARD_S = 10.0


def make_db(tmp_path: Path) -> Path:
    path = tmp_path / "node.db"
    conn = open_sync(path, create=True)
    conn.execute("CREATE TABLE probe (x INTEGER)")
    conn.execute("INSERT INTO probe VALUES (1)")
    conn.close()
    return path


def values(conn: sqlite3.Connection) -> list[int]:
    return [r[0] for r in conn.execute("SELECT x FROM probe ORDER BY x")]


def test_a_read_answers_while_a_write_transaction_holds_the_writer(tmp_path: Path) -> None:
    path = make_db(tmp_path)

    async def main() -> list[str]:
        db = Database(path)
        await db.open()
        events: list[str] = []
        inside, release = threading.Event(), threading.Event()

        def long_write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO probe VALUES (2)")
            inside.set()
            # The writer thread stays inside its IMMEDIATE transaction until
            # the test has read: a long ingest transaction, frozen.
            if not release.wait(GUARD_S):
                events.append("writer gave up waiting")
            events.append("write committing")

        try:
            writer = asyncio.create_task(db.run(long_write))
            assert await asyncio.to_thread(inside.wait, GUARD_S)
            # Two reads at once: both readers, neither waits for the writer.
            seen = await asyncio.wait_for(
                asyncio.gather(db.read(values), db.read(values)), GUARD_S)
            events.append(f"read saw {seen[0]} and {seen[1]}")
            release.set()
            await writer
            events.append(f"read after commit saw {await db.read(values)}")
        finally:
            release.set()
            await db.close()
        return events

    assert asyncio.run(main()) == [
        "read saw [1] and [1]",          # the last committed state, not the open write
        "write committing",
        "read after commit saw [1, 2]",  # read-your-writes once run() returned
    ]


def test_a_read_cannot_write(tmp_path: Path) -> None:
    path = make_db(tmp_path)

    async def main() -> list[int]:
        db = Database(path)
        await db.open()
        try:
            with pytest.raises(StorageError, match=r"readonly|read-only"):
                await db.read(lambda c: c.execute("INSERT INTO probe VALUES (3)"))
            return await db.read(values)
        finally:
            await db.close()

    assert asyncio.run(main()) == [1]


def test_read_after_close_is_a_clear_error(tmp_path: Path) -> None:
    path = make_db(tmp_path)

    async def main() -> None:
        db = Database(path)
        await db.open()
        await db.close()
        with pytest.raises(StorageError, match="closed"):
            await db.read(values)

    asyncio.run(main())


# -- a long write yields the writer to a user's urgent write (run_steps) ------------
def _steps_with_a_write_arriving(tmp_path: Path, urgent: bool) -> list[str]:
    """Three steps of a long write (a catch-up's parts); while the first runs, a
    user's short write (a search's audit entry) is queued."""
    path = make_db(tmp_path)

    async def main() -> list[str]:
        db = Database(path)
        await db.open()
        events: list[str] = []
        inside, release = threading.Event(), threading.Event()

        def step(n: int):
            def run(conn: sqlite3.Connection) -> int:
                conn.execute("INSERT INTO probe VALUES (?)", (10 + n,))
                if n == 1:
                    inside.set()
                    if not release.wait(GUARD_S):
                        events.append("step gave up waiting")
                events.append(f"step {n}")
                return n
            return run

        def user_write(conn: sqlite3.Connection) -> None:
            events.append(f"user write sees {values(conn)}")
            conn.execute("INSERT INTO probe VALUES (99)")

        try:
            long = asyncio.create_task(db.run_steps([step(1), step(2), step(3)]))
            assert await asyncio.to_thread(inside.wait, GUARD_S)
            short = asyncio.create_task(db.run(user_write, urgent=urgent))
            for _ in range(1000):  # until the short write is queued for the writer
                await asyncio.sleep(0)
                if db._db is not None and not db._db._tx.empty():
                    break
            release.set()
            assert await asyncio.wait_for(long, GUARD_S) == [1, 2, 3]
            await asyncio.wait_for(short, GUARD_S)
            events.append(f"finally {await db.read(values)}")
        finally:
            release.set()
            await db.close()
        return events

    return asyncio.run(main())


def test_an_urgent_write_goes_in_between_the_steps_of_a_long_write(tmp_path: Path) -> None:
    assert _steps_with_a_write_arriving(tmp_path, urgent=True) == [
        "step 1",
        "user write sees [1, 11]",  # step 1 committed, then the user's write
        "step 2",
        "step 3",
        "finally [1, 11, 12, 13, 99]",
    ]


def test_an_ordinary_write_waits_for_the_whole_long_write(tmp_path: Path) -> None:
    assert _steps_with_a_write_arriving(tmp_path, urgent=False) == [
        "step 1", "step 2", "step 3",
        "user write sees [1, 11, 12, 13]",
        "finally [1, 11, 12, 13, 99]",
    ]


def test_a_failing_step_rolls_back_the_transaction_in_progress(tmp_path: Path) -> None:
    """With no urgent write waiting the steps are one transaction: a failure in
    the second leaves nothing of the first either."""
    path = make_db(tmp_path)

    async def main() -> list[int]:
        db = Database(path)
        await db.open()

        def fail(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO probe VALUES (3)")
            raise ValueError("bad part")

        try:
            with pytest.raises(ValueError, match="bad part"):
                await db.run_steps([lambda c: c.execute("INSERT INTO probe VALUES (2)"), fail])
            return await db.read(values)
        finally:
            await db.close()

    assert asyncio.run(main()) == [1]  # one transaction: nothing was urgent
