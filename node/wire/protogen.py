"""Regenerate the committed protobuf/gRPC modules from proto/.

    python -m node.wire.protogen           # rewrite node/wire/*_pb2*.py
    python -m node.wire.protogen --check   # exit 1 when they drift from proto/

protoc names imports after the .proto paths (``from fcnode.v1 import ...``);
we rewrite them to ``node.wire`` so that no top-level ``fcnode``/``proto``
package is needed (proto-plus owns the ``proto`` import name).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
OUT_DIR = Path(__file__).resolve().parent
_IMPORT = re.compile(r"^from fcnode\.v1 import (\w+) as", re.MULTILINE)


def _generate(dest: Path) -> dict[str, str]:
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    sources = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={dest}", f"--grpc_python_out={dest}"]
    if protoc.main([*args, *sources]) != 0:
        raise SystemExit("protoc failed")
    out: dict[str, str] = {}
    for path in sorted((dest / "fcnode" / "v1").glob("*.py")):
        out[path.name] = _IMPORT.sub(r"from node.wire import \1 as", path.read_text())
    return out


def generated() -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        return _generate(Path(tmp))


def committed() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(OUT_DIR.glob("*_pb2*.py"))}


def main(argv: list[str]) -> int:
    fresh = generated()
    if "--check" in argv:
        if fresh != committed():
            print("node/wire is out of date: run python -m node.wire.protogen", file=sys.stderr)
            return 1
        return 0
    for stale in OUT_DIR.glob("*_pb2*.py"):
        stale.unlink()
    for name, text in fresh.items():
        (OUT_DIR / name).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
