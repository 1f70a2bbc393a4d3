"""The committed generated code must match proto/ (regenerate with
`python -m node.wire.protogen`)."""

from node.wire import protogen


def test_generated_code_matches_proto() -> None:
    fresh = protogen.generated()
    committed = protogen.committed()
    assert set(fresh) == set(committed), "generated file set differs from node/wire"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"out of date: {stale}; run python -m node.wire.protogen"


def test_drift_is_detected(tmp_path, monkeypatch) -> None:
    """The check itself can fail: a changed .proto no longer matches."""
    proto = tmp_path / "fcnode" / "v1"
    proto.mkdir(parents=True)
    for src in protogen.PROTO_DIR.rglob("*.proto"):
        (proto / src.name).write_text(src.read_text())
    records = proto / "records.proto"
    records.write_text(records.read_text().replace("string contact = 16;",
                                                   "string contact = 16;\n  string extra = 99;"))
    monkeypatch.setattr(protogen, "PROTO_DIR", tmp_path)
    assert protogen.generated() != protogen.committed()
