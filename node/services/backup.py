"""`fcnode backup FILE`: a consistent copy of the node's database, written
whole or not at all.

The copy is made with SQLite's `VACUUM INTO` on a read-only connection (a
snapshot at one instant, safe while the daemon writes), into a temporary file
in the target's own directory (so the final rename is atomic and never crosses
a filesystem), created 0600 before anything is written to it, checked with the
full `PRAGMA integrity_check`, fsynced, then renamed over the target.

Formats (the first bytes tell them apart):
- plain: the SQLite database itself (`node.db` of the home). No keys.
- `--include-keys`: an uncompressed tar holding MANIFEST.json, node.db,
  node.toml, peers.toml, signing.key, tls.key, tls.crt and encryption.key (the
  seal key: without it a rebuilt node cannot open what peers seal to it; a home
  made before seal keys existed has none yet) (members 0600).
  Anyone holding it can act as this center: store it like the keys themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.config.home import Home
from node.core.types import ValidationError
from node.storage.backup import CopyFacts, erase_pending_in_copy, inspect_copy, vacuum_into

BUNDLE_FORMAT = "fcnode-backup/1"
KEY_FILES = ("signing.key", "tls.key", "tls.crt", "encryption.key")
REQUIRED_KEY_FILES = ("signing.key", "tls.key", "tls.crt")
CONFIG_FILES = ("node.toml", "peers.toml")


@dataclass(frozen=True)
class BackupResult:
    path: Path
    format: str          # "sqlite" | "tar"
    sha256: str          # of the file written
    size: int
    facts: CopyFacts

    def as_dict(self) -> dict[str, Any]:
        return {"file": str(self.path), "format": self.format, "sha256": self.sha256,
                "size": self.size, "keys": self.format == "tar",
                "own_head": {"seq": self.facts.head_seq, "hash": self.facts.head_hash.hex()},
                "records": self.facts.records, "schema_version": self.facts.schema_version}

    def audit_detail(self) -> dict[str, Any]:
        return {"file": str(self.path), "sha256": self.sha256, "size": self.size,
                "keys": self.format == "tar", "own_head_seq": self.facts.head_seq}


def check_target(home: Home, target: Path, force: bool) -> Path:
    if not target.is_absolute():
        raise ValidationError(f"backup path {target} must be absolute")
    parent = target.parent
    if not parent.is_dir():
        raise ValidationError(f"backup directory {parent} does not exist")
    if target.is_dir():
        raise ValidationError(f"{target} is a directory; name the backup file")
    own = {home.database, Path(f"{home.database}-wal"), Path(f"{home.database}-shm"),
           home.signing_key, home.encryption_key, home.tls_key, home.tls_cert, home.config,
           home.peers, home.lock}
    if target.resolve() in {p.resolve() for p in own}:
        raise ValidationError(f"{target} is one of the node's own files; choose another name")
    if target.exists() and not force:
        raise ValidationError(f"{target} exists; choose a new name or pass --force to "
                              "replace it")
    return target


def _reserve(parent: Path, name: str, suffix: str) -> Path:
    """An empty file, 0600 from its creation, with a name nobody else uses."""
    path = parent / f".{name}.{secrets.token_hex(4)}{suffix}"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return path


def _digest_and_sync(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb+") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
        os.fsync(fh.fileno())
    return h.hexdigest(), size


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _bundle(out: Path, db_copy: Path, home: Home, center: str, facts: CopyFacts) -> None:
    files = [(name, home.root / name) for name in (*CONFIG_FILES, *KEY_FILES)
             if (home.root / name).exists() or name in REQUIRED_KEY_FILES]
    manifest = {"format": BUNDLE_FORMAT, "center": center,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "own_head": {"seq": facts.head_seq, "hash": facts.head_hash.hex()},
                "files": {"node.db": _sha256_file(db_copy),
                          **{name: _sha256_file(path) for name, path in files}}}

    def info(name: str, size: int) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime = size, 0o600, int(time.time())
        return ti

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        data = json.dumps(manifest, indent=2, sort_keys=True).encode()
        tar.addfile(info("MANIFEST.json", len(data)), io.BytesIO(data))
        for name, path in [("node.db", db_copy), *files]:
            with open(path, "rb") as fh:
                tar.addfile(info(name, path.stat().st_size), fh)


def make_backup(home: Home, center: str, target: Path, include_keys: bool,
                force: bool) -> BackupResult:
    """Blocking (run it off the event loop). Nothing is left behind on failure."""
    target = check_target(home, target, force)
    temps: list[Path] = []
    try:
        db_copy = _reserve(target.parent, target.name, ".db.tmp")
        temps.append(db_copy)
        vacuum_into(home.database, db_copy)
        erase_pending_in_copy(db_copy)
        facts = inspect_copy(db_copy, center)
        out = db_copy
        if include_keys:
            out = _reserve(target.parent, target.name, ".tar.tmp")
            temps.append(out)
            _bundle(out, db_copy, home, center, facts)
        sha, size = _digest_and_sync(out)
        if target.exists() and not force:  # appeared while we copied
            raise ValidationError(f"{target} exists; choose a new name or pass --force")
        os.replace(out, target)
        temps.remove(out)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)
    finally:
        for path in temps:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return BackupResult(target, "tar" if include_keys else "sqlite", sha, size, facts)
