"""The dashboard's policy form, read into the REST API's :class:`PolicyIn`.

Every validation error goes back to the field it belongs to.

Rules are numbered fields (``r0_sources``, ``r0_protocol``...); lists are comma- or space-
separated; ``rN_authorized`` holds one ``group: user user`` per line (nothing after the colon:
any local user). A rule whose sources and destinations are both empty is left out.

Example::

    form = PolicyForm.from_fields(await request.form())
    body, errors = form.parse()      # errors: {"r0_protocol": "...", "": "..."}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from meshssh_policy.api_models import PolicyIn
from meshssh_policy.records import PolicyRecord
from meshssh_policy.validation import validation_message
from meshssh_policy.web.views import authorized_text

__all__ = ["MAX_RULES", "PolicyForm", "RuleFields", "field_of"]

MAX_RULES = 20
_SPLIT = re.compile(r"[\s,]+")
_RULE_FIELD = {
    "sources": "sources",
    "destinations": "destinations",
    "protocol": "protocol",
    "ports": "ports",
    "port_ranges": "ports",
    "action": "action",
    "authorized_groups": "authorized",
}


@dataclass
class RuleFields:
    """One rule as the form shows it (text)."""

    sources: str = ""
    destinations: str = ""
    protocol: str = "ssh"
    ports: str = ""
    action: str = "accept"
    authorized: str = ""

    def empty(self) -> bool:
        """True when the row was left blank."""
        return not (self.sources.strip() or self.destinations.strip())


def _words(text: str) -> list[str]:
    return [w for w in _SPLIT.split(text.strip()) if w]


def _authorized(text: str) -> dict[str, list[str]] | str:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        group, colon, users = line.partition(":")
        if not colon or not group.strip():
            return f"{line.strip()!r} is not 'group: user user'"
        out[group.strip()] = _words(users)
    return out


def field_of(loc: list[Any]) -> str:
    """The form field of an error location (``["rules", 0, "protocol"]`` -> ``r0_protocol``)."""
    parts = [p for p in loc if p != "body"]
    if len(parts) >= 2 and parts[0] == "rules" and isinstance(parts[1], int):
        name = _RULE_FIELD.get(str(parts[2]), "") if len(parts) > 2 else ""
        return f"r{parts[1]}_{name}" if name else ""
    return str(parts[0]) if parts and parts[0] in ("id", "name", "description") else ""


@dataclass
class PolicyForm:
    """The policy form's values."""

    id: str = ""
    name: str = ""
    description: str = ""
    enabled: bool = True
    rules: list[RuleFields] = field(default_factory=list)

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> PolicyForm:
        """Read the posted fields."""

        def get(name: str) -> str:
            return str(fields.get(name, ""))[:4096]

        rules = []
        for i in range(MAX_RULES):
            if f"r{i}_sources" not in fields:
                break
            rules.append(
                RuleFields(
                    sources=get(f"r{i}_sources"),
                    destinations=get(f"r{i}_destinations"),
                    protocol=get(f"r{i}_protocol") or "ssh",
                    ports=get(f"r{i}_ports"),
                    action=get(f"r{i}_action") or "accept",
                    authorized=get(f"r{i}_authorized"),
                )
            )
        return cls(
            id=get("id").strip(),
            name=get("name").strip(),
            description=get("description").strip(),
            enabled=bool(fields.get("enabled")),
            rules=rules,
        )

    @classmethod
    def from_record(cls, policy: PolicyRecord) -> PolicyForm:
        """The form of a stored policy."""
        rules = [
            RuleFields(
                sources=", ".join(r.sources),
                destinations=", ".join(r.destinations),
                protocol=r.protocol,
                ports=", ".join([*r.ports, *(f"{x.start}-{x.end}" for x in r.port_ranges)]),
                action=r.action,
                authorized=authorized_text(dict(r.authorized_groups)),
            )
            for r in policy.rules
        ]
        return cls(
            id=policy.id,
            name=policy.name,
            description=policy.description,
            enabled=policy.enabled,
            rules=rules,
        )

    def with_blank_rule(self) -> PolicyForm:
        """The form with one empty rule row at the end (to add a rule)."""
        rules = [r for r in self.rules if not r.empty()]
        return PolicyForm(
            self.id, self.name, self.description, self.enabled, [*rules, RuleFields()][:MAX_RULES]
        )

    def parse(self) -> tuple[PolicyIn | None, dict[str, str]]:
        """The REST body, or the errors by field (``""``: not about one field)."""
        errors: dict[str, str] = {}
        rules: list[dict[str, Any]] = []
        for i, r in enumerate(self.rules):
            if r.empty():
                continue
            ports, ranges = [], []
            for word in _words(r.ports):
                start, dash, end = word.partition("-")
                if dash and start.isdigit() and end.isdigit():
                    ranges.append({"start": int(start), "end": int(end)})
                else:
                    ports.append(word)
            authorized = _authorized(r.authorized)
            if isinstance(authorized, str):
                errors[f"r{i}_authorized"] = authorized
                authorized = {}
            rule: dict[str, Any] = {
                "sources": _words(r.sources),
                "destinations": _words(r.destinations),
                "protocol": r.protocol,
                "ports": ports,
                "port_ranges": ranges,
                "action": r.action,
            }
            if authorized:
                rule["authorized_groups"] = authorized
            rules.append(rule)
        body = {
            "name": self.name,
            "description": self.description,
            "enabled": self.enabled,
            "rules": rules,
        }
        if self.id:
            body["id"] = self.id
        try:
            parsed = PolicyIn.model_validate(body)
        except ValidationError as e:
            for err in e.errors():
                loc = list(err.get("loc", ()))
                message = validation_message([{"loc": loc, "msg": err.get("msg", "")}])
                # A rule-level check names its field in the message ("ports: ...").
                errors.setdefault(self._field(loc) or self.error_field(message), message)
            return None, errors
        return (None, errors) if errors else (parsed, errors)

    def _field(self, loc: list[Any]) -> str:
        # Error locations count the kept rules; the form counts every row.
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            kept = [i for i, r in enumerate(self.rules) if not r.empty()]
            if loc[1] < len(kept):
                loc = ["rules", kept[loc[1]], *loc[2:]]
        return field_of(loc)

    def error_field(self, message: str) -> str:
        """The field a service error names (``rules[0].destinations: unknown group``)."""
        found = re.match(r"^rules\[(\d+)\]\.([a-z_]+)", message)
        if not found:
            return ""
        return self._field(["rules", int(found[1]), found[2]])
