"""Every CLI command that talks to the daemon maps to a typed RPC of
proto/fcnode/v1/local.proto, sends that RPC's request message, and prints the
reply exactly as the service's dict (key order included): the CLI's --json
output is what it was when the API carried JSON documents.

The daemon's side of each shape is exercised by the integration tests (real
daemons); here a stub stands in for the channel and answers each RPC with a
message built from a dict of the shape the service returns."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.cli import client as client_mod
from node.cli import federation_cmds, lifecycle_cmds, main, stix_cmds, watch_cmds
from node.core.localtypes import build, to_dict
from node.wire import local_pb2

SERVICE = local_pb2.DESCRIPTOR.services_by_name["Local"]
VERIFY = {"signer": "ffc", "key_id": "k1", "chain_seq": 3, "chain": "linked", "valid": True}
FULL = {"record_id": "r1", "origin": "ffc", "seq": 3, "version": 2, "kind": "SAR",
        "title": "t", "narrative": "n", "labels": ["a"], "behaviors": ["SURVL"],
        "entities": [{"type": "phone", "value": "555"}], "created": "2026-01-01T00:00:00Z",
        "expires": "2031-01-01T00:00:00Z", "tlp": "AMBER+STRICT", "audience": ["ffc"],
        "require": ["sworn_le"], "discoverability": "pointer", "relay": False,
        "justification": "j", "source_reliability": "B", "content_validity": "2",
        "review_due": "2031-01-01T00:00:00Z", "author": "admin", "editor": "admin",
        "contact": "desk", "access": "FULL", "state": "active", "verification": VERIFY}
POINTER = {"record_id": "r2", "origin": "nysic", "kind": "BOLO", "access": "POINTER",
           "contact": "call"}
OUTCOME = {"status": "answered", "results": 1, "pointers": 0, "ms": 5}
PEER = {"center": "nysic", "name": "NYSIC", "address": "127.0.0.1:1", "groups": ["east"],
        "connect": True, "introducer": True, "introduced_by": "", "conflict": "",
        "tls_fingerprint": "ab" * 32, "state": "connected", "seal_key": "signed"}
PUBLISHED = {"record_id": "r1", "origin": "ffc", "seq": 4, "version": 2, "kind": "SAR"}
WATCH = {"watch_id": "w1", "owner": "admin", "network": False, "created": "2026",
         "expires": "2027", "text": "x", "entity_keys": ["phone:555"], "kinds": [],
         "labels": [], "behaviors": []}

# RPC -> what the service returns (a list for streams and for list replies).
REPLIES: dict[str, Any] = {
    "Status": {"center": "ffc", "name": "F", "uptime_s": 1.5, "storage": "/h/node.db",
               "home": "/h", "records": {"ffc": {"active": 2, "purged": 1}},
               "heads": {"ffc": 3, "nysic": 9},
               "own_log": {"head": 3, "recovering": False, "behind": 0, "reason": "",
                           "blocked": "own log held: ...",
                           "held": {"peer": "nysic", "seq": 4, "own_head": 3,
                                    "entry_hash": "ab", "since": "2026"}},
               "listen": "127.0.0.1:1",
               "peers": [{"center": "nysic", "state": "connected", "last_contact": "2026",
                          "error": "", "received": 4, "behind": {"nysic": 0}},
                         {"center": "x", "state": "stopped", "last_contact": "",
                          "behind": {}}],
               "tls": {"fingerprint": "ab", "expires": "2027",
                       "next": {"fingerprint": "cd", "expires": "2028",
                                "presented_from": "2027"}},
               "key_conflicts": [{"center": "c9", "why": "two introducers disagree"}],
               "quarantined": [{"origin": "bad", "reason": "fork", "since": "2026"}],
               "rejected": {"bad signature": 2}},
    "Publish": [PUBLISHED, {**PUBLISHED, "routing": ["west"], "audience": ["a", "b"]}],
    "Get": FULL,
    "Search": [{k: FULL[k] for k in ("record_id", "origin", "kind", "title", "version",
                                     "seq", "tlp", "created", "access")}, POINTER],
    "Query": [{"record_id": "r1", "origin": "ffc", "kind": "SAR", "title": "t",
               "version": 1, "tlp": "GREEN", "created": "2026", "access": "FULL",
               "contact": "c", "entities": [{"type": "phone", "value": "555"}],
               "from": "ffc"},
              {"record_id": "r2", "origin": "nysic", "kind": "BOLO", "version": 1,
               "access": "POINTER", "contact": "call", "from": "nysic"},
              {"summary": {"ffc": OUTCOME, "nysic": {**OUTCOME, "via": ["ffc"], "tampered": 1,
                                                      "dropped": 1, "reason": "r",
                                                      "truncated": True}},
               "not_answered": ["bfc"], "query_id": "q1"}],
    "AddUser": {"user": "ann", "token": "tok", "attributes": ["sworn_le"], "admin": False},
    "RemoveUser": {"removed": "ann"},
    "ListUsers": [{"user": "ann", "attributes": [], "admin": True, "created": "2026"}],
    "SetUserAttributes": {"user": "ann", "attributes": ["a", "b"]},
    "Audit": [{"seq": 1, "time": "2026", "actor": "admin", "action": "search",
               "detail": {"text": "x", "results": [["ffc", "r1", 1, "FULL"]]}}],
    "AuditVerify": {"entries": 3, "head": 3, "ok": True, "problems": []},
    "AddPeer": PEER,
    "UpdatePeer": {**PEER, "distrust_after": None, "quarantined_for_review": 0},
    "RemovePeer": {"removed": "nysic"},
    "ListPeers": [PEER],
    "ShowPeer": {**PEER, "card": "fcnode1/...", "keys": [
        {"key_id": "k", "key": "AAA", "from_seq": 1, "until_seq": 5, "current": False},
        {"key_id": "k2", "key": "BBB", "from_seq": 6, "until_seq": None, "current": True}],
        "certificates": [{"fingerprint": "ab", "source": "card", "expires": "2027"}],
        "distrust_after": 5,
        "distrusted_entries": [{"seq": 7, "key_id": "k", "via": "hub", "received": "2026"}],
        "seal_key_in_use": "CCC", "seal_key_source": "log seq 9"},
    "PeerGroups": {"east": ["nysic", "ffc"], "members": ["ffc"]},
    "Disseminations": [{"time": "2026", "center": "nysic", "user": "", "origin": "ffc",
                        "record_id": "r1", "version": 1, "seq": 3, "channel": "replication",
                        "decision": "FULL"}],
    "Update": PUBLISHED, "Retract": PUBLISHED, "Purge": PUBLISHED, "Validate": PUBLISHED,
    "Review": [{"record_id": "r1", "kind": "SAR", "title": "t", "version": 1, "tlp": "RED",
                "review_due": "2026", "expires": "2031", "overdue": True}],
    "Notices": [{"time": "2026", "kind": "retraction", "origin": "nysic", "record_id": "r",
                 "reason": "wrong", "version": 2}],
    "Backup": {"file": "/b", "format": "sqlite", "sha256": "ab", "size": 10, "keys": False,
               "own_head": {"seq": 3, "hash": "cd"}, "records": 3, "schema_version": 8},
    "RotateKey": {"rotated": "signing", "seq": 5, "old_key_id": "a" * 16,
                  "new_key_id": "b" * 16},
    "FinishRecovery": {"own_head_seq": 3, "was_recovering": True, "unsigned_dropped": 0,
                       "reason": "restored", "peers_reported_ahead": 0},
    "AdoptOwnLog": {"own_head_seq": 3, "was_recovering": False, "unsigned_dropped": 0,
                    "reason": "adopted by admin",
                    "peers_reported_ahead": 2,
                    "adopted": {"peer": "nysic", "seq": 4, "own_head": 3, "entry_hash": "ab",
                                "since": "2026"}},
    "Export": {"bundle": {"type": "bundle", "id": "bundle--1", "objects": []}, "records": 0},
    "Import": {"bundle": "bundle--1", "dry_run": True, "imported": 0,
               "records": [{"stix_id": "report--1", "kind": "SAR", "tlp": "AMBER",
                            "entities": 1, "folded": 0, "notes": []}],
               "skipped": [{"stix_id": "x--1", "reason": "unknown type"}]},
    "AddWatch": WATCH,
    "ListWatches": [WATCH, {"center": "nysic", "user": "bob", "watch_id": "w2",
                            "registered": "2026", "expires": "2027", "text": "",
                            "entity_keys": ["phone:555"], "kinds": [], "labels": [],
                            "behaviors": []}],
    "RemoveWatch": {"removed": "w1"},
    "WatchHits": [{"hit": 1, "time": "2026", "watch_id": "w1", **POINTER, "from": "ffc"}],
}

# CLI command line -> (the RPC it must call, whether --json prints the reply as is).
COMMANDS: list[tuple[list[str], str, bool]] = [
    (["status"], "Status", True),
    (["publish", "--kind", "SAR", "--title", "t", "--justification", "j",
      "--entity", "phone=555-123-4567"], "Publish", True),
    (["get", "r1"], "Get", True),
    (["search", "x"], "Search", True),
    (["query", "x"], "Query", True),
    (["deconflict", "phone=555"], "Query", False),
    (["users", "add", "ann"], "AddUser", True),
    (["users", "remove", "ann"], "RemoveUser", True),
    (["users", "list"], "ListUsers", True),
    (["users", "set", "ann", "--attr", "a"], "SetUserAttributes", True),
    (["audit"], "Audit", True),
    (["audit", "verify"], "AuditVerify", True),
    (["peers", "add", "fcnode1/card"], "AddPeer", True),
    (["peers", "update", "fcnode1/card", "--distrust-after", "4"], "UpdatePeer", True),
    (["peers", "remove", "nysic"], "RemovePeer", True),
    (["peers", "list"], "ListPeers", True),
    (["peers", "show", "nysic"], "ShowPeer", True),
    (["peers", "groups"], "PeerGroups", True),
    (["disseminations"], "Disseminations", True),
    (["update", "r1", "--title", "new"], "Update", True),
    (["retract", "r1", "--reason", "x"], "Retract", True),
    (["purge", "r1", "--reason", "x"], "Purge", True),
    (["validate", "r1", "--reason", "x"], "Validate", True),
    (["review"], "Review", True),
    (["notices"], "Notices", True),
    (["backup", "/tmp/b.db"], "Backup", True),
    (["keys", "rotate", "--signing"], "RotateKey", True),
    (["recovery", "finish"], "FinishRecovery", True),
    (["recovery", "adopt"], "AdoptOwnLog", True),
    (["keys", "rotate", "--signing", "--stolen"], "RotateKey", True),
    (["keys", "rotate", "--seal", "--retire"], "RotateKey", True),
    (["export", "--format", "stix2.1"], "Export", False),
    (["import", "-", "--format", "stix2.1"], "Import", True),
    (["watch", "add", "x"], "AddWatch", True),
    (["watch", "list"], "ListWatches", True),
    (["watch", "remove", "w1"], "RemoveWatch", True),
    (["watch", "hits"], "WatchHits", True),
]
OFFLINE = {"init", "identity", "serve", "restore"}  # never talk to the daemon


class FakeStub:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        method = SERVICE.methods_by_name[name]  # KeyError: no such RPC

        def call(request: Any, metadata: Any = None, timeout: Any = None) -> Any:
            assert request.DESCRIPTOR is method.input_type, (name, request.DESCRIPTOR.name)
            assert ("authorization", "Bearer tok") in metadata
            self.calls.append((name, request))
            out = local_pb2.DESCRIPTOR.message_types_by_name[method.output_type.name]
            cls = getattr(local_pb2, out.name)
            reply = REPLIES[name]
            if name == "Query":
                return iter(_query_items(reply))
            if name in ("Get",):
                return _record_view(reply)
            if method.server_streaming:
                return iter(_message(cls, item) for item in reply)
            return _message(cls, reply)
        return call


def _message(cls: Any, data: Any) -> Any:
    if cls in (local_pb2.Notice, local_pb2.LocalWatchHit):
        field = cls.DESCRIPTOR.fields[0].name
        return cls(**{field: json.dumps(data)})
    return build(cls, data)


def _record_view(data: dict[str, Any]) -> Any:
    from node.daemon.localapi import record_view
    return record_view(data)


def _query_items(items: list[dict[str, Any]]) -> list[Any]:
    from node.daemon.localapi import query_item
    return [query_item(i) for i in items]


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStub]:
    fake = FakeStub()

    def client_for(args: argparse.Namespace) -> client_mod.Client:
        c = client_mod.Client.__new__(client_mod.Client)
        c.home, c.token, c.timeout, c.stub = None, "tok", 30.0, fake  # type: ignore[assignment]
        return c

    for mod in (main, federation_cmds, lifecycle_cmds, stix_cmds, watch_cmds):
        monkeypatch.setattr(mod, "client_for", client_for)

    @contextlib.contextmanager
    def running(home: Any) -> Iterator[bool]:
        yield False  # the daemon runs: go through the API

    monkeypatch.setattr(federation_cmds, "lock_if_stopped", running)
    monkeypatch.setattr("node.config.home.lock_if_stopped", running)
    monkeypatch.setattr("node.config.home.Home.require", lambda self: None)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b'{"type": "bundle"}')))
    yield fake


def _subcommands() -> set[str]:
    parser = main.build_parser()
    found: set[str] = set()
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        for name, sub in action.choices.items():
            nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
            found.update(f"{name} {n}" for a in nested for n in a.choices) if nested \
                else found.add(name)
    return found


def test_every_cli_command_is_covered() -> None:
    covered = set()
    for argv, _, _ in COMMANDS:
        covered.add(" ".join(argv[:2]) if " ".join(argv[:2]) in _subcommands() else argv[0])
    covered.add("audit")
    assert _subcommands() - OFFLINE - covered == set()
    # ... and every RPC of the service is used by some command.
    assert {m.name for m in SERVICE.methods} == {rpc for _, rpc, _ in COMMANDS}


@pytest.mark.parametrize("argv,rpc,verbatim", COMMANDS, ids=[" ".join(c[0][:2])
                                                              for c in COMMANDS])
def test_command_round_trips(stub: FakeStub, capsys: pytest.CaptureFixture[str],
                             argv: list[str], rpc: str, verbatim: bool) -> None:
    code = main.main([*argv, "--json"])
    out = capsys.readouterr()
    assert [name for name, _ in stub.calls] == [rpc], out.err
    assert code in (0, 1), out.err  # 1: e.g. `audit verify` of a tampered log
    if not verbatim:
        return
    reply = REPLIES[rpc]
    expected = reply if isinstance(reply, list) else [reply]  # one line per item
    printed = out.out.splitlines()
    assert printed == [json.dumps(e, ensure_ascii=False) for e in expected]


def test_text_output_reads_the_typed_replies(stub: FakeStub,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The human output formats every reply without a missing key."""
    for argv, _, _ in COMMANDS:
        stub.calls.clear()
        assert main.main(argv) in (0, 1), (argv, capsys.readouterr().err)
    assert "TLP:AMBER+STRICT" in capsys.readouterr().out


