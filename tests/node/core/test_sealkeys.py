"""Seal-key rotation (pure core, ingest and storage): which seal key wins given a
card and a center's SEAL_KEY_ROTATION announcements, which announcements are
refused, and that verified ones are stored once and read back."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from federation.ingest import check_items, store_batch
from node.core.keyhistory import (
    KeyHistory,
    SealAnnouncement,
    SealKeyInUse,
    announcement,
    check_seal,
    seal_key_in_use,
)
from node.core.sealing import open_copy, seal_copy
from node.core.signing import entry_hash, key_id, raw_public, seal_record
from node.storage import keys as keys_tx
from node.storage.db import open_sync
from node.wire import federation_pb2, records_pb2

S0, S1, S2, S3 = (X25519PrivateKey.generate() for _ in range(4))
P0, P1, P2, P3 = (k.public_key().public_bytes_raw() for k in (S0, S1, S2, S3))
LOW_ORDER = bytes(32)  # the X25519 identity point: no agreement gives a secret
SIGNER = Ed25519PrivateKey.generate()
THIEF = Ed25519PrivateKey.generate()


def ann(seq: int, old: bytes, new: bytes) -> SealAnnouncement:
    return SealAnnouncement("o", seq, old, new)


def test_without_announcements_the_card_s_key_is_used() -> None:
    assert seal_key_in_use(P0, []) == SealKeyInUse(P0, "card")
    assert seal_key_in_use(b"", []) == SealKeyInUse(b"", "card")


def test_the_newest_announcement_wins_in_any_order() -> None:
    anns = [ann(9, P1, P2), ann(4, P0, P1)]
    assert seal_key_in_use(P0, anns) == SealKeyInUse(P2, "log seq 9", 9)
    assert seal_key_in_use(P0, list(reversed(anns))) == SealKeyInUse(P2, "log seq 9", 9)
    # A card without a (believed) seal key: the center's signed log entry is enough.
    assert seal_key_in_use(b"", anns).key == P2


def test_a_card_offering_a_key_an_announcement_replaced_never_overrides_it() -> None:
    anns = [ann(4, P0, P1), ann(9, P1, P2)]
    # The original key (an old card replayed by an introducer or a hop) and an
    # intermediate one (a card printed between the two rotations): no rollback.
    assert seal_key_in_use(P0, anns).key == P2
    assert seal_key_in_use(P1, anns).key == P2
    # Even if the log this node holds lacks the first announcement: the second
    # one names P1 as the key it replaced.
    assert seal_key_in_use(P1, [ann(9, P1, P2)]).key == P2


def test_a_card_newer_than_this_nodes_copy_of_the_log_wins() -> None:
    # The administrator pinned the center's current card before the entry that
    # announced its key arrived here: nothing has replaced that key yet.
    assert seal_key_in_use(P3, [ann(4, P0, P1)]) == SealKeyInUse(P3, "card")
    # ... and once the announcement arrives, the log names the same key.
    assert seal_key_in_use(P3, [ann(4, P0, P1), ann(7, P1, P3)]).key == P3


def test_only_announcements_after_a_distrust_count() -> None:
    # After `peers update --distrust-after 5` the re-pinned card is the root; an
    # announcement at or before seq 5 (perhaps a thief's) does not override it.
    anns = [ann(5, P0, P1)]
    assert seal_key_in_use(P2, anns, after_seq=5) == SealKeyInUse(P2, "card")
    assert seal_key_in_use(P2, [*anns, ann(8, P2, P3)], after_seq=5).key == P3


def body(seq: int, new: bytes, old: bytes = b"") -> records_pb2.RecordBody:
    b = announcement("o", seq, b"", f"s{seq}", 1, "admin", "")
    b.kind = records_pb2.SEAL_KEY_ROTATION
    b.new_seal_key = new
    b.old_seal_key = old
    return b


def test_check_seal_refuses_unusable_keys() -> None:
    assert check_seal(body(3, P1, P0)) == ann(3, P0, P1)
    assert check_seal(body(3, P1)) == ann(3, b"", P1)
    assert "not a usable X25519 key" in str(check_seal(body(3, LOW_ORDER, P0)))
    assert "not a usable X25519 key" in str(check_seal(body(3, P1[:31], P0)))
    assert "not a usable X25519 key" in str(check_seal(body(3, b"", P0)))
    assert "must be 32 bytes" in str(check_seal(body(3, P1, b"x")))
    assert "is the old one" in str(check_seal(body(3, P1, P1)))


def items(*bodies: records_pb2.RecordBody, key: Ed25519PrivateKey = SIGNER
          ) -> list[federation_pb2.LogItem]:
    out, prev = [], b""
    for b in bodies:
        b.prev = prev
        env = seal_record(key, b)
        prev = entry_hash(env.payload)
        out.append(federation_pb2.LogItem(origin="o", seq=b.seq, hash=prev, envelope=env))
    return out


def history(origin: str) -> KeyHistory | None:
    return KeyHistory.pinned(raw_public(SIGNER.public_key())) if origin == "o" else None


def test_ingest_takes_an_announcement_only_with_the_origin_s_signature() -> None:
    good, low, forged = check_items(
        items(body(1, P1, P0), body(2, LOW_ORDER, P1)) + items(body(3, P2, P1), key=THIEF),
        history)
    assert good.error == "" and good.seal == ann(1, P0, P1)
    assert "not a usable X25519 key" in low.error and low.seal is None
    assert forged.error and forged.seal is None  # a hop cannot speak for the origin


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    with contextlib.closing(open_sync(tmp_path / "n.db", create=True)) as c:
        yield c


def test_verified_announcements_are_stored_once_and_read_back(conn: sqlite3.Connection
                                                              ) -> None:
    checked = check_items(items(body(1, P1, P0), body(2, P2, P1)), history)
    conn.execute("BEGIN IMMEDIATE")
    result = store_batch(conn, "peer", checked, 1, "me")
    conn.execute("COMMIT")
    assert result.seals == [ann(1, P0, P1), ann(2, P1, P2)]
    conn.execute("BEGIN IMMEDIATE")
    again = store_batch(conn, "peer", checked, 1, "me")  # a hop replays them
    keys_tx.add_seal(conn, ann(2, P1, P3), 2)  # another key at a held position: ignored
    conn.execute("COMMIT")
    assert again.stored == 0
    assert keys_tx.seals(conn) == [ann(1, P0, P1), ann(2, P1, P2)]


def test_a_copy_sealed_before_a_rotation_opens_with_the_retired_key() -> None:
    env = seal_record(SIGNER, body(1, P1, P0)).SerializeToString()
    old = seal_copy(SIGNER, P0, "o", 1, b"h" * 32, env)
    new = seal_copy(SIGNER, P1, "o", 1, b"h" * 32, env)
    keyring = [S1, S0]  # current first, then the retired one
    assert open_copy(old, keyring, "o", 1, b"h" * 32) == env
    assert open_copy(new, keyring, "o", 1, b"h" * 32) == env
    assert open_copy(old, [S1], "o", 1, b"h" * 32) is None  # retired with --retire


def test_announcements_in_entries_a_distrusted_key_signed_go_with_them(
        conn: sqlite3.Connection) -> None:
    # `peers update --distrust-after 1`: the entry at 2 (a thief's, with the stolen
    # key) leaves the log for review, and the seal key it announced with it.
    checked = check_items(items(body(1, P1, P0), body(2, P2, P1)), history)
    conn.execute("BEGIN IMMEDIATE")
    store_batch(conn, "peer", checked, 1, "me")
    moved = keys_tx.distrust_held(conn, "o", 1, {key_id(SIGNER.public_key())}, 3)
    conn.execute("COMMIT")
    assert moved == 1
    assert keys_tx.seals(conn) == [ann(1, P0, P1)]


def test_certificates_announced_in_entries_a_distrusted_key_signed_go_with_them(
        conn: sqlite3.Connection) -> None:
    # A thief holding the stolen key announces its own TLS certificate at seq 2; after
    # `peers update --distrust-after 1` that certificate must not stay pinned beside
    # the card (it would let the thief's TLS identity connect as the center).
    checked = check_items(items(body(1, P1, P0), body(2, P2, P1)), history)
    conn.execute("BEGIN IMMEDIATE")
    store_batch(conn, "peer", checked, 1, "me")
    keys_tx.add_cert(conn, "o", "f1", b"der1", 10**13, 1, 1)
    keys_tx.add_cert(conn, "o", "thief", b"der2", 10**13, 2, 1)
    keys_tx.distrust_held(conn, "o", 1, {key_id(SIGNER.public_key())}, 3)
    conn.execute("COMMIT")
    assert [(o, f, seq) for o, f, _, _, seq, _ in keys_tx.certs(conn)] == [("o", "f1", 1)]


def test_with_the_oldest_announcements_let_go_the_log_wins_over_any_card() -> None:
    # Memory holds only the newest announcements: a card key not among them may be
    # one they replaced, so it never wins (a newer card waits for its entry).
    held = [ann(300, P1, P2)]
    assert seal_key_in_use(P0, held).source == "card"  # all held: P0 is newer
    assert seal_key_in_use(P0, held, complete=False) == SealKeyInUse(P2, "log seq 300", 300)
