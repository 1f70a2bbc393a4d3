"""The node home: where a node's files live, and node.toml.

    node.toml      this center's settings (hand-editable, validated at start)
    peers.toml     pinned peers (fcnode peers ...; hand-editable)
    signing.key    Ed25519 signing key (0600)
    tls.key        ECDSA P-256 TLS key (0600), tls.crt its self-signed certificate
    node.db        SQLite database (WAL)
    daemon.lock    held by the running daemon
    fcnode.sock    local API socket (or under /tmp when the home path is too long)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from node.core.routing import Rule, check_rules, parse_rules
from node.core.types import FcnodeError, ValidationError, check_center_id

DEFAULT_HOME = "fcnode-home"
# sun_path is 108 bytes including the NUL: a longer path fails to bind with only
# "Failed to bind to address" (DESIGN.md section 8).
MAX_SOCKET_PATH = 107


class HomeError(FcnodeError):
    pass


def resolve_home(arg: str | None) -> Path:
    return Path(arg or os.environ.get("FCNODE_HOME") or DEFAULT_HOME).expanduser().resolve()


@dataclass(frozen=True)
class Home:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "node.toml"

    @property
    def peers(self) -> Path:
        return self.root / "peers.toml"

    @property
    def signing_key(self) -> Path:
        return self.root / "signing.key"

    @property
    def encryption_key(self) -> Path:
        """X25519 key: answers sealed to this center (HPKE) cross hubs as ciphertext."""
        return self.root / "encryption.key"

    @property
    def tls_key(self) -> Path:
        return self.root / "tls.key"

    @property
    def tls_cert(self) -> Path:
        return self.root / "tls.crt"

    @property
    def database(self) -> Path:
        return self.root / "node.db"

    @property
    def lock(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def socket(self) -> Path:
        """The local API socket: in the home, or under a short runtime directory
        when the home's path is too long for a Unix socket."""
        inside = self.root / "fcnode.sock"
        if len(str(inside).encode()) <= MAX_SOCKET_PATH:
            return inside
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        return Path(f"/tmp/fcnode-{os.getuid()}") / f"{digest}.sock"

    def socket_dir_is_private(self) -> None:
        """The socket's directory must be ours and closed to others: a directory
        someone else made under /tmp could hold a fake socket that collects
        credentials."""
        parent = self.socket.parent
        try:
            st = parent.stat()
        except FileNotFoundError:
            return
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise HomeError(f"{parent} is not private to this user (owner uid {st.st_uid}, "
                            f"mode {st.st_mode & 0o777:04o}); remove it or fix it "
                            "(chmod 700) before using this node")

    def require(self) -> None:
        if not self.config.exists():
            raise HomeError(f"no fcnode node at {self.root} (run fcnode init, or set "
                            "--home / FCNODE_HOME)")


class AlreadyRunning(HomeError):
    pass


def acquire_lock(home: Home) -> IO[str]:
    """One daemon per home: an advisory lock the kernel drops if we die."""
    fh = open(home.lock, "a+")  # noqa: SIM115 - held for the daemon's lifetime
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        pid = fh.read().strip() or "?"
        fh.close()
        raise AlreadyRunning(f"another fcnode serve (pid {pid}) is already running on "
                             f"{home.root}") from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


