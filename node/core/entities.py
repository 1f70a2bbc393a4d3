"""Typed entities and their normalized match keys (pure).

Deconfliction works only if "(555) 123-4567" and "+1 555 123 4567" are the same
phone. Each entity gets one or more match keys "type:normalized"; the entity
index stores the keys and queries compare keys, never raw text.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from datetime import date, datetime

from node.core.types import ValidationError

TYPES = ("person", "plate", "vehicle", "phone", "email", "address", "organization", "weapon")
MAX_VALUE = 512

_ADDRESS_WORDS = {
    "street": "st", "avenue": "ave", "av": "ave", "road": "rd", "boulevard": "blvd",
    "drive": "dr", "lane": "ln", "court": "ct", "place": "pl", "highway": "hwy",
    "parkway": "pkwy", "terrace": "ter", "circle": "cir", "square": "sq",
    "apartment": "apt", "suite": "ste", "unit": "unit", "number": "no",
    "north": "n", "south": "s", "east": "e", "west": "w",
    "northeast": "ne", "northwest": "nw", "southeast": "se", "southwest": "sw",
}
_ORG_SUFFIXES = {"inc", "llc", "ltd", "corp", "co", "corporation", "incorporated", "company"}
_DOB_FORMATS = ("%Y-%m-%d", "%Y%m%d", "%m/%d/%Y", "%m-%d-%Y", "%d %b %Y", "%b %d %Y",
                "%d %B %Y", "%B %d %Y", "%Y/%m/%d")


def _fold(text: str) -> str:
    """Lower-case, strip accents, keep letters/digits/spaces."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def _alnum_upper(text: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", _fold(text).upper())


def normalize_dob(text: str) -> str:
    with contextlib.suppress(ValueError):  # the common, ISO case first
        parsed = date.fromisoformat(text.strip())
        if not date(1900, 1, 1) <= parsed <= date.today():
            raise ValidationError(f"date of birth {text!r} is out of range")
        return parsed.isoformat()
    cleaned = re.sub(r"[,.]", " ", text.strip())
    cleaned = " ".join(cleaned.split())
    for fmt in _DOB_FORMATS:
        try:
            parsed = datetime.strptime(cleaned, fmt).date()
        except ValueError:
            continue
        if not date(1900, 1, 1) <= parsed <= date.today():
            raise ValidationError(f"date of birth {text!r} is out of range")
        return parsed.isoformat()
    raise ValidationError(f"date of birth {text!r} not understood: use YYYY-MM-DD")


def _person(value: str) -> list[str]:
    """'Doe, John A.;1980-01-02', 'John Doe dob 01/02/1980' or 'John Doe'."""
    name, dob = value, ""
    m = re.search(r"(?:;|\bdob\b[:=]?\s*|\bborn\s+)(.+)$", value, re.IGNORECASE)
    if m:
        name, dob = value[: m.start()], m.group(1)
    if "," in name:
        last, _, first = name.partition(",")
        name = f"{first} {last}"
    tokens = sorted(t for t in _fold(name).split() if len(t) > 1)
    if not tokens:
        raise ValidationError(f"person {value!r} has no name")
    base = " ".join(tokens)
    keys = [f"person:{base}"]
    if dob.strip():
        keys.insert(0, f"person:{base}|{normalize_dob(dob)}")
    return keys


def _phone(value: str) -> list[str]:
    digits = re.sub(r"\D", "", re.split(r"(?i)x|ext", value)[0])
    if value.strip().startswith("+") and not digits.startswith("1"):
        return [f"phone:+{digits}"] if 7 <= len(digits) <= 15 else _bad("phone", value)
    if len(digits) == 11 and digits.startswith("1"):
        digits = digits[1:]
    if len(digits) != 10 and not 7 <= len(digits) <= 15:
        return _bad("phone", value)
    return [f"phone:{digits}"]


def _email(value: str) -> list[str]:
    addr = value.strip().lower()
    local, at, domain = addr.partition("@")
    if not at or not local or "." not in domain or " " in addr:
        return _bad("email", value)
    return [f"email:{local.split('+')[0]}@{domain}"]


def _plate(value: str) -> list[str]:
    # "CA:7ABC123" or "7abc-123": the state is optional, so the key is the plate
    # alone (typed with or without state, it must still match).
    plate = value.split(":", 1)[1] if ":" in value else value
    key = _alnum_upper(plate)
    return [f"plate:{key}"] if 2 <= len(key) <= 10 else _bad("plate", value)


def _address(value: str) -> list[str]:
    words = [_ADDRESS_WORDS.get(w, w) for w in _fold(value.replace("#", " apt ")).split()]
    return [f"address:{' '.join(words)}"] if words else _bad("address", value)


def _organization(value: str) -> list[str]:
    words = [w for w in _fold(value.replace("&", " and ")).split() if w not in _ORG_SUFFIXES]
    return [f"organization:{' '.join(words)}"] if words else _bad("organization", value)


def _serial(kind: str) -> object:
    def norm(value: str) -> list[str]:
        key = _alnum_upper(value)
        return [f"{kind}:{key}"] if len(key) >= 3 else _bad(kind, value)

    return norm


def _bad(kind: str, value: str) -> list[str]:
    raise ValidationError(f"{kind} {value!r} is not a valid {kind}")


_NORMALIZERS = {
    "person": _person, "phone": _phone, "email": _email, "plate": _plate,
    "address": _address, "organization": _organization,
    "vehicle": _serial("vehicle"), "weapon": _serial("weapon"),
}


def match_keys(kind: str, value: str) -> list[str]:
    """Normalized keys for an entity; the first is the most specific."""
    kind = kind.strip().lower()
    if kind not in _NORMALIZERS:
        raise ValidationError(f"unknown entity type {kind!r}: use one of {', '.join(TYPES)}")
    if not value.strip():
        raise ValidationError(f"{kind} entity has an empty value")
    if len(value) > MAX_VALUE:
        raise ValidationError(f"{kind} entity value is longer than {MAX_VALUE} characters")
    return _NORMALIZERS[kind](value)  # type: ignore[operator]


def parse_pair(text: str) -> tuple[str, str]:
    """'phone=555 123 4567' -> ('phone', '555 123 4567')."""
    kind, eq, value = text.partition("=")
    if not eq:
        raise ValidationError(f"entity {text!r} must be TYPE=VALUE, e.g. phone=555-123-4567")
    return kind.strip().lower(), value.strip()
