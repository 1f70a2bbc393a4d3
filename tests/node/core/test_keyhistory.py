"""node.keyhistory: which key may sign which log position (pure, no I/O), and
check_items applying a rotation to the rest of a batch."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.ingest import WRONG_KEY, check_items
from node.core.keyhistory import (
    Distrust,
    KeyHistory,
    Rotation,
    build_history,
    check_rotation,
    rotation_statement,
)
from node.core.signing import entry_hash, key_id, raw_public, seal_record
from node.wire import federation_pb2, records_pb2

K1, K2, K3, K4 = (Ed25519PrivateKey.generate() for _ in range(4))
R1, R2, R3, R4 = (raw_public(k.public_key()) for k in (K1, K2, K3, K4))


def test_a_pinned_key_signs_every_position() -> None:
    h = KeyHistory.pinned(R1)
    assert h.signs(key_id(R1), 1) == "" and h.signs(key_id(R1), 10**9) == ""
    assert "unknown" in h.signs(key_id(R2), 1)


def test_rotation_retires_the_old_key_after_its_seq_and_keeps_it_before() -> None:
    h = KeyHistory.pinned(R1).rotate(5, R2)
    assert h.signs(key_id(R1), 5) == ""          # the rotation entry itself
    assert "retired after seq 5" in h.signs(key_id(R1), 6)
    assert h.signs(key_id(R2), 6) == ""
    assert "valid only from seq 6" in h.signs(key_id(R2), 5)
    # A later key may sign stubs of earlier positions (missing stubs are signed at
    # start with the current key); a retired one never signs beyond its end.
    assert h.stub_signs(key_id(R2), 3) == ""
    assert h.stub_signs(key_id(R1), 6) != ""
    assert set(h.public_keys()) == {key_id(R1), key_id(R2)}


def test_a_key_is_never_reused_and_a_rotation_cannot_go_back() -> None:
    h = KeyHistory.pinned(R1).rotate(5, R2)
    with pytest.raises(ValueError):
        h.rotate(8, R1)
    with pytest.raises(ValueError):
        h.rotate(3, R3)


def test_build_history_follows_only_rotations_from_the_pinned_key() -> None:
    rots = [Rotation("o", 9, R2, R3), Rotation("o", 4, R1, R2)]
    h = build_history(R1, rots)
    assert [(s.key, s.from_seq, s.until_seq) for s in h.spans] == [
        (R1, 1, 4), (R2, 5, 9), (R3, 10, None)]
    # The administrator pinned another key by hand: learned rotations from a key
    # not pinned are ignored (peers.toml wins).
    assert build_history(R4, rots).spans == KeyHistory.pinned(R4).spans


def test_distrust_after_ends_every_old_key_and_what_was_learned_from_it() -> None:
    # The thief (holding R2) rotated to R3 at 20; the admin re-pins R4, distrusting
    # everything R2 signed after 12.
    rots = [Rotation("o", 4, R1, R2), Rotation("o", 20, R2, R3)]
    h = build_history(R4, rots, distrusts=(Distrust(R1, 12),))
    assert [(s.key, s.from_seq, s.until_seq) for s in h.spans] == [
        (R1, 1, 4), (R2, 5, 12), (R4, 13, None)]
    assert "retired after seq 12" in h.signs(key_id(R2), 13)
    assert "unknown" in h.signs(key_id(R3), 21)
    assert h.signs(key_id(R4), 13) == ""


def test_a_second_distrust_keeps_the_first() -> None:
    # R1 stolen: the admin re-pinned R2, distrusting after 10; later R2 was stolen
    # too: re-pinned R3, distrusting after 30. What R1 signed up to 10 must still
    # verify (the first distrust is not forgotten), R1 never signs after 10, R2
    # only 11..30, R3 from 31.
    rots = [Rotation("o", 20, R2, R4)]  # learned from R2 before its theft was known
    h = build_history(R3, rots, distrusts=(Distrust(R1, 10), Distrust(R2, 30)))
    assert [(s.key, s.from_seq, s.until_seq) for s in h.spans] == [
        (R1, 1, 10), (R2, 11, 20), (R4, 21, 30), (R3, 31, None)]
    assert h.signs(key_id(R1), 10) == "" and "retired" in h.signs(key_id(R1), 11)
    assert "retired after seq 30" in h.signs(key_id(R4), 31)
    # A later distrust at an earlier seq cuts the keys pinned since.
    h = build_history(R3, (), distrusts=(Distrust(R1, 10), Distrust(R2, 5)))
    assert [(s.key, s.from_seq, s.until_seq) for s in h.spans] == [(R1, 1, 5), (R3, 6, None)]


def test_re_pinning_the_key_a_rotation_already_made_current_keeps_its_span() -> None:
    # The center rotated R1 -> R2 at 10 (learned here); the admin later pins its
    # current card (R2) and peers update distrusts the old key after the head held
    # (40): what R2 signed from 11 on must still verify (review, session 15).
    h = build_history(R2, [Rotation("o", 10, R1, R2)], distrusts=(Distrust(R1, 40),))
    assert [(s.key, s.from_seq, s.until_seq) for s in h.spans] == [(R1, 1, 10), (R2, 11, None)]
    assert h.signs(key_id(R2), 11) == "" and "retired" in h.signs(key_id(R1), 11)


def _rotation_body(seq: int, old: Ed25519PrivateKey, new: Ed25519PrivateKey,
                   statement_seq: int | None = None) -> records_pb2.RecordBody:
    new_raw = raw_public(new.public_key())
    return records_pb2.RecordBody(
        origin="o", seq=seq, record_id=f"k{seq}", version=1, kind=records_pb2.KEY_ROTATION,
        new_key=new_raw, new_key_signature=new.sign(rotation_statement(
            "o", statement_seq or seq, raw_public(old.public_key()), new_raw)))


def test_check_rotation_needs_the_new_keys_signature_over_this_position() -> None:
    assert check_rotation(_rotation_body(5, K1, K2), R1) == ""
    assert "does not verify" in check_rotation(_rotation_body(5, K1, K2, statement_seq=6), R1)
    body = _rotation_body(5, K1, K2)
    assert "does not verify" in check_rotation(body, R3)  # binds the key it replaces
    body.new_key_signature = b"\0" * 64
    assert "does not verify" in check_rotation(body, R1)


def _items(bodies_keys: list[tuple[records_pb2.RecordBody, Ed25519PrivateKey]]
           ) -> list[federation_pb2.LogItem]:
    out, prev = [], b""
    for body, key in bodies_keys:
        body.prev = prev
        env = seal_record(key, body)
        prev = entry_hash(env.payload)
        out.append(federation_pb2.LogItem(origin="o", seq=body.seq, hash=prev, envelope=env))
    return out


def _plain(seq: int) -> records_pb2.RecordBody:
    return records_pb2.RecordBody(origin="o", seq=seq, record_id=f"r{seq}", version=1,
                                  kind=records_pb2.BULLETIN, title="t")


def test_check_items_applies_a_rotation_to_the_rest_of_the_batch() -> None:
    items = _items([(_plain(1), K1), (_rotation_body(2, K1, K2), K1), (_plain(3), K2),
                    (_plain(4), K1)])
    out = check_items(items, lambda o: KeyHistory.pinned(R1) if o == "o" else None)
    assert [c.error for c in out[:3]] == ["", "", ""]
    assert out[1].rotation == Rotation("o", 2, R1, R2)
    assert out[3].error.startswith(WRONG_KEY)  # the old key after the rotation


def test_check_items_refuses_a_rotation_the_new_key_did_not_sign() -> None:
    body = _rotation_body(1, K1, K2)
    body.new_key = R3  # announces R3 with R2's signature
    [checked] = check_items(_items([(body, K1)]), lambda o: KeyHistory.pinned(R1))
    assert "does not verify" in checked.error and checked.rotation is None


def _card(center: str, key: bytes):  # type: ignore[no-untyped-def]
    import hashlib

    from node.config.identity import IdentityCard
    der = TEST_DER
    return IdentityCard(center, "127.0.0.1:7000", key, hashlib.sha256(der).hexdigest(),
                        center.upper(), der)


def _der() -> bytes:
    import tempfile
    from pathlib import Path

    from node.config import keys
    with tempfile.TemporaryDirectory() as d:
        pem = keys.generate_tls(Path(d) / "k", Path(d) / "c", "orig", days=1)
    return keys.cert_der(pem)


TEST_DER = _der()


def test_updated_peer_distrusts_the_replaced_key_and_peers_toml_keeps_it() -> None:
    from node.config.identity import b64e
    from node.config.peer_edits import updated_peer
    from node.config.peers import Peer, parse_peers, render_peers
    from node.core.types import ValidationError

    old = Peer(_card("orig", R1), ("region:west",), False)
    new = updated_peer(old, _card("orig", R2), 7, held_head=40)
    assert (new.distrust_after, new.distrusts, new.groups, new.connect) == (
        7, (Distrust(R1, 7),), ("region:west",), False)
    assert updated_peer(old, _card("orig", R2), None, held_head=40).distrust_after == 40
    with pytest.raises(ValidationError):
        updated_peer(old, _card("orig", R1), 7, held_head=40)  # no new key: nothing to distrust
    with pytest.raises(ValidationError):
        updated_peer(old, _card("other", R2), 7, held_head=40)
    parsed = parse_peers(render_peers([new]), "peers.toml", "me")["orig"]
    assert parsed == new
    # R2 stolen in turn: the second update keeps the first distrust (R1 after 7).
    newer = updated_peer(new, _card("orig", R3), 30, held_head=50)
    assert newer.distrusts == (Distrust(R1, 7), Distrust(R2, 30))
    assert parse_peers(render_peers([newer]), "peers.toml", "me")["orig"] == newer
    # A peers.toml written before this release (one distrust) still reads.
    legacy = render_peers([old]).replace(
        "card = ", f'distrust_after = 7\ndistrusted_key = "{b64e(R1)}"\ncard = ')
    assert parse_peers(legacy, "peers.toml", "me")["orig"].distrusts == (Distrust(R1, 7),)
    # A later distrust may not cut earlier than the one before it (entries of the key
    # between would stop verifying without being moved out for review).
    with pytest.raises(ValidationError, match="after seq 30"):
        updated_peer(newer, _card("orig", R4), 20, held_head=50)


def test_an_interrupted_tls_switch_is_finished_at_start(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from node.config import keys

    keys.generate_tls(tmp_path / "tls.key", tmp_path / "tls.crt", "orig", days=1)
    keys.generate_tls(tmp_path / "tls.next.key", tmp_path / "tls.next.crt", "orig", days=2)
    assert not keys.finish_tls_switch(tmp_path / "tls.key", tmp_path / "tls.crt")  # pending
    new_crt = (tmp_path / "tls.next.crt").read_bytes()
    (tmp_path / "tls.next.key").replace(tmp_path / "tls.key")  # the crash: key moved only
    assert keys.finish_tls_switch(tmp_path / "tls.key", tmp_path / "tls.crt")
    assert (tmp_path / "tls.crt").read_bytes() == new_crt
    keys.load_tls(tmp_path / "tls.key", tmp_path / "tls.crt")


def test_an_interrupted_seal_key_rotation_is_finished_or_dropped(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from node.config import keys

    path = tmp_path / "encryption.key"
    old = keys.encryption_key(path).public_key().public_bytes_raw()
    new = X25519PrivateKey.generate()
    new_raw = new.public_key().public_bytes_raw()
    keys.write_private(keys.next_seal_path(path), keys.x25519_pem(new))
    # The entry never committed (the log's newest announcement is another key, or
    # none): the pending key is dropped, the current one stays.
    assert not keys.finish_seal_swap(path, (3, old))
    assert not keys.next_seal_path(path).exists()
    assert keys.encryption_key(path).public_key().public_bytes_raw() == old
    # It committed at seq 7, the crash came before the swap: finished, the old key
    # kept (0600) to open what was sealed to it, current first in the keyring.
    keys.write_private(keys.next_seal_path(path), keys.x25519_pem(new))
    assert keys.finish_seal_swap(path, (7, new_raw))
    retired = tmp_path / "encryption.key.retired-7"
    assert [k.public_key().public_bytes_raw() for k in keys.seal_keys(path)] == [new_raw, old]
    assert retired.stat().st_mode & 0o077 == 0
    assert not keys.finish_seal_swap(path, (7, new_raw))  # nothing pending: nothing moves