@contextlib.contextmanager
def lock_if_stopped(home: Home) -> Iterator[bool]:
    """True when no daemon runs on this home, holding its lock meanwhile (so none
    starts in the middle of an offline edit); False when a daemon runs (or the
    lock cannot be opened by this user: then only the daemon can act)."""
    try:
        fh = acquire_lock(home)
    except (AlreadyRunning, PermissionError):
        yield False
        return
    try:
        yield True
    finally:
        fh.close()


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 8 * 1024 * 1024
    max_batch: int = 256
    max_results: int = 500
    query_rate_per_minute: int = 600
    max_query_bytes: int = 16 * 1024
    retention_sweep_s: float = 60.0  # how often expired records are purged
    max_streams_per_peer: int = 4  # concurrent Replicate streams one peer may hold open
    restarts_per_minute: int = 6   # Replicate requests per peer that start an origin over
    max_notices: int = 10_000  # notices kept per kind; the oldest are dropped
    max_answer_bytes: int = 32 * 1024 * 1024  # taken from one peer's answer to a query
    max_watches_per_peer: int = 100  # standing queries one peer center may hold here
    max_watch_days: int = 90  # the longest a watch (or another center's standing query) runs
    max_watch_hits: int = 1000  # hits kept per watcher (oldest dropped, counted)
    # Standing sets beyond direct peers: watcher centers whose sets one peer may bring
    # here, sets one peer may send per minute (its own, and as many again passed on), and
    # the sealed hits kept here per watcher further away, waiting for the next hop.
    max_standing_sets_per_peer: int = 100
    standing_sets_per_minute: int = 600
    # ... and their bytes (each budget apart): a set may be up to 1 MiB, and 600 of
    # those a minute would be 600 MiB of signature checks and writes from one peer.
    standing_set_bytes_per_minute: int = 16 * 1024 * 1024
    max_relay_bytes: int = 16 * 1024 * 1024
    introduction_poll_s: float = 30.0  # how often each introducer's cards are fetched
    max_sealed_copies: int = 32  # sealed copies kept (and made) per log position
    # Purges from peers leave search at once and the text index file (an FTS5
    # 'optimize', O(index)) within this long: at most one such rewrite per interval.
    index_compact_s: float = 600.0


@dataclass(frozen=True)
class TlsSettings:
    """[tls] in node.toml. Days may be fractions (tests use minutes).

    A renewed certificate is announced in this center's log at once and presented
    only ``switch_after_days`` later (at the latest half-way to the old one's
    expiry): peers pin it when they verify the announcement, so by the time the node
    presents it they already trust it, with no administrator involved."""
    lifetime_days: float = 365.0      # validity of certificates this node makes
    renew_before_days: float = 30.0   # renew automatically this long before expiry
    switch_after_days: float = 2.0    # present the new certificate this long after announcing
    warn_before_days: float = 30.0    # log a warning this long before expiry
    check_interval_s: float = 3600.0  # how often the daemon looks at its certificate


@dataclass(frozen=True)
class NodeConfig:
    center: str
    name: str
    listen: str
    contact: str
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    limits: Limits = Limits()
    metrics_listen: str = ""  # [metrics] listen: Prometheus page; "" = off
    tls: TlsSettings = TlsSettings()
    routing: tuple[Rule, ...] = ()  # [[routing]]: audience widened at publish

    def check_routing(self, known: set[str]) -> None:
        """Refuse a rule naming a center that is not this one or a pinned peer."""
        try:
            check_rules(self.routing, known | {self.center}, self.groups)
        except ValidationError as exc:
            raise HomeError(f"node.toml: {exc}") from None


def check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValidationError(f"invalid address {value!r}: use HOST:PORT, e.g. 127.0.0.1:7701")
    return value


def check_group(name: str) -> str:
    if ":" not in name or not all(name.split(":", 1)) or " " in name:
        raise ValidationError(f"invalid group name {name!r}: use KIND:NAME, e.g. region:west")
    return name


def parse_config(data: dict[str, Any], where: str) -> NodeConfig:
    try:
        node = data["node"]
        center = check_center_id(str(node["center"]))
        name = str(node.get("name") or center)
        listen = check_listen(str(node["listen"]))
        contact = str(node.get("contact") or f"{name} watch desk")
        groups = {
            check_group(g): tuple(check_center_id(c, f"member of {g}") for c in members)
            for g, members in (data.get("groups") or {}).items()
        }
        limits = Limits(**(data.get("limits") or {}))
        metrics_listen = parse_metrics(data.get("metrics") or {})
        tls = parse_tls(data.get("tls") or {})
        routing = parse_rules(data.get("routing"))
    except KeyError as exc:
        raise HomeError(f"{where}: missing setting {exc.args[0]!r}") from None
    except (TypeError, ValidationError) as exc:
        raise HomeError(f"{where}: {exc}") from None
    return NodeConfig(center, name, listen, contact, groups, limits, metrics_listen, tls,
                      routing)


