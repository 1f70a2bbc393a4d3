"""Types shared across the node: the vocabulary every layer speaks.

Small frozen dataclasses and enums only; nothing here does I/O.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

CENTER_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
MEMBERS = "members"  # audience word: every center of the network


class FcnodeError(Exception):
    """An error whose message is fit to show a user as it is (one line)."""


class ValidationError(FcnodeError):
    pass


class AccessDenied(FcnodeError):
    pass


def check_center_id(value: str, what: str = "center id") -> str:
    if not CENTER_ID_RE.match(value or ""):
        raise ValidationError(
            f"invalid {what} {value!r}: use 2-63 lower-case letters, digits or '-', "
            "starting with a letter or digit"
        )
    return value


class Decision(enum.IntEnum):
    """What a requester gets of a record, ordered from nothing to everything."""

    DENY = 0
    NOTIFY_ONLY = 1  # requester learns nothing; the origin is told of the hit
    POINTER = 2  # requester learns the origin holds a record, and whom to call
    FULL = 3


class Tlp(enum.IntEnum):
    CLEAR = 1
    GREEN = 2
    AMBER = 3
    AMBER_STRICT = 4
    RED = 5

    @property
    def label(self) -> str:
        return "AMBER+STRICT" if self is Tlp.AMBER_STRICT else self.name

    @classmethod
    def parse(cls, text: str) -> Tlp:
        key = text.strip().upper().replace("TLP:", "").replace("+", "_")
        try:
            return cls[key]
        except KeyError:
            raise ValidationError(
                f"invalid TLP {text!r}: use CLEAR, GREEN, AMBER, AMBER+STRICT or RED"
            ) from None


class Discoverability(enum.IntEnum):
    OPEN = 1
    POINTER = 2
    RESTRICTED = 3

    @classmethod
    def parse(cls, text: str) -> Discoverability:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValidationError(
                f"invalid discoverability {text!r}: use open, pointer or restricted"
            ) from None


@dataclass(frozen=True)
class Policy:
    """The access policy signed into a record (groups already expanded)."""

    tlp: Tlp
    audience: frozenset[str]
    required_attributes: frozenset[str] = frozenset()
    discoverability: Discoverability = Discoverability.POINTER
    relay: bool = True


@dataclass(frozen=True)
class Requester:
    """Who asks: a center, and (for queries and local reads) one of its users.

    ``user`` None means a center-level decision (replication to a peer node).
    ``attributes`` are those the requester's own center asserts for the user.
    """

    center: str
    user: str | None = None
    attributes: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Dissemination:
    """One row of the dissemination log (28 CFR 23.20(f)): which center (and user)
    received which version of which record, by which channel, on which decision."""
    center: str
    user: str | None
    origin: str
    record_id: str
    version: int
    seq: int
    channel: str
    decision: str
    via: str | None = None  # the peer it left through, when not ``center`` (a hop)
