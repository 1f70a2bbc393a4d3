"""`fcnode restore FILE --home DIR`: install a backup in a node home whose daemon
is stopped, checked first, installed whole or not at all.

Accepts what `fcnode backup` writes (node.backup): the plain SQLite database, or
the `--include-keys` tar (MANIFEST.json with the SHA-256 of every member). The
database is copied into a temporary file in the home (0600), checked there (full
integrity check, an fcnode schema no newer than this code, the audit chain and
its signed head against this center's signing key, the own log's head signed by
that key), migrated, marked "recovering own log" (node.core.recovery) and audited,
fsynced, and only then renamed over node.db. The database it replaces is kept
aside as node.db.replaced-TIME (its write-ahead log folded in first).

A restored node must not fork its own log: the marker makes the daemon take its
own entries back from its peers before it signs anything again.

From a tar, the keys and configuration are installed only where the home has
none (a rebuilt machine); a home's own files are never overwritten (its keys may
be newer than the backup's, after a rotation).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from node.config import keys
from node.config.home import Home, HomeError, load_config, lock_if_stopped
from node.core.signing import AUDIT_DOMAIN, BadSignature, open_record, sign
from node.core.timeutil import now_ms
from node.core.types import FcnodeError, ValidationError
from node.services.backup import BUNDLE_FORMAT, CONFIG_FILES, KEY_FILES, _reserve
from node.storage import audit as audit_tx
from node.storage import log as log_tx
from node.storage import recovery as recovery_tx
from node.storage.db import StorageError, immediate, open_reader, open_sync
from node.storage.schema import MIGRATIONS

SQLITE_MAGIC = b"SQLite format 3\x00"
MAX_MANIFEST = 1 << 20
BUNDLE_MEMBERS = {"MANIFEST.json", "node.db", *CONFIG_FILES, *KEY_FILES}


class RestoreRefused(FcnodeError):
    pass


@dataclass(frozen=True)
class RestoreResult:
    file: Path
    format: str
    sha256: str
    own_head_seq: int
    records: int
    replaced: Path | None
    installed: tuple[str, ...]  # files of a bundle put in the home (besides node.db)

    def as_dict(self) -> dict[str, Any]:
        return {"file": str(self.file), "format": self.format, "sha256": self.sha256,
                "own_head": {"seq": self.own_head_seq}, "records": self.records,
                "replaced": str(self.replaced) if self.replaced else None,
                "installed": list(self.installed), "recovering": True}


def _sha256(fh: IO[bytes]) -> str:
    h = hashlib.sha256()
    while chunk := fh.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def _kind(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise RestoreRefused(f"cannot read {path}: {exc.strerror}") from None
    if head == SQLITE_MAGIC:
        return "sqlite"
    if tarfile.is_tarfile(path):
        return "tar"
    raise RestoreRefused(f"{path} is not an fcnode backup (neither an SQLite database nor "
                         "a backup bundle written by fcnode backup --include-keys)")


def _bundle(path: Path) -> tuple[dict[str, Any], dict[str, bytes], tarfile.TarFile]:
    """The manifest, the small members (config, keys) checked against it, and the
    open tar (node.db is streamed from it)."""
    try:
        tar = tarfile.open(path)  # noqa: SIM115 - returned to the caller
    except tarfile.TarError as exc:
        raise RestoreRefused(f"{path} is not a readable backup bundle ({exc})") from None
    members = {m.name: m for m in tar.getmembers()}
    unknown = set(members) - BUNDLE_MEMBERS
    if unknown or "MANIFEST.json" not in members or "node.db" not in members:
        tar.close()
        raise RestoreRefused(f"{path} is not an fcnode backup bundle (members: "
                             f"{', '.join(sorted(members)) or 'none'})")
    if any(not m.isfile() for m in members.values()):
        tar.close()
        raise RestoreRefused(f"{path}: a bundle member is not a regular file")
    try:
        if members["MANIFEST.json"].size > MAX_MANIFEST:
            raise ValueError("too large")
        manifest = json.load(tar.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
        if manifest.get("format") != BUNDLE_FORMAT or not isinstance(manifest.get("files"),
                                                                         dict):
            raise ValueError(f"format {manifest.get('format')!r}")
    except (ValueError, KeyError, AttributeError) as exc:
        tar.close()
        raise RestoreRefused(f"{path}: MANIFEST.json is not an fcnode manifest ({exc})") from None
    small: dict[str, bytes] = {}
    for name, member in members.items():
        if name == "MANIFEST.json":
            continue
        want = manifest["files"].get(name)
        fh = tar.extractfile(member)
        if fh is None or want is None:
            tar.close()
            raise RestoreRefused(f"{path}: member {name} is not in the manifest")
        if name == "node.db":
            got = _sha256(fh)
        else:
            data = fh.read(MAX_MANIFEST + 1)
            if len(data) > MAX_MANIFEST:
                tar.close()
                raise RestoreRefused(f"{path}: member {name} is too large")
            got, small[name] = hashlib.sha256(data).hexdigest(), data
        if got != want:
            tar.close()
            raise RestoreRefused(f"{path}: member {name} does not match its SHA-256 in the "
                                 "manifest (damaged or altered)")
    return manifest, small, tar


def _signing_public(home: Home, small: dict[str, bytes]) -> Ed25519PublicKey:
    if home.signing_key.exists():
        return keys.load_signing_key(home.signing_key).public_key()
    if "signing.key" not in small:
        raise RestoreRefused(f"{home.root} has no signing key and the backup carries none")
    tmp = _reserve(home.root, "signing.key", ".check")
    try:
        tmp.write_bytes(small["signing.key"])
        return keys.load_signing_key(tmp).public_key()
    finally:
        tmp.unlink()


def check_database(path: Path, center: str, public: Ed25519PublicKey) -> tuple[int, int]:
    """Refuse anything but an intact fcnode database of this center: (own head
    seq, records)."""
    from node.services.service import verify_audit  # the one audit verification

    with contextlib.closing(open_reader(path)) as conn:
        try:
            problems = recovery_tx.integrity_problems(conn)
            if problems:
                raise RestoreRefused(f"the database in the backup is corrupt: "
                                     f"{'; '.join(problems[:3])}")
            missing = recovery_tx.REQUIRED_TABLES - recovery_tx.tables(conn)
            if missing:
                raise RestoreRefused(f"the backup is not an fcnode database (no "
                                     f"{', '.join(sorted(missing))} table)")
            version = recovery_tx.schema_version(conn)
            if version > len(MIGRATIONS):
                raise RestoreRefused(f"the backup's schema version {version} is newer than "
                                     f"this fcnode knows ({len(MIGRATIONS)}): upgrade first")
            audit = verify_audit(conn, public)
            if not audit["ok"]:
                raise RestoreRefused("the backup's audit log does not verify with this "
                                     f"center's key: {'; '.join(audit['problems'][:2])}")
            head = log_tx.head(conn, center)[0]
            if head:
                top = log_tx.entry(conn, center, head)
                if top is not None and top.payload is not None:
                    try:
                        envelope = top.envelope()
                        assert envelope is not None
                        open_record(envelope, {envelope.key_id: public})
                    except BadSignature:
                        raise RestoreRefused(
                            f"the backup's own log head (seq {head}) is not signed by "
                            f"{center}'s key: a backup of another center?") from None
            records = recovery_tx.record_count(conn)
        except sqlite3.Error as exc:
            raise RestoreRefused(f"the backup's database is corrupt or unreadable ({exc})"
                                 ) from None
    return head, records


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def restore(home: Home, source: Path, actor: str) -> RestoreResult:
    source = source.expanduser().absolute()
    if not source.is_file():
        raise ValidationError(f"backup file {source} does not exist")
    if not home.root.is_dir():
        raise ValidationError(f"node home {home.root} does not exist (create it, or "
                              "restore a bundle into an empty directory)")
    kind = _kind(source)
    with lock_if_stopped(home) as stopped:
        if not stopped:
            raise RestoreRefused(f"the daemon is running on {home.root}: stop it first "
                                 "(e.g. systemctl stop fcnode), then restore")
        try:
            return _restore_locked(home, source, kind, actor)
        except (RestoreRefused, StorageError) as exc:
            raise RestoreRefused(f"{exc}; nothing was changed in {home.root}") from None


def _restore_locked(home: Home, source: Path, kind: str, actor: str) -> RestoreResult:
    with open(source, "rb") as fh:
        digest = _sha256(fh)
    small: dict[str, bytes] = {}
    manifest: dict[str, Any] = {}
    temps: list[Path] = []
    try:
        db_tmp = _reserve(home.root, "node.db", ".restore")
        temps.append(db_tmp)
        if kind == "tar":
            manifest, small, tar = _bundle(source)
            with tar, open(db_tmp, "wb") as out:
                shutil.copyfileobj(tar.extractfile("node.db"), out)  # type: ignore[misc]
        else:
            shutil.copyfile(source, db_tmp)
        installed = [n for n in (*CONFIG_FILES, *KEY_FILES)
                     if n in small and not (home.root / n).exists()]
        if "node.toml" in installed:
            center = str(manifest.get("center", ""))
        else:
            center = load_config(home).center
            if manifest and manifest.get("center") != center:
                raise RestoreRefused(f"the bundle is a backup of {manifest.get('center')!r}, "
                                     f"this home is {center!r}")
        public = _signing_public(home, small)
        head, records = check_database(db_tmp, center, public)
        # Migrate, mark and audit the copy before it is installed: the file that
        # takes node.db's name is complete.
        signing = None
        if home.signing_key.exists():
            signing = keys.load_signing_key(home.signing_key)
        else:
            key_tmp = _reserve(home.root, "signing.key", ".check")
            temps.append(key_tmp)
            key_tmp.write_bytes(small["signing.key"])
            signing = keys.load_signing_key(key_tmp)
        now = now_ms()
        reason = f"restored from {source.name} (own log head seq {head})"
        try:
            conn = open_sync(db_tmp)
        except StorageError as exc:
            raise RestoreRefused(f"the backup cannot be opened: {exc}") from None
        try:
            with immediate(conn):
                recovery_tx.finish(conn)  # a stale marker in the copy: this one counts
                # A copy taken while held: restoring is the administrator's word that
                # this database is older than the log (the restore marker decides).
                recovery_tx.release(conn)
                recovery_tx.begin(conn, reason, now)
                audit_tx.append(conn, lambda m: sign(signing, AUDIT_DOMAIN, m), now, actor,
                                "node.restore", {"file": str(source), "sha256": digest,
                                                 "format": kind, "own_head_seq": head})
            recovery_tx.self_contained(conn)
        finally:
            conn.close()
        _fsync(db_tmp)
        # Files the home lacks (a rebuilt machine): installed before the database.
        for name in installed:
            path = home.root / name
            tmp = _reserve(home.root, name, ".restore")
            temps.append(tmp)
            tmp.write_bytes(small[name])
            _fsync(tmp)
            os.replace(tmp, path)
            temps.remove(tmp)
        replaced = _put_aside(home)
        os.replace(db_tmp, home.database)
        temps.remove(db_tmp)
        _fsync(home.root)
    finally:
        for path in temps:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            for suffix in ("-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{path}{suffix}").unlink()
    return RestoreResult(source, kind, digest, head, records, replaced, tuple(installed))


def _put_aside(home: Home) -> Path | None:
    """Keep the database being replaced as node.db.replaced-TIME (with its WAL
    folded in), never deleted: the admin decides when it goes."""
    db = home.database
    if not db.exists():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = db.with_name(f"{db.name}.replaced-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = db.with_name(f"{db.name}.replaced-{stamp}-{n}")
    with contextlib.suppress(StorageError):  # a corrupt one is kept as it is
        recovery_tx.checkpoint_file(db)
    os.link(db, aside)  # node.db keeps its name until the new one replaces it
    for suffix in ("-wal", "-shm"):
        side = Path(f"{db}{suffix}")
        if side.exists():
            os.replace(side, Path(f"{aside}{suffix}"))
    return aside


__all__ = ["HomeError", "RestoreRefused", "RestoreResult", "check_database", "restore"]