def parse_tls(section: dict[str, Any]) -> TlsSettings:
    known = set(TlsSettings.__dataclass_fields__)
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValidationError(f"[tls]: unknown setting {unknown[0]!r} (known: "
                              f"{', '.join(sorted(known))})")
    for key, value in section.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ValidationError(f"[tls]: {key} must be a positive number")
    tls = TlsSettings(**{k: float(v) for k, v in section.items()})
    if tls.renew_before_days >= tls.lifetime_days:
        raise ValidationError("[tls]: renew_before_days must be less than lifetime_days")
    return tls


def parse_metrics(section: dict[str, Any]) -> str:
    unknown = sorted(set(section) - {"listen"})
    if unknown:
        raise ValidationError(f"[metrics]: unknown setting {unknown[0]!r} (only listen)")
    listen = str(section.get("listen") or "")
    return check_listen(listen) if listen else ""


def load_config(home: Home) -> NodeConfig:
    home.require()
    try:
        data = tomllib.loads(home.config.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise HomeError(f"{home.config}: not valid TOML ({exc})") from None
    return parse_config(data, str(home.config))


def toml_str(value: str) -> str:
    """A TOML basic string (JSON's escapes are a subset of TOML's)."""
    import json

    return json.dumps(value, ensure_ascii=False)


def render_config(cfg: NodeConfig) -> str:
    lines = [
        "# fcnode node settings. Changes apply on restart or SIGHUP.",
        "[node]",
        f"center = {toml_str(cfg.center)}",
        f"name = {toml_str(cfg.name)}",
        f"listen = {toml_str(cfg.listen)}  # federation listener (mutual TLS only)",
        f"contact = {toml_str(cfg.contact)}  # shown with POINTER hits: whom to call",
        "",
        "# Audience groups, expanded into center ids when a record is published.",
        "[groups]",
    ]
    for g, members in sorted(cfg.groups.items()):
        lines.append(f"{toml_str(g)} = [{', '.join(toml_str(m) for m in members)}]")
    lines += ["", "[limits]"]
    lim = cfg.limits
    for key in lim.__dataclass_fields__:
        lines.append(f"{key} = {getattr(lim, key)}")
    lines += ["", "# Prometheus metrics on their own HTTP listener (off unless set; no",
              "# authentication: keep it on loopback or a monitoring network). Restart to apply.",
              "[metrics]"]
    lines.append(f"listen = {toml_str(cfg.metrics_listen)}" if cfg.metrics_listen
                 else '# listen = "127.0.0.1:9464"')
    lines += ["", "# TLS certificate renewal: automatic, announced to peers in this center's",
              "# log; no administrator at any peer acts (see README, Operating a node).",
              "[tls]"]
    for key in TlsSettings.__dataclass_fields__:
        lines.append(f"{key} = {getattr(cfg.tls, key)}")
    lines += ["", "# Routing rules: widen a record's audience at publish, before signing (never",
              "# narrow). Every condition given must match; centers must be pinned peers.",
              "# [[routing]]",
              '# name = "terrorism-to-jttf"',
              '# when = { kind = "TIP", label = "nexus:terrorism" }',
              '# add_audience = ["jttf-sf"]']
    for r in cfg.routing:
        when = ", ".join(f"{k} = {toml_str(v)}" for k, v in
                         (("kind", r.kind), ("label", r.label), ("behavior", r.behavior)) if v)
        lines += ["[[routing]]", f"name = {toml_str(r.name)}", f"when = {{ {when} }}",
                  f"add_audience = [{', '.join(toml_str(a) for a in r.add_audience)}]"]
    return "\n".join(lines) + "\n"
