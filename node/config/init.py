"""`fcnode init`: create a node home, all or nothing."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from node.config import keys
from node.config.home import Home, HomeError, NodeConfig, check_listen, render_config
from node.config.identity import IdentityCard
from node.config.peers import save_peers
from node.core.signing import AUDIT_DOMAIN, raw_public, sign, sign_seal_key
from node.core.timeutil import now_ms
from node.core.types import check_center_id
from node.core.users import new_token
from node.storage import audit as audit_tx
from node.storage import users as users_tx
from node.storage.db import immediate, open_sync

ADMIN_USER = "admin"


@dataclass(frozen=True)
class InitResult:
    center: str
    home: Path
    admin_token: str


def init_node(root: Path, center: str, name: str, listen: str) -> InitResult:
    check_center_id(center)
    check_listen(listen)
    if not name.strip():
        raise HomeError("--name must not be empty")
    home = Home(root)
    if home.config.exists() or home.database.exists() or home.signing_key.exists():
        raise HomeError(f"{root} already holds an fcnode node; refusing to overwrite it")
    created_root = not root.exists()
    if root.exists() and any(root.iterdir()):
        raise HomeError(f"{root} exists and is not empty; choose an empty or new directory")
    old_umask = os.umask(0o077)  # the database and config are for this node's operators only
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        root.chmod(0o700)
        signing = keys.generate_signing_key(home.signing_key)
        keys.generate_tls(home.tls_key, home.tls_cert, center)
        keys.encryption_key(home.encryption_key)
        token, digest = new_token(ADMIN_USER)
        conn = open_sync(home.database, create=True)
        try:
            now = now_ms()
            with immediate(conn):
                users_tx.insert(conn, users_tx.UserRow(ADMIN_USER, digest, (), True, now))
                audit_tx.append(conn, lambda m: sign(signing, AUDIT_DOMAIN, m), now, "fcnode",
                                "node.init",
                                {"center": center, "name": name, "admin": ADMIN_USER})
        finally:
            conn.close()
        save_peers(home.peers, [])
        # node.toml last: its presence marks a complete home.
        tmp = home.config.with_suffix(".tmp")
        tmp.write_text(render_config(NodeConfig(center, name, listen, f"{name} watch desk")))
        tmp.replace(home.config)
    except BaseException:
        # Nothing half-written: remove what we created.
        if created_root:
            shutil.rmtree(root, ignore_errors=True)
        else:
            for child in root.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise
    finally:
        os.umask(old_umask)
    return InitResult(center, root, token)


def own_card(home: Home, center: str, name: str, listen: str) -> IdentityCard:
    signing = keys.load_signing_key(home.signing_key)
    cert_pem = home.tls_cert.read_bytes()
    seal = keys.encryption_key(home.encryption_key).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)
    # Signed with the key in use now: after a signing-key rotation the card carries
    # the new key and the new key's word for the (unchanged) seal key. Ed25519 is
    # deterministic: the same card prints the same line every time.
    return IdentityCard(center, listen, raw_public(signing.public_key()),
                        keys.cert_fingerprint(cert_pem), name, keys.cert_der(cert_pem),
                        seal, sign_seal_key(signing, center, seal))
