"""Issue 4: federated query and deconfliction across real daemons."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import grpc

from node.core.record import parse_draft
from node.core.types import Decision, Discoverability, Policy, Requester, Tlp, ValidationError
from node.devnet import Node, mesh
from node.wire import federation_pb2, federation_pb2_grpc, records_pb2
from tests.integration.rogue import Rogue
from tests.node.core.test_policy import oracle

CENTERS = ["c1", "c2", "c3", "c4", "c5"]
USERS = {  # center -> user -> attributes
    "c1": {"ann": ["sworn_le"]},
    "c3": {"ana": ["sworn_le"], "bob": []},
    "c4": {"cy": ["sworn_le", "ntk:gangs"]},
    "c5": {"dee": []},
}
AUDIENCES = [[], ["c3"], ["c3", "c4"], ["members"]]
TLPS = ["GREEN", "AMBER", "AMBER+STRICT", "RED"]
DISCOVERABILITY = ["open", "pointer", "restricted"]
REQUIRES = [[], ["sworn_le"], ["sworn_le", "ntk:gangs"], ["user:c3/ana"]]


def drafts_for(origin: str) -> list[dict]:
    out = []
    for n, (aud, tlp, disc, req) in enumerate(itertools.product(
            AUDIENCES, TLPS, DISCOVERABILITY, REQUIRES)):
        draft = {"kind": "BOLO", "title": f"{origin} case {n}", "entities": ["plate=QRY 123"],
                 "policy": {"tlp": tlp, "audience": aud, "discoverability": disc,
                            "require": req}}
        try:
            parse_draft(draft)
        except ValidationError:
            continue  # e.g. RED without a named reader: refused at publish, not queryable
        out.append(draft)
    return out


def policy_of(draft: dict) -> Policy:
    p = draft["policy"]
    tlp = Tlp.parse(p["tlp"])
    return Policy(tlp=tlp, audience=frozenset(p["audience"]),
                  required_attributes=frozenset(p["require"]),
                  discoverability=Discoverability.parse(p["discoverability"]),
                  relay=tlp not in (Tlp.AMBER_STRICT, Tlp.RED))


def expected(origin: str, policy: Policy, center: str, user: str) -> Decision:
    """What a query from (center, user) should show of one record, computed with
    the independent oracle: every node that holds the record answers (full mesh:
    the origin and every center it replicated to), the best answer wins."""
    holders = [n for n in CENTERS
               if n == origin or oracle(policy, origin, origin, Requester(n)) is Decision.FULL]
    who = Requester(center, user, frozenset(USERS[center][user]))
    return max((oracle(policy, origin, n, who) for n in holders), default=Decision.DENY)


def test_every_center_and_user_gets_exactly_what_the_policy_allows(make_node,
                                                                   tmp_path: Path) -> None:
    nodes = {c: make_node(c) for c in CENTERS}
    mesh(*nodes.values())
    for center, users in USERS.items():
        for user, attrs in users.items():
            nodes[center].add_user(user, *attrs)
    published: dict[str, tuple[str, Policy]] = {}
    for origin in ("c1", "c2"):
        drafts = drafts_for(origin)
        path = tmp_path / f"{origin}.json"
        path.write_text(json.dumps(drafts))
        for line, draft in zip(nodes[origin].ok("publish", "--file", str(path), "--json")
                               .splitlines(), drafts, strict=True):
            published[json.loads(line)["record_id"]] = (origin, policy_of(draft))
    # Let replication settle: every holder has every record it may hold.
    for n in nodes.values():
        n.wait_for(lambda n=n: all(
            rid in n.held_record_ids() for rid, (o, p) in published.items()
            if n.center == o or oracle(p, o, o, Requester(n.center)) is Decision.FULL),
            60, "replication")
    queries = 0
    for center, users in USERS.items():
        for user in users:
            lines = nodes[center].json_lines("query", "--entity", "plate=qry-123",
                                             "--limit", "500", user=user)
            summary = lines[-1]["summary"]
            assert all(o["status"] == "answered" for o in summary.values()), summary
            assert set(summary) == set(CENTERS)
            got = {r["record_id"]: r["access"] for r in lines[:-1]}
            assert len(got) == len(lines) - 1  # deduplicated
            want = {}
            for rid, (origin, policy) in published.items():
                d = expected(origin, policy, center, user)
                if d >= Decision.POINTER:
                    want[rid] = d.name
            assert got == want, (center, user)
            for r in lines[:-1]:
                if r["access"] == "POINTER":
                    assert "title" not in r and "entities" not in r
            queries += 1
    # Restricted hits leave a deconfliction notice at their origin, naming who asked.
    for origin in ("c1", "c2"):
        notices = nodes[origin].json_lines("notices")
        noticed = {(rid, n["searched_by"]) for n in notices
                   if n["kind"] == "deconfliction" for rid in n["records"]}
        # One notice per query that hit restricted records, naming them all.
        assert len([n for n in notices if n["kind"] == "deconfliction"]) == len(
            {s for _, s in noticed})
        want = {(rid, f"{c}/{u}") for rid, (o, p) in published.items() if o == origin
                for c, users in USERS.items() if c != origin for u in users
                if oracle(p, origin, origin, Requester(c, u, frozenset(USERS[c][u])))
                is Decision.NOTIFY_ONLY}
        assert noticed == want
    # Both ends audit: the requester logs the query, the answerer what it released.
    assert any(e["action"] == "query" for e in nodes["c3"].json_lines("audit"))
    answered = [e for e in nodes["c1"].json_lines("audit") if e["action"] == "query.answer"]
    assert {e["detail"]["center"] for e in answered} == {"c3", "c4", "c5"}
    released = nodes["c1"].json_lines("disseminations")
    # Records naming their audience are also sealed to each named center (copies
    # for hubs to carry: README, "Records for named centers behind hubs"): only to
    # centers that may hold them.
    assert {d["channel"] for d in released} == {"replication", "query", "sealed"}
    for d in released:
        if d["channel"] == "sealed":
            origin, policy = published[d["record_id"]]
            assert oracle(policy, origin, origin, Requester(d["center"])) is Decision.FULL
    assert queries == 5


def test_stopped_center_is_unreachable_and_forged_answers_are_dropped(make_node,
                                                                      tmp_path: Path) -> None:
    a, b, c = make_node("alpha"), make_node("bravo"), make_node("charlie")
    mesh(a, b, c)
    rec = b.publish("--kind", "BOLO", "--title", "Wanted: Ulysses", "--entity",
                    "phone=555 010 9999", "--audience", "members", "--tlp", "GREEN")
    b.wait_for(lambda: rec["record_id"] in a.held_record_ids(), 20, "replication")
    rogue = Rogue(tmp_path, "rogue")
    real = _envelope(a, rec["record_id"])
    tampered = records_pb2.Envelope()
    tampered.CopyFrom(real)
    tampered.payload = tampered.payload.replace(b"Ulysses", b"Odysseus")
    forged = rogue.item(rogue.body(1, b"", "Wanted: Ulysses (forged)")).envelope
    forged_body = records_pb2.RecordBody()
    forged_body.ParseFromString(forged.payload)
    forged_body.origin = "bravo"  # claims another center's name, signed with rogue's key
    from node.core.signing import seal_record
    rogue.answers = [tampered, seal_record(rogue.signing, forged_body)]
    rogue.serve(a.card())
    a.ok("peers", "add", rogue.card.line())
    c.stop()
    lines = a.json_lines("query", "ulysses", "--timeout", "3s")
    summary = lines[-1]["summary"]
    assert summary["charlie"]["status"] == "unreachable"
    assert summary["bravo"]["status"] == "answered" and summary["alpha"]["status"] == "answered"
    assert summary["rogue"]["status"] == "answered" and summary["rogue"]["dropped"] == 2
    titles = [r["title"] for r in lines[:-1]]
    assert titles == ["Wanted: Ulysses"]  # once (deduplicated), never the forgeries
    text = a.ok("query", "ulysses", "--timeout", "3s")
    assert "unreachable" in text and "2 dropped" in text
    rogue.stop()


def test_deconflict_names_centers_levels_and_contacts(make_node) -> None:
    a, b, c = make_node("alpha"), make_node("bravo"), make_node("charlie")
    mesh(a, b, c)
    a.add_user("det", "sworn_le")
    b.publish("--kind", "DECONFLICTION", "--title", "Undercover buy planned",
              "--entity", "person=Doe, John;1980-01-02", "--audience", "members",
              "--require", "sworn_le", "--justification", "active narcotics case")
    c.publish("--kind", "SAR", "--title", "Doe seen casing bank", "--entity",
              "person=John Doe dob 01/02/1980", "--discoverability", "pointer",
              "--justification", "bank report")
    c.publish("--kind", "TIP", "--title", "Restricted informant tip", "--entity",
              "person=doe john;1980-01-02", "--discoverability", "restricted",
              "--justification", "informant")
    a.publish("--kind", "BOLO", "--title", "Plate only", "--entity", "plate=ZZZ999",
              "--audience", "members")
    rows = a.json_lines("deconflict", "person=DOE, JOHN;1980-01-02", user="det")
    by_center = {r["center"]: r for r in rows if "center" in r}
    # Any one of the entities matches: the plate-only record joins the answer.
    both = a.json_lines("deconflict", "person=DOE, JOHN;1980-01-02", "plate=zzz-999",
                        user="det")
    assert {r["center"] for r in both if "center" in r} == {"alpha", "bravo", "charlie"}
    assert by_center["bravo"]["level"] == "FULL" and by_center["bravo"]["records"] == 1
    assert by_center["charlie"]["level"] == "POINTER" and by_center["charlie"]["records"] == 1
    assert by_center["charlie"]["contact"] == "CHARLIE fusion center watch desk"
    assert "alpha" not in by_center
    notices = c.json_lines("notices")
    assert [(n["kind"], n["searched_by"]) for n in notices] == [
        ("deconfliction", "alpha/det")] * 2  # one per deconfliction that hit it
    human = a.ok("deconflict", "person=Doe, John;1980-01-02", user="det")
    assert "charlie" in human and "POINTER" in human and "answered" in human


def _envelope(node: Node, record_id: str) -> records_pb2.Envelope:
    import contextlib

    with contextlib.closing(node.db()) as conn:
        payload, signature, key_id, stub, stub_signature = conn.execute(
            "SELECT payload, signature, key_id, stub, stub_signature FROM entries "
            "WHERE record_id = ?", (record_id,)).fetchone()
    own = stub is not None and stub_signature in (None, signature)  # v2: the signed stub
    return records_pb2.Envelope(payload=payload, signature=signature, key_id=key_id,
                                stub=stub if own else b"")


def test_unsigned_replayed_oversized_and_excess_queries_are_refused(make_node,
                                                                   tmp_path: Path) -> None:
    node = make_node("delta", start=False)
    node.edit_config("query_rate_per_minute = 600", "query_rate_per_minute = 3")
    node.start()
    rogue = Rogue(tmp_path, "echo")
    node.ok("peers", "add", rogue.card.line())
    from node.core.signing import seal_query

    def signed(**kw) -> federation_pb2.SignedQuery:
        now = int(time.time() * 1000)
        body = federation_pb2.QueryBody(center="echo", user="u", query_id="ab" * 16,
                                        issued_ms=now, deadline_ms=now + 5000, text="x")
        for k, v in kw.items():
            setattr(body, k, v)
        raw = body.SerializeToString()
        sig, kid = seal_query(rogue.signing, raw)
        return federation_pb2.SignedQuery(body=raw, signature=sig, key_id=kid)

    def ask(q: federation_pb2.SignedQuery) -> grpc.StatusCode:
        with rogue.channel(node.listen, node.card()) as ch:
            try:
                list(federation_pb2_grpc.FederationStub(ch).Query(q, timeout=5))
                return grpc.StatusCode.OK
            except grpc.RpcError as exc:
                return exc.code()

    first = signed()
    assert ask(first) == grpc.StatusCode.OK
    assert ask(first) == grpc.StatusCode.ALREADY_EXISTS  # replayed
    unsigned = federation_pb2.SignedQuery(body=signed(query_id="cd" * 16).body)
    assert ask(unsigned) == grpc.StatusCode.UNAUTHENTICATED
    # The rate limit (3 a minute) is now spent: a clear RESOURCE_EXHAUSTED, no crash.
    assert ask(signed(query_id="ef" * 16)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    node.stop()
    node.edit_config("query_rate_per_minute = 3", "query_rate_per_minute = 600")
    node.start()
    big = signed(query_id="12" * 16, text="word " * 5000)
    assert ask(big) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ask(signed(query_id="34" * 16, limit=100_000)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    expired = signed(query_id="56" * 16, issued_ms=1, deadline_ms=2)
    assert ask(expired) == grpc.StatusCode.DEADLINE_EXCEEDED
    other_center = signed(query_id="78" * 16, center="delta")
    assert ask(other_center) == grpc.StatusCode.PERMISSION_DENIED
    assert node.proc.poll() is None
