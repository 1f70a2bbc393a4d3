"""peers.toml: the centers this node has pinned (hand-editable, validated).

    [[peer]]
    center = "nysic"
    name = "New York State Intelligence Center"
    address = "127.0.0.1:7702"
    card = "fcnode1/nysic/..."    # the identity card as received: keys and cert
    groups = ["region:east"]
    connect = true                # false: pin keys only, never dial (reached via hubs)
    distrusted = [{ key = "...", after = 41 }]
                                  # optional, set by `peers update --distrust-after`:
                                  # each replaced (possibly stolen) signing key signs
                                  # nothing of this center after its seq (oldest first;
                                  # files of earlier releases say `distrust_after = 41`
                                  # and `distrusted_key = "..."`, still read)
    introducer = false            # true: adopt the cards this peer has pinned
    introduced_by = ""            # set on cards adopted from an introducer
    via = []                      # the introducers before it, nearest the card's pinner first
    conflict = ""                 # another key was offered for this center: not trusted

The card holds the pinned Ed25519 key, TLS certificate and (signed) seal key; every other field is
derived from it or set by the administrator.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from node.config.home import HomeError, check_group, toml_str
from node.config.identity import IdentityCard, b64d, b64e, parse_card
from node.core.keyhistory import Distrust
from node.core.types import ValidationError, check_center_id

MAX_DISTRUSTS = 64  # re-pins of one center's key; more is a hand edit gone wrong


@dataclass(frozen=True)
class Peer:
    card: IdentityCard
    groups: tuple[str, ...] = ()
    connect: bool = True
    # `peers update --distrust-after SEQ`, every time (oldest first): the signing key
    # pinned before (raw) and what was learned from it sign nothing after SEQ.
    distrusts: tuple[Distrust, ...] = ()
    introducer: bool = False
    introduced_by: str = ""  # "" : pinned directly by an administrator
    via: tuple[str, ...] = ()
    conflict: str = ""

    @property
    def distrust_after(self) -> int | None:
        """The latest distrust's seq (certificates announced before it do not count)."""
        return self.distrusts[-1].after if self.distrusts else None

    @property
    def trusted(self) -> bool:
        """Its keys verify signatures here. A direct pin always does (an
        administrator decided); an introduced card in conflict with another
        introduced key does not, until an administrator decides."""
        return not (self.introduced_by and self.conflict)

    @property
    def vouched_seal_key(self) -> bytes:
        """The card's seal key if it may be believed: signed by the center's key (the
        card's SEAL_SIG), or unsigned on a card an administrator pinned directly
        (the out-of-band root, as for the signing key: cards of older releases).
        Never an unsigned one an introducer handed on (it could be the
        introducer's own key, paired with the center's real signing key)."""
        card = self.card
        return card.seal_key if card.seal_signature or not self.introduced_by else b""

    @property
    def seal_key(self) -> bytes:
        """The card's seal key as far as this node believes it (b"": none). What is
        sealed to the center is NodeService.seal_key_for: a SEAL_KEY_ROTATION in
        the center's log outranks the card (node.core.keyhistory.seal_key_in_use)."""
        return self.vouched_seal_key if self.trusted else b""

    @property
    def seal_key_state(self) -> str:
        """For `peers list/show`: whether anything can be sealed to this center."""
        if not self.card.seal_key:
            return "none"
        if self.card.seal_signature:
            return "signed"
        return "unsigned, not believed" if self.introduced_by else "unsigned, pinned by hand"

    @property
    def center(self) -> str:
        return self.card.center

    @property
    def address(self) -> str:
        return self.card.address


def pin_conflict(card: IdentityCard, pinned: Iterable[Peer], own_key: bytes = b"") -> str | None:
    """Why ``card`` cannot be pinned beside ``pinned`` (None: it can).

    A key names one center: the same signing key under two center ids would let
    whoever holds it sign as either (the node maps a key id to one center), and
    the same certificate under two ids would let one TLS peer speak for both.
    ``own_key``: this node's raw public signing key, never anyone else's."""
    if own_key and card.signing_key == own_key:
        return "the card carries this node's own signing key"
    for other in pinned:
        if other.center == card.center:
            continue  # re-pinning a center replaces its card
        if other.card.signing_key == card.signing_key:
            return f"its signing key is already pinned for {other.center!r}"
        if other.card.tls_fingerprint == card.tls_fingerprint:
            return f"its TLS certificate is already pinned for {other.center!r}"
    return None


