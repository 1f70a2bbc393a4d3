"""The main job: a demo network of three fusion centers on 127.0.0.1.

    python configs/demo/demo.py [--keep DIR]

Creates three centers in a scratch directory, pins them (ncric <-> nysic <->
ffc; ffc knows ncric's keys but reaches it only through nysic), starts their
daemons, publishes records with different access policies at each, shows who
received what (read from each node's database), runs a federated query as
analysts with different attributes, shows a standing watch firing at nysic when
ncric publishes on a watched plate, routes a terrorism tip to a fourth center (a
JTTF) by a routing rule, and stops everything it started.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from node.devnet import Node, wait_settled, wait_until  # noqa: E402

RECORDS = [
    # (center, label, publish arguments)
    ("ncric", "BOLO, TLP:GREEN, all members", [
        "--kind", "BOLO", "--title", "Armed robbery suspect vehicle, grey Civic",
        "--entity", "plate=7ABC123", "--entity", "person=Doe, John;1980-01-02",
        "--tlp", "GREEN", "--audience", "members"]),
    ("ncric", "SAR, TLP:AMBER, nysic only, sworn_le", [
        "--kind", "SAR", "--title", "Surveillance of water treatment intake",
        "--entity", "phone=(555) 123-4567", "--tlp", "AMBER", "--audience", "nysic",
        "--require", "sworn_le", "--justification", "repeated photography, fled when approached"]),
    ("ncric", "TIP, AMBER+STRICT, members (never relayed)", [
        "--kind", "TIP", "--title", "Tip on stolen rifles for sale", "--entity",
        "weapon=SN 44-1234-X", "--tlp", "AMBER+STRICT", "--audience", "members",
        "--justification", "caller names seller and place"]),
    ("nysic", "BULLETIN, TLP:CLEAR, all members", [
        "--kind", "BULLETIN", "--title", "Holiday crowd safety bulletin",
        "--tlp", "CLEAR", "--audience", "members"]),
    ("ffc", "BOLO, TLP:AMBER, region:east", [
        "--kind", "BOLO", "--title", "Missing person, possible abduction",
        "--entity", "person=Roe, Jane;2009-05-04", "--entity", "phone=555 123 4567",
        "--tlp", "AMBER", "--audience", "region:east"]),
    ("ffc", "SAR, TLP:AMBER, ffc only, restricted", [
        "--kind", "SAR", "--title", "Money laundering through car dealership",
        "--entity", "plate=7abc-123", "--tlp", "AMBER", "--discoverability", "restricted",
        "--justification", "structured deposits, linked plate"]),
]


def banner(text: str) -> None:
    print(f"\n== {text} " + "=" * max(0, 70 - len(text)), flush=True)


def run(scratch: Path) -> None:
    banner(f"creating three centers in {scratch}")
    nodes = {c: Node(scratch, c, name) for c, name in [
        ("ncric", "Northern California RIC"), ("nysic", "New York State IC"),
        ("ffc", "Florida Fusion Center")]}
    try:
        for n in nodes.values():
            n.start()
            print(f"  {n.center:<6} listening on {n.listen} (mutual TLS), home {n.home}")
        banner("pinning peers from identity cards")
        ncric, nysic, ffc = nodes["ncric"], nodes["nysic"], nodes["ffc"]
        ncric.pin(nysic)
        nysic.pin(ncric)
        nysic.pin(ffc, groups=["region:east"])
        ffc.pin(nysic, groups=["region:east"])
        ffc.pin(ncric, connect=False)   # keys only: ncric's records arrive via nysic
        ncric.pin(ffc, connect=False, groups=["region:east"])
        print("  ncric <-> nysic <-> ffc   (ffc and ncric pin each other's keys, no link)")
        # ffc's own node is in region:east too, for its own audience expansion.
        ffc.edit_config("[groups]", '[groups]\n"region:east" = ["ffc", "nysic"]')
        ffc.send_signal(1)  # SIGHUP: reload node.toml
        time.sleep(0.5)

        banner("publishing records under different policies")
        published = []
        for center, label, args in RECORDS:
            rec = nodes[center].publish(*args)
            published.append((center, label, rec["record_id"]))
            print(f"  {center:<6} {label:<45} {rec['record_id'][:8]}")

        banner("waiting for replication")
        # Converged when what every node holds has not changed for 1.5 s.
        wait_settled(lambda: {c: n.held_record_ids() for c, n in nodes.items()}, 1.5, 30)
        held = {c: n.held_record_ids() for c, n in nodes.items()}
        print("  converged")

        banner("who holds what (read from each node's own database)")
        print(f"  {'record':<52}" + "".join(f"{c:>8}" for c in nodes))
        for center, label, rid in published:
            row = "".join(f"{'yes' if rid in held[c] else '-':>8}" for c in nodes)
            print(f"  {center + ': ' + label:<52}{row}")
        print("\n  The AMBER+STRICT tip reached nysic (a member) but nysic may not relay it,")
        print("  so ffc, which peers only with nysic, never received it.")

        banner("dissemination log at ncric (who received which record)")
        print(ncric.ok("disseminations"))

        banner("searching as analysts with different attributes (at nysic)")
        nysic.add_user("det-ortiz", "sworn_le")
        nysic.add_user("intern")
        for user in ("det-ortiz", "intern"):
            print(f"  -- {user}: fcnode search --entity phone=555.123.4567")
            print("     " + nysic.ok("search", "--entity", "phone=555.123.4567", user=user)
                  .strip().replace("\n", "\n     "))

        _federated_query(nodes)
        _lifecycle(nodes, published)
        _watch(nodes)
        _jttf(nodes, scratch)

        banner("node status at nysic")
        print(nysic.ok("status"))
    finally:
        banner("stopping all daemons")
        for n in nodes.values():
            code = n.stop()
            print(f"  {n.center:<6} stopped (exit {code})")


def _federated_query(nodes: dict[str, Node]) -> None:
    ffc, nysic = nodes["ffc"], nodes["nysic"]
    ffc.add_user("sgt-lee", "sworn_le")
    banner("federated query from ffc as sgt-lee: who knows plate 7ABC123?")
    print(ffc.ok("query", "--entity", "plate=7abc 123", user="sgt-lee"))
    banner("deconfliction from nysic: anyone working John Doe (DOB 1980-01-02)?")
    print(nysic.ok("deconflict", "person=DOE, JOHN;01/02/1980", "plate=7ABC-123",
                   user="det-ortiz"))
    print("  ffc's laundering SAR on that plate is 'restricted': nysic learned nothing,")
    print("  and ffc's analysts got a deconfliction notice naming who asked:")
    print("  " + ffc.ok("notices").strip().replace("\n", "\n  "))


def _lifecycle(nodes: dict[str, Node], published: list[tuple[str, str, str]]) -> None:
    ncric, nysic, ffc = nodes["ncric"], nodes["nysic"], nodes["ffc"]
    bolo = published[0][2]
    sar = published[1][2]
    banner("ncric narrows its BOLO to nysic only, and purges its SAR")
    print("  " + ncric.ok("update", bolo, "--audience", "nysic", "--reason",
                          "suspect identified; limit distribution").strip())
    print("  " + ncric.ok("purge", sar, "--reason", "information found unreliable").strip())
    wait_until(lambda: bolo not in ffc.held_record_ids() and "purge" in nysic.ok("notices"),
               15, 0.3)
    for n in (nysic, ffc):
        print(f"\n  notices at {n.center}:")
        print("  " + n.ok("notices").strip().replace("\n", "\n  "))
    print(f"\n  ffc still holds the BOLO: {bolo in ffc.held_record_ids()}"
          f"   nysic still holds the SAR's content: {sar in nysic.held_record_ids()}")


def _watch(nodes: dict[str, Node]) -> None:
    ncric, nysic = nodes["ncric"], nodes["nysic"]
    banner("a standing watch: det-ortiz at nysic watches plate 8XYZ999 (network)")
    wid = nysic.ok("watch", "add", "--network", "--entity", "plate=8XYZ999",
                   user="det-ortiz").strip()
    print(f"  fcnode watch add --network --entity plate=8XYZ999   -> watch {wid}")
    wait_until(lambda: wid in ncric.ok("watch", "list", "--remote"), 15, 0.3)
    print("  ncric holds nysic's signed standing query (fcnode watch list --remote, admin):")
    print("  " + ncric.ok("watch", "list", "--remote").strip().replace("\n", "\n  "))
    bolo = ncric.publish("--kind", "BOLO", "--title", "Stolen van used in burglaries",
                         "--entity", "plate=8 XYZ 999", "--tlp", "GREEN", "--audience", "members")
    sar = ncric.publish("--kind", "SAR", "--title", "Van seen at substation at night",
                        "--entity", "plate=8xyz-999", "--tlp", "AMBER", "--behavior", "SURVL",
                        "--justification", "guard report")
    print(f"  ncric publishes a GREEN BOLO ({bolo['record_id'][:8]}) and an ncric-only SAR "
          f"({sar['record_id'][:8]}) on that plate")
    wait_until(lambda: all(r["record_id"] in nysic.ok("watch", "hits", user="det-ortiz")
                           for r in (bolo, sar)), 15, 0.3)
    text = nysic.ok("watch", "hits", user="det-ortiz")
    print("  fcnode watch hits (det-ortiz at nysic):")
    print("  " + text.strip().replace("\n", "\n  "))
    print("  The BOLO is shown in full; the SAR only as a POINTER (ncric's own policy, its")
    print("  signed stub): no title, no behaviour code, just whom to call.")


JTTF_RULE = """
[[routing]]
name = "terrorism-to-jttf"
when = { kind = "TIP", label = "nexus:terrorism" }
add_audience = ["jttf"]
"""


def _jttf(nodes: dict[str, Node], scratch: Path) -> None:
    nysic = nodes["nysic"]
    banner("routing: every terrorism tip at nysic also goes to the JTTF")
    jttf = Node(scratch, "jttf", "JTTF New York")
    nodes["jttf"] = jttf  # stopped with the others
    jttf.start()
    jttf.pin(nysic)
    nysic.pin(jttf)
    nysic.edit_config("[limits]", JTTF_RULE.strip() + "\n\n[limits]")
    nysic.send_signal(1)  # SIGHUP: reload node.toml (the rule's center is pinned)
    time.sleep(0.5)
    print("  nysic's node.toml:" + JTTF_RULE.replace("\n", "\n    "))
    out = nysic.ok("publish", "--kind", "TIP", "--title", "Caller describes pipe-bomb parts",
                   "--label", "nexus:terrorism", "--tlp", "AMBER", "--justification",
                   "caller saw the materials", "--behavior", "MATRLS")
    print("  fcnode publish --kind TIP --label nexus:terrorism ... (no --audience):")
    print("  " + out.strip().replace("\n", "\n  "))
    rid = out.split()[1]
    wait_until(lambda: rid in jttf.held_record_ids(), 15, 0.3)
    print(f"  jttf holds the tip: {rid in jttf.held_record_ids()}")
    print("  dissemination log at nysic for it:")
    print("  " + nysic.ok("disseminations", rid).strip().replace("\n", "\n  "))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", help="use this directory and keep it afterwards")
    args = parser.parse_args()
    if args.keep:
        scratch = Path(args.keep).resolve()
        scratch.mkdir(parents=True, exist_ok=True)
        run(scratch)
        return 0
    scratch = Path(tempfile.mkdtemp(prefix="fcdemo-"))
    try:
        run(scratch)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
