"""The egress gate: every record that leaves this node for another center passes
here. It takes the one policy decision, builds what may be sent, and returns the
dissemination rows that the caller writes in the same transaction as the read
(28 CFR 23.20(f): who received which record, when, why).

A hop never speaks for an origin: what leaves is the origin's signed entry, a
bare placeholder, or a placeholder with the origin's own signed stub (a recall),
forwarded unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from google.protobuf.message import DecodeError

from node.core import policy
from node.core.record import body_policy
from node.core.sealing import SealedCopy
from node.core.types import Decision, Dissemination
from node.storage.log import StoredEntry
from node.wire import federation_pb2, records_pb2

SentBefore = Callable[[str, str], int | None]
CurrentVersion = Callable[[str, str], int | None]
# (origin, seq) -> the sealed copies held for that position: (hash signed for, copy).
CopiesOf = Callable[[str, int], "list[tuple[bytes, SealedCopy]]"]


def replication_batch(
    entries: Iterable[StoredEntry], peer: str, evaluator: str,
    sent_before: SentBefore = lambda origin, record_id: None,
    current_version: CurrentVersion = lambda origin, record_id: None,
    recalled_before: SentBefore = lambda origin, record_id: None,
    ranges: bool = False,
    copies_of: CopiesOf = lambda origin, seq: [],
) -> tuple[list[federation_pb2.LogItem], list[Dissemination]]:
    """Log items for ``peer``: the signed entry where it is the record's newest
    version here and the decision for that center is FULL, else a placeholder
    (seq and hash only). Where the newest version is withheld from a peer this
    node sent the record before, the placeholder carries the origin's signed stub
    of that version (content-free): the peer's older copy must go. A hop never
    speaks for the origin: without the origin's stub there is no recall.

    ``ranges``: the peer takes range placeholders: consecutive bare placeholders
    (and held ranges of hints) go as one item (``collapse``). Otherwise a held
    range goes as it is: its inner hashes are not known here.

    ``copies_of``: the sealed copies held per position. They go with the item,
    whatever else it carries (envelope, stub or nothing), to every peer: only a
    center they were sealed to can open one, and it may be behind this peer.
    Only copies signed for the hash held here go (the origin signed that hash)."""
    items: list[federation_pb2.LogItem] = []
    sent: list[Dissemination] = []
    # The decision depends only on the policy and the origin (evaluator and peer are
    # this call's): taken once per distinct policy, not per entry (a catch-up's
    # records share a handful of policies).
    decisions: dict[tuple[str, bytes], Decision] = {}

    def replicable(body: records_pb2.RecordBody) -> bool:
        key = (body.origin, body.policy.SerializeToString())
        decision = decisions.get(key)
        if decision is None:
            decision = decisions[key] = policy.for_replication(
                body_policy(body), body.origin, evaluator, peer)
        return decision is Decision.FULL

    for e in entries:
        item = federation_pb2.LogItem(origin=e.origin, seq=e.seq, hash=e.hash,
                                      range_first=e.first or 0)
        items.append(item)
        if e.first is None:
            copies = copies_of(e.origin, e.seq)
            if copies:
                item.sealed.extend(
                    federation_pb2.SealedCopy(sealed=c.sealed, signature=c.signature,
                                              key_id=c.key_id)
                    for digest, c in copies if digest == e.hash)
        body = None
        if e.payload is not None:
            try:
                body = e.body()
            except DecodeError:  # a corrupt stored entry never leaves; the hash still links
                continue
        record_id = body.record_id if body is not None else e.record_id
        version = body.version if body is not None else e.version
        if not record_id or version is None:
            continue  # a placeholder we know nothing about: pass the hash on
        if e.origin == peer:
            stub = e.signed_stub()
            if stub is not None:
                # The origin recovering its own log: its own signed stub is the
                # evidence of every position it may not get the content of (erased
                # here, superseded); it reveals nothing the origin did not sign.
                item.stub.CopyFrom(stub)
        newest = current_version(e.origin, record_id)
        if newest is not None and version < newest:
            continue  # superseded: only the newest version ever leaves
        if body is not None and replicable(body):
            item.envelope.CopyFrom(e.envelope())
            if item.envelope.stub:
                # A v2 entry: the envelope carries its own signed stub (the same
                # signature), so a recall or pointer later needs nothing more.
                item.ClearField("stub")
            elif (stub := e.signed_stub()) is not None and not item.HasField("stub") and (
                    version > 1 or policy.pointer_possible(
                    body_policy(body))):
                # A later version may have to be recalled from a center further on,
                # which only the origin's stub can justify: a hub must hold it to
                # forward it. A hub also answers POINTERs for its copies, and a
                # pointer must carry the origin's stub. First versions of records
                # everyone may read (most of a catch-up) never need one.
                item.stub.CopyFrom(stub)
            before = sent_before(e.origin, record_id)
            if before is None or before < version:
                # Re-sending a version the peer already got (a restart, a rewind)
                # is not a new dissemination: no new row.
                sent.append(Dissemination(peer, None, body.origin, record_id, version, e.seq,
                                          "replication", "FULL"))
        elif (stub := e.signed_stub()) is not None and sent_before(
                e.origin, record_id) is not None:
            # A recall is the origin's signed stub of the withheld version,
            # forwarded unchanged: no hop can assert one (none without a stub).
            item.stub.CopyFrom(stub)
            recalled = recalled_before(e.origin, record_id)
            if recalled is None or recalled < version:
                sent.append(Dissemination(peer, None, e.origin, record_id, version, e.seq,
                                          "replication", "RECALL"))
    return (collapse(items) if ranges else items), sent


def _bare(item: federation_pb2.LogItem) -> bool:
    return not item.HasField("envelope") and not item.HasField("stub") and not item.sealed


def collapse(items: list[federation_pb2.LogItem]) -> list[federation_pb2.LogItem]:
    """Runs of consecutive bare placeholders of one origin as one range item
    (first..last, the last one's hash). Items carrying the origin's signed bytes
    (an envelope, a stub: a recall must travel; sealed copies) stay as they are."""
    out: list[federation_pb2.LogItem] = []
    for item in items:
        last = out[-1] if out else None
        if (last is not None and _bare(item) and _bare(last) and last.origin == item.origin
                and (item.range_first or item.seq) == last.seq + 1):
            out[-1] = federation_pb2.LogItem(origin=item.origin, seq=item.seq, hash=item.hash,
                                             range_first=last.range_first or last.seq)
        else:
            out.append(item)
    return out
