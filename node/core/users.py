"""User credentials: tokens are random, only their SHA-256 is stored, and the
comparison is constant-time. A token reads ``NAME:SECRET``."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from node.core.types import ValidationError

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
SYSTEM_USER = "fcnode"  # the node's own actions (retention sweep); never a person


@dataclass(frozen=True)
class User:
    name: str
    attributes: frozenset[str]
    admin: bool


def check_user_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise ValidationError(f"invalid user name {name!r}: lower-case letters, digits, . _ -")
    return name


def new_token(name: str) -> tuple[str, bytes]:
    secret = secrets.token_urlsafe(32)
    return f"{name}:{secret}", hash_secret(secret)


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def split_token(token: str) -> tuple[str, str]:
    name, sep, secret = token.strip().partition(":")
    if not sep or not _NAME_RE.match(name) or not secret:
        raise ValidationError("malformed credential")
    return name, secret


def token_matches(secret: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
