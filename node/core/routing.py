"""Routing rules (node.toml ``[[routing]]``): widen a record's audience at publish,
before it is signed (pure).

Fusion centers "provide all terrorism-related tips and leads to JTTFs": a rule
such as ``when = {kind = "TIP", label = "nexus:terrorism"}``, ``add_audience =
["jttf-sf"]`` makes that hold whether or not the author remembered. A rule only
ever adds centers (never narrows, never removes a required attribute), and every
condition given must match. Rules are checked when the configuration loads: a
rule naming a center that is neither this one nor a pinned peer, or a group that
does not exist, is refused then, not at the first matching publish.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from node.core.record import CONTENT_KINDS, Draft, check_behaviors
from node.core.types import MEMBERS, ValidationError, check_center_id

MAX_RULES = 64
_WHEN_KEYS = {"kind", "label", "behavior"}
_RULE_KEYS = {"name", "when", "add_audience"}


@dataclass(frozen=True)
class Rule:
    name: str
    add_audience: tuple[str, ...]  # center ids or groups
    kind: str = ""
    label: str = ""
    behavior: str = ""

    def matches(self, draft: Draft) -> bool:
        return ((not self.kind or draft.kind == self.kind)
                and (not self.label or self.label in draft.labels)
                and (not self.behavior or self.behavior in draft.behaviors))


def parse_rules(items: Any) -> tuple[Rule, ...]:
    """``[[routing]]`` tables, validated for shape (centers are checked by
    ``check_rules`` once the pinned peers are known)."""
    if items is None:
        return ()
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValidationError("[[routing]] must be a list of tables")
    if len(items) > MAX_RULES:
        raise ValidationError(f"more than {MAX_RULES} [[routing]] rules")
    rules: list[Rule] = []
    for n, item in enumerate(items, 1):
        name = str(item.get("name") or f"routing-{n}")
        where = f"[[routing]] {name!r}"
        extra = sorted(set(item) - _RULE_KEYS)
        if extra:
            raise ValidationError(f"{where}: unknown setting {extra[0]!r} "
                                  "(use name, when, add_audience)")
        when = item.get("when") or {}
        if not isinstance(when, dict) or not when:
            raise ValidationError(f"{where}: 'when' must name at least one of kind, label, "
                                  "behavior")
        extra = sorted(set(when) - _WHEN_KEYS)
        if extra:
            raise ValidationError(f"{where}: unknown condition {extra[0]!r} "
                                  "(use kind, label, behavior)")
        kind = str(when.get("kind") or "").upper()
        if kind and kind not in CONTENT_KINDS:
            raise ValidationError(f"{where}: unknown kind {kind!r}: use one of "
                                  f"{', '.join(CONTENT_KINDS)}")
        behavior = check_behaviors([str(when["behavior"])])[0] if when.get("behavior") else ""
        add = item.get("add_audience")
        if not isinstance(add, list) or not add or not all(isinstance(a, str) for a in add):
            raise ValidationError(f"{where}: add_audience must be a non-empty list of "
                                  "center ids or groups")
        audience = tuple(dict.fromkeys(a.strip().lower() for a in add))
        if MEMBERS in audience:
            raise ValidationError(f"{where}: add_audience cannot be 'members'; name the "
                                  "centers a rule sends to")
        if any(r.name == name for r in rules):
            raise ValidationError(f"two [[routing]] rules are named {name!r}")
        rules.append(Rule(name, audience, kind, str(when.get("label") or "").strip().lower(),
                          behavior))
    return tuple(rules)


def check_rules(rules: Iterable[Rule], known: Iterable[str],
                groups: Mapping[str, Iterable[str]]) -> None:
    """Every center a rule adds is this one or a pinned peer; every group exists."""
    known_set = set(known)
    for rule in rules:
        for entry in rule.add_audience:
            if ":" in entry:
                if entry not in groups:
                    raise ValidationError(f"[[routing]] {rule.name!r}: unknown group {entry!r}")
                continue
            check_center_id(entry, f"[[routing]] {rule.name!r} center")
            if entry not in known_set:
                raise ValidationError(f"[[routing]] {rule.name!r}: unknown center {entry!r} "
                                      "(not this center or a pinned peer; pin it first)")


def route(rules: Iterable[Rule], draft: Draft) -> tuple[Draft, tuple[str, ...]]:
    """The draft with its audience widened by every matching rule, and the names
    of those rules. A draft already for 'members' is not narrowed to a list."""
    matched = [r for r in rules if r.matches(draft)]
    if not matched:
        return draft, ()
    audience = list(draft.audience)
    if MEMBERS not in audience:
        for r in matched:
            audience.extend(a for a in r.add_audience if a not in audience)
    return replace(draft, audience=tuple(audience)), tuple(r.name for r in matched)
