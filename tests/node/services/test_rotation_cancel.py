"""A key rotation whose caller is cancelled (a CLI call timing out while the
writer is busy with a catch-up) still installs its key: the database thread
commits the announcement whatever happens to the caller, and before, the new
key file was deleted on the cancel, so peers sealed to (or verified with) a key
this node no longer held (review, session 17)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path

from node.config import keys
from node.config.home import Home, load_config
from node.config.init import init_node
from node.config.peers import load_peers
from node.core.signing import raw_public
from node.core.users import User
from node.services.service import NodeService
from node.storage import keys as keys_tx
from node.storage.db import Database

ADMIN = User("admin", frozenset(), True)


async def _rotate_cancelled(root: Path, which: str) -> tuple[NodeService, Home]:
    init_node(root, "ncric", "NCRIC", "127.0.0.1:1")
    home = Home(root)
    config = load_config(home)
    signing = keys.load_signing_key(home.signing_key)
    db = Database(home.database)
    await db.open()
    node = NodeService(home, config, signing, db,
                       load_peers(home.peers, config.center, raw_public(signing.public_key())))
    await node.load_key_history()
    busy = asyncio.ensure_future(db.run(lambda c: time.sleep(0.5)))  # the writer is busy
    rotation = asyncio.ensure_future(
        node.rotate_seal(ADMIN) if which == "seal" else node.rotate_signing(ADMIN))
    await asyncio.sleep(0.1)
    rotation.cancel()  # the caller gives up while the entry waits for the writer
    await busy
    for _ in range(100):
        await asyncio.sleep(0.05)
        if not any(p.name.endswith(".next") for p in root.iterdir()):
            break
    await db.close()
    return node, home


def test_a_cancelled_seal_key_rotation_still_installs_its_key(tmp_path: Path) -> None:
    node, home = asyncio.run(_rotate_cancelled(tmp_path / "n", "seal"))
    own = node._seals[node.center]
    assert own, "the announcement committed"
    assert keys.encryption_key(home.encryption_key).public_key().public_bytes_raw() == \
        own[max(own)].new


def test_a_cancelled_signing_key_rotation_still_installs_its_key(tmp_path: Path) -> None:
    node, home = asyncio.run(_rotate_cancelled(tmp_path / "n", "signing"))
    with contextlib.closing(sqlite3.connect(home.database)) as conn:
        rotations = keys_tx.rotations(conn)
    assert rotations, "the rotation committed"
    held = raw_public(keys.load_signing_key(home.signing_key).public_key())
    assert held == rotations[-1].new == node.own_public_key