def test_requests_carry_the_command_line(stub: FakeStub) -> None:
    main.main(["search", "pickup", "truck", "--entity", "phone=555", "--kind", "SAR",
               "--since", "7d", "--limit", "5", "--json"])
    main.main(["publish", "--kind", "SAR", "--title", "t", "--justification", "j",
               "--entity", "plate=ABC 123", "--tlp", "GREEN", "--audience", "members"])
    main.main(["peers", "update", "fcnode1/card"])
    (_, search), (_, publish), (_, update) = stub.calls
    assert to_dict(search.filters) == {
        "text": "pickup truck", "entities": ["phone=555"], "kinds": ["SAR"], "since": "7d",
        "labels": [], "origins": [], "limit": 5, "behaviors": []}
    (draft,) = publish.records
    assert (draft.entities[0].type, draft.entities[0].value) == ("plate", "ABC 123")
    assert draft.policy.tlp == "GREEN" and list(draft.policy.audience) == ["members"]
    assert not update.HasField("distrust_after")  # absent means "after what is held"


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(KeyError, match="no field 'surprise'"):
        build(local_pb2.Published, {"record_id": "r", "surprise": 1})


def test_example_client_is_where_the_docs_say() -> None:
    assert (Path(__file__).resolve().parents[3] / "configs/examples/local_client.py").is_file()


