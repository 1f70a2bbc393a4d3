"""Sealed watch hits (node/core/sealing.py, pure): only the watcher opens them, and the
answering center's signature binds watcher, watch, center and hit number, so a hop
can neither alter nor relabel a hit, nor pass off an answer part as a hit."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from node.core.sealing import open_answer, open_hit, seal_answer, seal_hit
from node.core.signing import BadSignature, key_id

SIGNER = Ed25519PrivateKey.generate()
KEYS = {key_id(SIGNER.public_key()): SIGNER.public_key()}
WATCHER = X25519PrivateKey.generate()
SEAL_TO = WATCHER.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
ARGS = ("watcher", "w1", "origin", 7)


def test_a_sealed_hit_opens_only_as_sealed() -> None:
    sealed, sig, kid = seal_hit(SIGNER, SEAL_TO, *ARGS, b"hit bytes")
    assert b"hit bytes" not in sealed
    assert open_hit(sealed, sig, kid, KEYS, [WATCHER], *ARGS) == b"hit bytes"
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(BadSignature):
        open_hit(flipped, sig, kid, KEYS, WATCHER, *ARGS)
    for i, other in enumerate(("other", "w2", "elsewhere", 8)):
        relabelled = list(ARGS)
        relabelled[i] = other
        with pytest.raises(BadSignature):
            open_hit(sealed, sig, kid, KEYS, [WATCHER], *relabelled)  # type: ignore[arg-type]
    with pytest.raises(BadSignature):  # not the answering center's key
        open_hit(sealed, sig, kid, {kid: Ed25519PrivateKey.generate().public_key()},
                 [WATCHER], *ARGS)
    with pytest.raises(BadSignature):  # another center's seal key: it cannot open
        open_hit(sealed, sig, kid, KEYS, [X25519PrivateKey.generate()], *ARGS)


def test_an_answer_part_is_not_a_hit() -> None:
    sealed, sig, kid = seal_answer(SIGNER, SEAL_TO, "watcher", "w1", "origin", 7, b"x")
    with pytest.raises(BadSignature):
        open_hit(sealed, sig, kid, KEYS, [WATCHER], *ARGS)
    sealed, sig, kid = seal_hit(SIGNER, SEAL_TO, *ARGS, b"x")
    with pytest.raises(BadSignature):
        open_answer(sealed, sig, kid, KEYS, [WATCHER], "watcher", "w1", "origin", 7)


def test_a_hub_cannot_tell_a_full_hit_from_a_pointer_by_its_size() -> None:
    # What a hub holds of a hit is its ciphertext: a POINTER (the signed stub,
    # a few hundred bytes) and a FULL hit (the stub and the origin's envelope)
    # must not differ in length, or the hub learns what the README says it never
    # learns (whether the watcher may read the record), and roughly how long it is.
    pointer = b"p" * 300
    full = b"f" * 2500
    lengths = {len(seal_hit(SIGNER, SEAL_TO, *ARGS, p)[0]) for p in (pointer, full, b"")}
    assert len(lengths) == 1, lengths
    for plain in (pointer, full, b"", b"\x00" * 5000):  # padding never leaks into the hit
        sealed, sig, kid = seal_hit(SIGNER, SEAL_TO, *ARGS, plain)
        assert open_hit(sealed, sig, kid, KEYS, [WATCHER], *ARGS) == plain


def test_a_hub_cannot_tell_by_size_whether_a_center_held_anything() -> None:
    # A forwarding hub sees the query (entity keys included) and the sealed parts
    # coming back: unpadded, an empty answer, a pointer and a record differed in
    # length, telling the hub whether that center holds anything on the entity.
    answer = ("aa", "q1", "cc", 0)
    lengths = {len(seal_answer(SIGNER, SEAL_TO, *answer, p, padded=True)[0])
               for p in (b"", b"p" * 300, b"r" * 2500)}
    assert len(lengths) == 1, lengths
    for plain in (b"", b"r" * 2500, b"\x00" * 5000):
        sealed, sig, kid = seal_answer(SIGNER, SEAL_TO, *answer, plain, padded=True)
        assert open_answer(sealed, sig, kid, KEYS, [WATCHER], *answer, padded=True) == plain
        # The flag is not signed, but bound into the seal: flipped, nothing opens.
        with pytest.raises(BadSignature):
            open_answer(sealed, sig, kid, KEYS, [WATCHER], *answer, padded=False)
    # A center of an older release answers unpadded: still read as it was sealed.
    sealed, sig, kid = seal_answer(SIGNER, SEAL_TO, *answer, b"old")
    assert open_answer(sealed, sig, kid, KEYS, [WATCHER], *answer) == b"old"
    with pytest.raises(BadSignature):
        open_answer(sealed, sig, kid, KEYS, [WATCHER], *answer, padded=True)


def test_padded_within_keeps_the_padding_inside_the_limit() -> None:
    from node.core.sealing import PAD, pad, padded_within

    for limit in (PAD, 5000, 65_536, 4 * 1024 * 1024, 4 * 1024 * 1024 + 1, 6_000_000):
        n = padded_within(limit)
        assert len(pad(b"x" * n)) <= max(limit, PAD)
        assert len(pad(b"x" * (n + 1))) > max(limit, PAD) or n + 1 + 4 <= PAD


def test_the_count_of_parts_is_bound_into_seal_and_signature() -> None:
    # A hop relaying an answer back could drop its tail parts: each part says how
    # many the answer has, and no hop can change that count (or drop it, making
    # the part read as one of an older release's uncounted answers) unseen.
    answer = ("aa", "q1", "cc")
    sealed, sig, kid = seal_answer(SIGNER, SEAL_TO, *answer, 1, b"part 1", padded=True,
                                   parts=3)
    assert open_answer(sealed, sig, kid, KEYS, [WATCHER], *answer, 1, padded=True,
                       parts=3) == b"part 1"
    for parts in (0, 2, 4):
        with pytest.raises(BadSignature):
            open_answer(sealed, sig, kid, KEYS, [WATCHER], *answer, 1, padded=True, parts=parts)
    with pytest.raises(BadSignature):  # the last part relabelled as another
        open_answer(sealed, sig, kid, KEYS, [WATCHER], *answer, 2, padded=True, parts=3)
    # An uncounted part (an older release) cannot be passed off as counted either.
    old, sig, kid = seal_answer(SIGNER, SEAL_TO, *answer, 0, b"old")
    assert open_answer(old, sig, kid, KEYS, [WATCHER], *answer, 0) == b"old"
    with pytest.raises(BadSignature):
        open_answer(old, sig, kid, KEYS, [WATCHER], *answer, 0, parts=1)
    with pytest.raises(ValueError):  # a part number beyond the count is never sealed
        seal_answer(SIGNER, SEAL_TO, *answer, 3, b"x", parts=3)
