"""Acknowledged differences: known-differences.yaml (docs/diff-acks.md), checked and matched.

Why a module of its own: the file is a person's input with its own schema and located errors
(file:line + fix), and matching an acknowledgement against a difference is a rule of its own; the
comparison (harness/report/diff.py) only calls ``load_acks`` and ``apply_acks``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from harness.report.diff_model import DOC, KINDS, SCENARIO_KINDS, Run, show, shown_path
from harness.scenario.versions import parse_version_constraint, version_satisfies
from harness.scenario.wording import JSON_TYPES, did_you_mean, short, type_name
from harness.scenario.yaml_tree import ScenarioError, YamlTree

ACK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "a mapping with one key, `acknowledged:`, holding a list of reviewed differences",
    "additionalProperties": False,
    "required": ["acknowledged"],
    "properties": {
        "acknowledged": {"type": "array", "items": {"$ref": "#/$defs/ack"},
                         "description": "a list of reviewed differences, one mapping each"},
    },
    "$defs": {
        "ack": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scenario", "kind", "reason"],
            "properties": {
                "scenario": {"type": "string", "pattern": r"^(\*|[a-z0-9][a-z0-9-]*)$",
                             "description": "a scenario name, or '*' for every scenario"},
                "step": {"anyOf": [{"type": "integer", "minimum": 1}, {"const": "*"}],
                         "description": "the step number as the diff prints it (from 1), or '*' (the default)"},
                "kind": {"enum": list(KINDS), "description": f"the kind of difference (see {DOC})"},
                "subject": {"type": "string", "minLength": 1,
                            "description": "what differs, as the diff prints it (a device id, 'live n1: driver@name', "
                                           "a QEMU id), exact or 're:<regex>'"},
                "from": {"type": ["string", "null"],
                         "description": "the value in RUN_A, exact or 're:<regex>'; null: absent in RUN_A"},
                "to": {"type": ["string", "null"],
                       "description": "the value in RUN_B, exact or 're:<regex>'; null: absent in RUN_B"},
                "libvirt": {"type": "object", "additionalProperties": False,
                            "properties": {"a": {"type": "string", "minLength": 1}, "b": {"type": "string", "minLength": 1}},
                            "description": "only when the runs' libvirt versions match, e.g. {a: '<10', b: '>=11'}"},
                "reason": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"^[^\n]*\S[^\n]*$",
                           "description": "one line: why this difference is expected"},
            },
        },
    },
}


@dataclass
class Ack:
    line: int
    entry: dict
    file: str
    matched: int = 0

    def field(self, key: str) -> Any:
        return self.entry.get(key)

    def describe(self) -> str:
        e = self.entry
        parts = [e["scenario"], f"step {e.get('step', '*')}", e["kind"]]
        if "subject" in e:
            parts.append(e["subject"])
        if "from" in e or "to" in e:
            parts.append(f"{show(e.get('from'))} -> {show(e.get('to'))}")
        return " ".join(str(p) for p in parts)


def load_acks(path: Path | str) -> list[Ack]:
    """The acknowledgements file, validated; a problem is a located error (file:line:column, hint, snippet)
    like the scenario loader's."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ScenarioError(f"cannot read the acknowledgements file: {e.strerror or e}",
                            "check the path (default: known-differences.yaml at the top of the repository)",
                            file=name) from None
    tree = YamlTree(name, raw)
    root = tree.compose_file(too_large="acknowledge fewer, broader differences",
                             empty=f"start it with `acknowledged: []`; see {DOC}")
    data = tree.plain_data(root)
    rank = {"additionalProperties": 0, "required": 2, "anyOf": 2}
    errors = sorted(jsonschema.Draft202012Validator(ACK_SCHEMA).iter_errors(data),
                    key=lambda e: (tree.mark(tuple(e.absolute_path)).line, -len(e.absolute_path),
                                   rank.get(e.validator, 1)))
    if errors:
        raise _ack_error(tree, errors, data)
    acks = []
    for i, entry in enumerate(data["acknowledged"]):
        for key in ("subject", "from", "to"):
            v = entry.get(key)
            if isinstance(v, str) and v.startswith("re:"):
                try:
                    re.compile(v[3:])
                except re.error as e:
                    raise tree.at(("acknowledged", i, key), f"acknowledgement {i + 1} {key}: bad regular expression "
                                  f"({e})", "write a Python regular expression after 're:', or drop 're:' for an "
                                  "exact value") from None
        for side, spec in (entry.get("libvirt") or {}).items():
            try:
                parse_version_constraint(spec)
            except ValueError as e:
                raise tree.at(("acknowledged", i, "libvirt", side), f"acknowledgement {i + 1} libvirt.{side}: {e}",
                              "e.g. '>=11.0' or '>=9.0, <10'") from None
        if entry["kind"] in SCENARIO_KINDS and entry.get("step", "*") != "*":
            raise tree.at(("acknowledged", i, "step"), f"acknowledgement {i + 1}: kind '{entry['kind']}' is about "
                          "a whole scenario, it has no step", "remove `step:` (or use another kind)", key=True)
        acks.append(Ack(line=tree.mark(("acknowledged", i)).line, entry=entry, file=shown_path(name)))
    return acks


