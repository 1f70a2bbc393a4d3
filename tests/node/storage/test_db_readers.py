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
                if db._joining or (db._db is not None and not db._db._tx.empty()):
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


# -- an urgent write joins the long write's transaction: one commit, its own savepoint ----
def _urgent_during_steps(tmp_path: Path, user_write, second_step_fails: bool = False
                         ) -> tuple[list[str], object, list[int]]:
    """A long write of two steps; while the first runs, an urgent write arrives.
    Returns (events, what the urgent call returned or raised, values at the end)."""
    path = make_db(tmp_path)

    async def main() -> tuple[list[str], object, list[int]]:
        db = Database(path)
        await db.open()
        events: list[str] = []
        inside, release = threading.Event(), threading.Event()

        def step1(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT INTO probe VALUES (11)")
            inside.set()
            release.wait(GUARD_S)
            events.append("step 1")
            return 1

        def step2(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT INTO probe VALUES (12)")
            if second_step_fails:
                raise ValueError("bad part")
            events.append("step 2")
            return 2

        try:
            long = asyncio.create_task(db.run_steps([step1, step2]))
            assert await asyncio.to_thread(inside.wait, GUARD_S)
            short = asyncio.create_task(db.run(user_write, urgent=True))
            for _ in range(1000):
                await asyncio.sleep(0)
                if db._joining:
                    break
            assert db._joining, "the urgent write did not join the long write"
            release.set()
            try:
                outcome: object = await asyncio.wait_for(short, GUARD_S)
            except Exception as exc:
                outcome = exc
            try:
                await asyncio.wait_for(long, GUARD_S)
            except ValueError as exc:
                events.append(f"long write failed: {exc}")
            return events, outcome, await db.read(values)
        finally:
            release.set()
            await db.close()

    return asyncio.run(main())


def test_a_joined_urgent_write_is_committed_with_the_step_before_it(tmp_path: Path) -> None:
    def write(conn: sqlite3.Connection) -> list[int]:
        conn.execute("INSERT INTO probe VALUES (99)")
        return values(conn)

    events, outcome, end = _urgent_during_steps(tmp_path, write)
    assert outcome == [1, 11, 99]  # inside the long write's transaction, after step 1
    assert events == ["step 1", "step 2"]
    assert end == [1, 11, 12, 99]


def test_a_failing_joined_write_leaves_the_long_write_alone(tmp_path: Path) -> None:
    def write(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO probe VALUES (99)")
        raise ValueError("user's own error")

    events, outcome, end = _urgent_during_steps(tmp_path, write)
    assert events == ["step 1", "step 2"]
    assert isinstance(outcome, ValueError) and "user's own error" in str(outcome)
    assert end == [1, 11, 12]  # its savepoint rolled back, the steps committed


def test_a_joined_write_survives_the_long_write_failing(tmp_path: Path) -> None:
    """The user's audit entry must not be lost because a catch-up part failed: it
    runs again on its own after the rollback."""
    def write(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO probe VALUES (99)")

    events, outcome, end = _urgent_during_steps(tmp_path, write, second_step_fails=True)
    assert outcome is None
    assert "long write failed: bad part" in events
    assert 99 in end and 12 not in end


def test_joined_writes_never_hang_when_sqlite_undoes_the_transaction(tmp_path: Path) -> None:
    """A joined write whose error made SQLite roll the whole transaction back (disk
    full: the savepoint is gone) must not leave the other joined callers waiting
    for ever (review, session 15): each runs again on its own."""
    path = make_db(tmp_path)

    async def main() -> tuple[object, object, list[int]]:
        db = Database(path)
        await db.open()
        inside, release = threading.Event(), threading.Event()

        def step1(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT INTO probe VALUES (11)")
            inside.set()
            release.wait(GUARD_S)
            return 1

        def full(conn: sqlite3.Connection) -> None:
            conn.execute("RELEASE joined")  # what SQLite's own rollback leaves
            raise sqlite3.OperationalError("database or disk is full")

        try:
            long = asyncio.create_task(db.run_steps([step1, lambda c: 2]))
            assert await asyncio.to_thread(inside.wait, GUARD_S)
            good = asyncio.create_task(db.run(
                lambda c: c.execute("INSERT INTO probe VALUES (99)") and "ok", urgent=True))
            bad = asyncio.create_task(db.run(full, urgent=True))
            for _ in range(1000):
                await asyncio.sleep(0)
                if len(db._joining) == 2:
                    break
            release.set()
            with pytest.raises(StorageError):
                await asyncio.wait_for(long, GUARD_S)
            outcomes = []
            for task in (good, bad):
                try:
                    outcomes.append(await asyncio.wait_for(task, GUARD_S))
                except StorageError as exc:
                    outcomes.append(type(exc).__name__)
            return outcomes[0], outcomes[1], await db.read(values)
        finally:
            release.set()
            await db.close()

    good, bad, end = asyncio.run(main())
    assert good == "ok" and bad == "StorageError"
    assert 99 in end