def test_update_sends_only_the_changes() -> None:
    """Unset is "unchanged"; an empty list is "now empty" (wrapped lists)."""
    from node.cli.client import CliError
    from node.cli.lifecycle_cmds import changes_message

    changes = {"title": "x", "labels": [], "entities": ["phone=555-123-4567"],
               "policy": {"tlp": "GREEN", "relay": False}}
    assert to_dict(changes_message(changes)) == {
        "title": "x", "labels": [], "entities": [{"type": "phone", "value": "555-123-4567"}],
        "policy": {"tlp": "GREEN", "relay": False}}
    with pytest.raises(CliError, match="surprise"):
        changes_message({"surprise": 1})
    with pytest.raises(CliError):
        changes_message({"labels": "not a list"})


@pytest.mark.parametrize("extra", [{}, {"routing": ["r1"], "audience": ["ffc", "nysic"]},
                                   {"routing": [], "audience": []}])
def test_publish_reply_written_out_is_the_generic_message(extra: dict[str, Any]) -> None:
    """The daemon builds a Publish reply field by field (it is on the hot path);
    it must be exactly the message the generic converter makes of the service's
    rows, empty routing lists present as such."""
    from node.daemon.localapi import published_list

    rows = [{"record_id": f"r{i}", "origin": "ffc", "seq": i, "version": 1, "kind": "SAR",
             **extra} for i in range(1, 4)]
    generic = local_pb2.PublishedList(records=[build(local_pb2.Published, r) for r in rows])
    assert published_list(rows) == generic
    assert published_list(rows).SerializeToString() == generic.SerializeToString()


