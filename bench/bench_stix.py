"""STIX 2.1 conversion cost (issue 13): how long export.bundle and imports.plan
take for N records of eight entities each, in process (no daemon). The figures
say why the daemon builds bundles on a worker thread, off its database
connection and event loop. Prints; asserts nothing.

    .venv/bin/python bench/bench_stix.py [--records 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from node.core import record
from node.core.stix import export, imports

ENTITIES = ["person=Doe, John;1980-01-02", "phone=(555) 123-4567", "plate=CA:7ABC-123",
            "email=john@example.com", "address=12 North Main Street", "organization=Acme Inc",
            "vehicle=1HGCM82633A004352", "weapon=SN12345"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1000)
    n = ap.parse_args().records
    print(f"load average {os.getloadavg()[0]:.2f}; {n} records x {len(ENTITIES)} entities")
    draft = record.parse_draft({"kind": "SAR", "title": "t", "narrative": "n" * 500,
                                "entities": ENTITIES, "policy": {"tlp": "AMBER"},
                                "part23": {"justification": "j"}})
    bodies = [record.build_body(draft, origin="ncric", seq=i + 1, prev=b"",
                                record_id=f"{i:032x}", version=1,
                                created_ms=1_790_000_000_000 + i, audience=frozenset(),
                                author="a", contact="c") for i in range(n)]
    t = time.perf_counter()
    bundle = export.bundle(bodies, {"ncric": "NCRIC"})
    t_export = time.perf_counter() - t
    size = len(json.dumps(bundle))
    t = time.perf_counter()
    plan = imports.plan(bundle)
    t_plan = time.perf_counter() - t
    t = time.perf_counter()
    for conv in plan.records:
        record.parse_draft(conv.draft)
    t_parse = time.perf_counter() - t
    print(f"export.bundle   {t_export:6.2f} s  {n / t_export:8.0f} records/s  "
          f"({len(bundle['objects'])} objects, {size / 2**20:.1f} MiB)")
    print(f"imports.plan    {t_plan:6.2f} s  {n / t_plan:8.0f} records/s")
    print(f"parse_draft     {t_parse:6.2f} s  {n / t_parse:8.0f} records/s")


if __name__ == "__main__":
    main()