def parse_peers(text: str, where: str, own_center: str, own_key: bytes = b""
                ) -> dict[str, Peer]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HomeError(f"{where}: not valid TOML ({exc})") from None
    out: dict[str, Peer] = {}
    for i, entry in enumerate(data.get("peer") or [], start=1):
        label = f"{where}: peer #{i}"
        try:
            card = parse_card(str(entry["card"]))
            if "center" in entry and entry["center"] != card.center:
                raise ValidationError(f"center {entry['center']!r} does not match its card "
                                      f"({card.center!r})")
            groups = tuple(check_group(str(g)) for g in entry.get("groups") or [])
            connect = entry.get("connect", True)
            introducer = entry.get("introducer", False)
            if not isinstance(connect, bool) or not isinstance(introducer, bool):
                raise ValidationError("connect and introducer must be true or false")
            introduced_by = str(entry.get("introduced_by") or "")
            if introduced_by:
                check_center_id(introduced_by, "introduced_by")
            via = tuple(check_center_id(str(c), "via") for c in entry.get("via") or [])
            disputed = str(entry.get("conflict") or "")
            if introducer and not connect:
                raise ValidationError("an introducer must be dialled (connect = true)")
            distrusts = _distrusts(entry)
        except KeyError as exc:
            raise HomeError(f"{label}: missing {exc.args[0]!r}") from None
        except ValidationError as exc:
            raise HomeError(f"{label}: {exc}") from None
        if card.center == own_center:
            raise HomeError(f"{label}: {card.center!r} is this node itself")
        if card.center in out:
            raise HomeError(f"{label}: {card.center!r} is listed twice")
        conflict = pin_conflict(card, out.values(), own_key)
        if conflict:
            raise HomeError(f"{label} ({card.center!r}): {conflict}")
        out[card.center] = Peer(card, groups, connect, distrusts,
                                introducer, introduced_by, via, disputed)
    return out


def _distrusts(entry: dict[str, object]) -> tuple[Distrust, ...]:
    """``distrusted = [{ key, after }, ...]``, or the one distrust of earlier releases."""
    raw = entry.get("distrusted")
    if raw is None and entry.get("distrust_after") is not None:
        raw = [{"key": entry.get("distrusted_key"), "after": entry["distrust_after"]}]
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_DISTRUSTS:
        raise ValidationError(f"distrusted must be a list of at most {MAX_DISTRUSTS} "
                              "{ key, after } tables")
    out = []
    for d in raw:
        after = d.get("after") if isinstance(d, dict) else None
        if not isinstance(after, int) or isinstance(after, bool) or after < 0:
            raise ValidationError("distrusted: after must be a log position (0 or more)")
        key = b64d(str(d.get("key") or ""), "distrusted key")
        if len(key) != 32:
            raise ValidationError("distrusted: key must be the replaced Ed25519 key "
                                  "(32 bytes, base64url)")
        if out and after < out[-1].after:
            raise ValidationError("distrusted: each after must be at or above the one "
                                  "before it (oldest first)")
        out.append(Distrust(key, after))
    return tuple(out)


def load_peers(path: Path, own_center: str, own_key: bytes = b"") -> dict[str, Peer]:
    if not path.exists():
        return {}
    return parse_peers(path.read_text(), str(path), own_center, own_key)


def render_peers(peers: Iterable[Peer]) -> str:
    lines = ["# Pinned peers. Managed by `fcnode peers`; hand edits are validated on reload."]
    for p in sorted(peers, key=lambda p: p.center):
        lines += [
            "", "[[peer]]",
            f"center = {toml_str(p.center)}",
            f"name = {toml_str(p.card.name)}",
            f"address = {toml_str(p.address)}",
            f"groups = [{', '.join(toml_str(g) for g in p.groups)}]",
            f"connect = {'true' if p.connect else 'false'}",
        ]
        if p.distrusts:
            lines.append("distrusted = [" + ", ".join(
                f"{{ key = {toml_str(b64e(d.key))}, after = {d.after} }}"
                for d in p.distrusts) + "]")
        if p.introducer:
            lines.append("introducer = true")
        if p.introduced_by:
            lines += [f"introduced_by = {toml_str(p.introduced_by)}",
                      f"via = [{', '.join(toml_str(c) for c in p.via)}]"]
        if p.conflict:
            lines.append(f"conflict = {toml_str(p.conflict)}")
        lines.append(f"card = {toml_str(p.card.line())}")
    return "\n".join(lines) + "\n"


def save_peers(path: Path, peers: Iterable[Peer]) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half."""
    tmp = path.with_suffix(".toml.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # 0600 whatever the daemon's umask or a leftover temp file
    with os.fdopen(fd, "w") as fh:
        fh.write(render_peers(peers))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def all_groups(own_groups: dict[str, tuple[str, ...]],
               peers: Iterable[Peer]) -> dict[str, tuple[str, ...]]:
    """Groups from node.toml plus those assigned to peers with --groups."""
    merged: dict[str, set[str]] = {g: set(m) for g, m in own_groups.items()}
    for p in peers:
        for g in p.groups:
            merged.setdefault(g, set()).add(p.center)
    return {g: tuple(sorted(m)) for g, m in sorted(merged.items())}
