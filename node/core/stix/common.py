"""What export and import share: the fcnode extension, TLP marking ids, the
custom observable types and deterministic ids (pure).

Marking ids are the published ones, never ours: a consumer recognises TLP by id.
TLP 2.0 comes from the OASIS TLP 2.0 extension (cti-stix-common-objects); the
TLP 1.0 ids are those the STIX 2.1 specification itself predefines (MISP and
OpenCTI still write them).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from node.core.types import Tlp

# Namespace of every id fcnode derives (UUIDv5): a fixed constant, so the same
# record version always gets the same STIX id on every node and every run.
NAMESPACE = uuid.UUID("5b0f7d64-2f8e-4a0b-9a43-8f3d6f1c2e71")

EXTENSION_ID = "extension-definition--8c6a3f0e-5d0b-4f7a-9b1e-6f2d7c4a9e13"
PROJECT_IDENTITY = "identity--1d6c2a9e-7b34-4c1f-8e55-0a9f3b2d6c48"
FIXED_CREATED = "2026-01-01T00:00:00.000Z"  # the extension's and the centers' identities

TLP2_EXTENSION = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"
TLP2_CREATED = "2022-10-01T00:00:00.000Z"
TLP2_IDS: dict[Tlp, str] = {
    Tlp.CLEAR: "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    Tlp.GREEN: "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    Tlp.AMBER: "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    Tlp.AMBER_STRICT: "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    Tlp.RED: "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}
# STIX 2.1 section 7.2.1.4: TLP 1.0. WHITE is the TLP 2.0 CLEAR.
TLP1_IDS: dict[str, Tlp] = {
    "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9": Tlp.CLEAR,
    "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da": Tlp.GREEN,
    "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82": Tlp.AMBER,
    "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed": Tlp.RED,
}
KNOWN_MARKINGS: dict[str, Tlp] = {**{v: k for k, v in TLP2_IDS.items()}, **TLP1_IDS}
TLP_WORDS = {"white": Tlp.CLEAR, "clear": Tlp.CLEAR, "green": Tlp.GREEN, "amber": Tlp.AMBER,
             "amber+strict": Tlp.AMBER_STRICT, "red": Tlp.RED}

# fcnode entity types without a STIX object of their own: observables defined
# by the fcnode extension. phone-number is the type OpenCTI already uses.
CUSTOM_SCO = {"phone": "phone-number", "plate": "fcnode-plate", "vehicle": "fcnode-vehicle",
              "weapon": "fcnode-weapon"}
SCO_ENTITY = {v: k for k, v in CUSTOM_SCO.items()}

# Limits on what one import may ask of the node (every write someone causes is bounded).
MAX_BUNDLE_BYTES = 8 * 2**20
MAX_OBJECTS = 20_000
MAX_IMPORT_RECORDS = 1_000


def derived_id(stix_type: str, *parts: object) -> str:
    return f"{stix_type}--{uuid.uuid5(NAMESPACE, '/'.join(str(p) for p in parts))}"


def report_id(origin: str, record_id: str, version: int) -> str:
    """One report per record version: same record, same version, same id."""
    return derived_id("report", origin, record_id, version)


def center_identity_id(center: str) -> str:
    return derived_id("identity", "center", center)


def timestamp(ms: int) -> str:
    """STIX timestamps: RFC 3339, UTC, milliseconds (what fcnode keeps)."""
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def tlp_word(tlp: Tlp) -> str:
    return tlp.label.lower()


def record_behaviors(body: Any) -> list[str]:
    """ISE-SAR behaviour codes travel in the fcnode extension (STIX has no such field)."""
    return list(body.behaviors)
