"""node.entities: the same entity typed differently must yield the same match key."""

from __future__ import annotations

import datetime as dt
import string

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from node.core.entities import MAX_VALUE, match_keys, normalize_dob, parse_pair
from node.core.types import ValidationError

PROPS = settings(max_examples=150, deadline=None)


def first(kind: str, value: str) -> str:
    return match_keys(kind, value)[0]


@pytest.mark.parametrize("kind,variants,key", [
    ("phone", ["(555) 123-4567", "555.123.4567", "+1 555 123 4567", "555-123-4567",
               "1-555-123-4567", "5551234567", "+1 (555) 123-4567 x 12",
               "555-123-4567 ext. 9", "+1 555.123.4567"], "phone:5551234567"),
    ("phone", ["+44 20 7946 0958", "+442079460958", "+44 (20) 7946-0958"],
     "phone:+442079460958"),
    ("person", ["Doe, John;01/02/1980", "john doe dob 1980-01-02", "JOHN DOE DOB: 1980/01/02",
                "John Doe born 2 January 1980", "Doe, John; Jan 2 1980", "Jóhn Doe;19800102",
                "Doe, John A.;1980-01-02", "john doe dob 01/02/1980"],
     "person:doe john|1980-01-02"),
    ("person", ["Doe, John", "john doe", "  JOHN   DOE "], "person:doe john"),
    ("plate", ["CA:7abc-123", "7ABC123", "7abc 123", "NV:7ABC123"], "plate:7ABC123"),
    ("email", ["John.Doe@Example.com", " john.doe+tips@example.com ", "JOHN.DOE@EXAMPLE.COM"],
     "email:john.doe@example.com"),
    ("address", ["123 Main Street, Apt 4", "123 MAIN ST. #4", "123 main st apartment 4"],
     "address:123 main st apt 4"),
    ("address", ["500 North Ocean Boulevard", "500 N. Ocean Blvd"], "address:500 n ocean blvd"),
    ("address", ["12 North Main Street #4", "12 N Main St Apt 4"], "address:12 n main st apt 4"),
    ("organization", ["Acme Widgets, Inc.", "ACME WIDGETS LLC", "acme widgets"],
     "organization:acme widgets"),
    ("organization", ["Smith & Sons Co.", "smith and sons"], "organization:smith and sons"),
    ("vehicle", ["1hgcm82633a004352", "1HGCM8-2633A-004352"], "vehicle:1HGCM82633A004352"),
    ("weapon", ["sn: ab-1234", "SN AB1234"], "weapon:SNAB1234"),
])
def test_variants_share_first_key(kind, variants, key):
    assert {first(kind, v) for v in variants} == {key}


def test_person_with_dob_has_two_keys_most_specific_first():
    assert match_keys("person", "Doe, John;1980-01-02") == [
        "person:doe john|1980-01-02", "person:doe john"]


def test_type_is_case_insensitive():
    assert match_keys(" Phone ", "555 123 4567") == ["phone:5551234567"]


def test_phone_extension_case_does_not_change_key():
    """An extension is dropped whatever its case ('x', 'X', 'ext', 'EXT')."""
    base = first("phone", "555-123-4567")
    for typed in ("555-123-4567 x12", "555-123-4567 X12", "555-123-4567 ext 12",
                  "555-123-4567 EXT 12", "555-123-4567 Ext. 12"):
        assert first("phone", typed) == base, typed


@pytest.mark.parametrize("typed", ["John Dobson", "Dobbs, John", "Dobrev, Ana;1975-03-04",
                                   "Anna Dobbins dob 1975-03-04"])
def test_surnames_starting_with_dob_are_names_not_dates(typed):
    """'dob' is a keyword only as a whole word: 'Dobson' is a surname."""
    keys = match_keys("person", typed)
    assert keys[-1].startswith("person:")
    assert any(w.startswith("dob") for w in keys[-1].removeprefix("person:").split())


@pytest.mark.parametrize("kind,value,needle", [
    ("phone", "12345", "not a valid phone"),
    ("phone", "call me", "not a valid phone"),
    ("phone", "+1234567890123456789", "not a valid phone"),
    ("email", "not-an-email", "not a valid email"),
    ("email", "john@localhost", "not a valid email"),
    ("email", "john doe@example.com", "not a valid email"),
    ("plate", "A", "not a valid plate"),
    ("plate", "CA:", "not a valid plate"),
    ("plate", "ABCDEFGHIJKL", "not a valid plate"),
    ("person", "J", "has no name"),
    ("person", "Doe, John;1980-13-45", "not understood"),
    ("person", "John Doe dob 01/02/1850", "out of range"),
    ("person", "John Doe dob 2999-01-01", "out of range"),
    ("address", "!!!", "not a valid address"),
    ("organization", "Inc.", "not a valid organization"),
    ("vehicle", "ab", "not a valid vehicle"),
    ("weapon", "--", "not a valid weapon"),
    ("spaceship", "x", "unknown entity type 'spaceship'"),
    ("phone", "   ", "empty value"),
    ("email", "a" * (MAX_VALUE + 1), "longer than"),
])
def test_bad_values_raise_validation_error_naming_problem(kind, value, needle):
    with pytest.raises(ValidationError, match=needle) as exc:
        match_keys(kind, value)
    assert "\n" not in str(exc.value)