DRAFTS = [
    {"kind": "SAR", "title": "t"},
    {"kind": "BOLO", "title": "t", "narrative": "n", "labels": ["a", "b"], "behaviors": ["SURVL"],
     "entities": ["phone=(200) 001-2345", {"type": "plate", "value": "CA:1"}],
     "policy": {"tlp": "GREEN", "audience": ["members"], "require": [],
                "discoverability": "pointer"},
     "part23": {"source_reliability": "B", "content_validity": "2"},
     "expires": "30d", "contact": "desk"},
    {"kind": "TIP", "title": "t", "policy": {}, "part23": {}},  # present, though empty
    {"kind": "TIP", "title": "t", "policy": {"relay": False, "tlp": None}, "narrative": None},
    {"kind": "TIP", "title": "t", "policy": {"relay": True, "audience": ("a", "b")}},
    {"kind": "SAR", "title": "t", "part23": {"justification": "j", "review_due": "2030-01-01"}},
]


@pytest.mark.parametrize("draft", DRAFTS)
def test_draft_message_written_out_is_the_generic_message(draft: dict[str, Any]) -> None:
    """The client writes a record file's draft out field by field (a batch
    publish's sending side); it must be the message the generic converter makes."""
    from node.core.entities import parse_pair

    ents = [dict(zip(("type", "value"), parse_pair(e), strict=True)) if isinstance(e, str)
            else e for e in draft.get("entities") or []]
    generic = build(local_pb2.RecordDraft, {**draft, "entities": ents})
    fast = client_mod.draft_message(draft)
    assert fast == generic
    assert fast.SerializeToString(deterministic=True) == generic.SerializeToString(
        deterministic=True)
    assert fast.HasField("policy") == generic.HasField("policy")
    assert fast.HasField("part23") == generic.HasField("part23")