def _ack_error(tree: YamlTree, errors: list, data: Any) -> ScenarioError:
    e = errors[0]
    path = tuple(e.absolute_path)
    where = f"acknowledgement {path[1] + 1}" if len(path) >= 2 and path[0] == "acknowledged" else "the file"
    field_name = ".".join(str(p) for p in path[2:])
    subject = f"{where} {field_name}".strip() if field_name else where
    described = e.schema.get("description") or f"see {DOC}"
    v, inst = e.validator, e.instance
    if v == "additionalProperties":
        allowed = list(e.schema.get("properties", {}))
        extra = [k for k in inst if k not in allowed][0]
        return tree.at(path + (extra,), f"unknown key '{extra}' in {subject}",
                       did_you_mean(extra, allowed) + f"allowed: {', '.join(allowed)}", key=True)
    if v == "required":
        missing = next(k for k in e.validator_value if k not in inst)
        hint = (e.schema.get("properties", {}).get(missing) or {}).get("description") or described
        if missing == "acknowledged":
            hint = f"the file is a mapping with one key, `acknowledged:`, holding a list; see {DOC}"
        return tree.at(path, f"missing key '{missing}' in {subject}", hint)
    if v == "type":
        want = e.validator_value if isinstance(e.validator_value, list) else [e.validator_value]
        return tree.at(path, f"{subject}: expected {' or '.join(JSON_TYPES.get(t, t) for t in want)}, "
                       f"got {type_name(inst)}", described)
    if v in ("enum", "const"):
        allowed = [str(x) for x in (e.validator_value if v == "enum" else [e.validator_value])]
        return tree.at(path, f"{subject}: {short(inst)} is not allowed",
                       did_you_mean(str(inst), allowed) + f"allowed: {', '.join(allowed)}")
    if v == "anyOf":
        return tree.at(path, f"{subject}: {short(inst)} is not allowed", described)
    if v == "pattern":
        return tree.at(path, f"{subject}: {short(inst)} is not valid", described)
    if v == "minLength":
        return tree.at(path, f"{subject} is empty", described)
    if v == "maxLength":
        return tree.at(path, f"{subject} is too long (at most {e.validator_value} characters)", described)
    return tree.at(path, f"{subject}: {e.message}", described)


def _match(spec: Any, value: Any) -> bool:
    if isinstance(spec, str) and spec.startswith("re:"):
        return value is not None and re.search(spec[3:], str(value)) is not None
    return spec == value


def _applies(ack: Ack, a: Run, b: Run) -> bool:
    for side, run in (("a", a), ("b", b)):
        spec = (ack.field("libvirt") or {}).get(side)
        if spec:
            try:
                if not version_satisfies(str(run.meta.get("libvirt", "")), spec):
                    return False
            except ValueError:
                return False
    sc = ack.field("scenario")
    if sc == "*":
        return True
    if ack.field("kind") == "scenario":
        return sc in a.scenarios or sc in b.scenarios
    return sc in a.scenarios and sc in b.scenarios


def _ack_matches(ack: Ack, d: dict) -> bool:
    e = ack.entry
    if e["scenario"] not in ("*", d["scenario"]) or e["kind"] != d["kind"]:
        return False
    if e.get("step", "*") != "*" and e["step"] != d["step"]:
        return False
    if "subject" in e and not _match(e["subject"], d["subject"]):
        return False
    return all(key not in e or _match(e[key], d[side]) for key, side in (("from", "a"), ("to", "b")))


def apply_acks(diffs: list[dict], acks: list[Ack], a: Run, b: Run) -> tuple[list[dict], list[Ack]]:
    """Mark every difference an acknowledgement covers (`ack`: file, line, reason); return the differences
    and the stale acknowledgements (applicable to these runs, matching nothing)."""
    live = [k for k in acks if _applies(k, a, b)]
    for d in diffs:
        d["ack"] = None
        for k in live:
            if _ack_matches(k, d):
                k.matched += 1
                if d["ack"] is None:
                    d["ack"] = {"file": k.file, "line": k.line, "reason": k.entry["reason"]}
    return diffs, [k for k in live if not k.matched]