def test_parse_pair():
    assert parse_pair("Phone = 555 123 4567") == ("phone", "555 123 4567")
    assert parse_pair("plate=CA:7ABC=1") == ("plate", "CA:7ABC=1")
    with pytest.raises(ValidationError, match="TYPE=VALUE"):
        parse_pair("phone 555")


def test_normalize_dob_formats():
    for typed in ("1980-01-02", "19800102", "01/02/1980", "01-02-1980", "2 Jan 1980",
                  "Jan 2, 1980", "2 January 1980", "January 2 1980", "1980/01/02"):
        assert normalize_dob(typed) == "1980-01-02", typed


# ---------------------------------------------------------------------- properties

@PROPS
@given(st.text(alphabet=string.digits, min_size=10, max_size=10), st.integers(0, 6))
def test_prop_us_phone_formats_agree(d, style):
    a, b, c = d[:3], d[3:6], d[6:]
    typed = [f"({a}) {b}-{c}", f"{a}.{b}.{c}", f"+1 {a} {b} {c}", f"{a}-{b}-{c}",
             f"1 {a} {b} {c}", f"{a}{b}{c}", f"+1-{a}-{b}-{c}"][style]
    assert first("phone", typed) == f"phone:{d}"


@PROPS
@given(st.text(alphabet=string.ascii_uppercase + string.digits, min_size=2, max_size=8),
       st.sampled_from(["", "CA:", "ny:", "TX:"]), st.sampled_from(["", "-", " "]),
       st.booleans())
def test_prop_plate_state_case_and_separators_ignored(plate, state, sep, lower):
    mid = len(plate) // 2
    typed = state + plate[:mid] + sep + plate[mid:]
    if lower:
        typed = typed.lower()
    assert first("plate", typed) == first("plate", plate) == f"plate:{plate}"


names = st.text(alphabet=string.ascii_lowercase, min_size=2, max_size=10).filter(
    # 'dob…' and 'born' are covered by test_surnames_starting_with_dob_are_names_not_dates
    lambda n: not n.startswith("dob") and n != "born")


@PROPS
@given(names, names, st.dates(dt.date(1900, 1, 1), dt.date(2010, 12, 31)), st.integers(0, 4))
def test_prop_person_with_dob_formats_agree(given_name, surname, dob, style):
    assume(given_name != surname)
    f, s = given_name.capitalize(), surname.capitalize()
    typed = [
        f"{s}, {f};{dob:%m/%d/%Y}",
        f"{given_name} {surname} dob {dob.isoformat()}",
        f"{f.upper()} {s.upper()} DOB: {dob:%Y/%m/%d}",
        f"{f} {s} born {dob.day} {dob:%B %Y}",
        f"{s},{f} ; {dob:%Y%m%d}",
    ][style]
    expected = f"person:{' '.join(sorted([given_name, surname]))}|{dob.isoformat()}"
    assert first("person", typed) == expected


@PROPS
@given(st.text(string.ascii_lowercase + string.digits + ".", min_size=1, max_size=10),
       st.text(string.ascii_lowercase, min_size=2, max_size=8),
       st.sampled_from(["com", "org", "gov"]),
       st.text(string.ascii_lowercase + string.digits, max_size=6), st.booleans())
def test_prop_email_case_and_plus_tag_ignored(local, host, tld, tag, upper):
    domain = f"{host}.{tld}"
    typed = f"{local}+{tag}@{domain}" if tag else f"{local}@{domain}"
    if upper:
        typed = typed.upper()
    assert first("email", typed) == f"email:{local}@{domain}"


@PROPS
@given(st.sampled_from(["person", "plate", "vehicle", "phone", "email", "address",
                        "organization", "weapon"]), st.text(max_size=80))
def test_prop_match_keys_only_raises_validation_error(kind, value):
    try:
        keys = match_keys(kind, value)
    except ValidationError as exc:
        assert str(exc)
        return
    assert keys
    assert all(k.startswith(f"{kind}:") for k in keys)