@pytest.mark.parametrize("bad", [
    {"kind": "SAR", "title": "t", "colour": "red"},  # an unknown key
    {"kind": "SAR", "title": "t", "labels": "a"},  # a string for a list
    {"kind": "SAR", "title": "t", "policy": {"tlp": "GREEN", "shade": 1}},
    {"kind": "SAR", "title": "t", "policy": {"relay": "yes"}},
    {"kind": "SAR", "title": 5},
])
def test_draft_message_refuses_what_the_generic_converter_refuses(bad: dict[str, Any]) -> None:
    with pytest.raises((KeyError, TypeError, ValueError)) as generic:
        build(local_pb2.RecordDraft, bad)
    with pytest.raises(generic.type):
        client_mod.draft_message(bad)


@pytest.mark.parametrize("extra", [{}, {"routing": ["r1"], "audience": ["ffc"]},
                                   {"routing": [], "audience": []}])
def test_publish_rows_written_out_are_the_generic_dicts(extra: dict[str, Any]) -> None:
    reply = local_pb2.PublishedList(records=[build(local_pb2.Published, {
        "record_id": f"r{i}", "origin": "ffc", "seq": i, "version": 1, "kind": "SAR", **extra})
        for i in range(1, 3)])
    rows = client_mod.published_rows(reply)
    assert rows == to_dict(reply)
    assert [list(r) for r in rows] == [list(r) for r in to_dict(reply)]  # key order too
