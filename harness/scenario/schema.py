"""schema.json: what a scenario may contain, and a schema error as a message a person can act on.

Why a module of its own: the schema is the single source of truth for keys and step actions (the
loader's stages and the tests read `actions()`), and turning a jsonschema error into one located
message (the first in the file, the most telling of several, "did you mean", the schema's own
description as the hint) is a craft of its own, independent of how the YAML was read.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema

from harness.scenario.model import Mark
from harness.scenario.wording import DOC, JSON_TYPES, did_you_mean, path_label, short, type_name
from harness.scenario.yaml_tree import YamlTree

SCHEMA_PATH = Path(__file__).with_name("schema.json")


@functools.cache
def _schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(_schema())


@functools.cache
def actions() -> tuple[str, ...]:
    """Every step action, in schema order (the step's `oneOf` is the single source of truth)."""
    return tuple(branch["required"][0] for branch in _schema()["$defs"]["step"]["oneOf"])


def _deref(schema: Any) -> list[dict]:
    """A schema and the local `$ref` targets ("#/$defs/x") behind it, outermost first."""
    chain = []
    while isinstance(schema, dict):
        chain.append(schema)
        if "$ref" not in schema:
            break
        target: Any = _schema()
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = target
    return chain


def _frames(schema_path: Iterable[Any]) -> list[dict]:
    """The schemas that applied to the failing instance, outermost first.

    jsonschema's schema paths skip `$ref` hops, so refs are followed wherever a key is missing.
    A new instance level (a property, an item, a map value) starts a new list.
    """
    node: Any = _schema()
    frames, prev = [node], None
    for key in schema_path:
        while isinstance(node, dict) and key not in node and "$ref" in node:
            node = _deref(node)[1]
            frames.append(node)
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            break
        if isinstance(node, dict) and key != "properties":
            if prev == "properties" or key in ("items", "additionalProperties", "propertyNames"):
                frames = []
            frames.append(node)
        prev = key
    return frames


def _descriptions(schemas: Iterable[dict]) -> str:
    return "; ".join(dict.fromkeys(s["description"] for s in schemas if s.get("description")))


def _properties(frames: list[dict]) -> dict[str, Any]:
    """The properties an object level declares, whichever frame (or ref behind it) holds them."""
    out: dict[str, Any] = {}
    for frame in frames:
        for schema in _deref(frame):
            out.update(schema.get("properties", {}))
    return out


def validate(tree: YamlTree, data: Any) -> None:
    """Report the schema error that comes first in the file, preferring the most telling one."""
    errors = list(_validator().iter_errors(data))
    if not errors:
        return
    unknown_at = {tuple(e.absolute_path) for e in errors if e.validator == "additionalProperties"}
    reports = []
    for e in errors:
        path = tuple(e.absolute_path)
        if e.validator in ("required", "oneOf") and path in unknown_at:
            continue   # an unknown key is most likely the misspelt required/action key
        mark, message, hint = _describe(tree, e, path, data)
        rank = 0 if e.validator in ("additionalProperties", "propertyNames") else 2 if e.validator in (
            "required", "oneOf") else 1
        reports.append(((mark.line, mark.column, rank), mark, message, hint))
    _, mark, message, hint = min(reports, key=lambda r: r[0])
    raise tree.error(mark.line, mark.column, message, hint)


def _describe(tree: YamlTree, e: jsonschema.ValidationError, path: tuple, data: Any) -> tuple[Mark, str, str]:
    """Where one schema error points, its message and its hint (the schema's description where it has one)."""
    frames = _frames(e.absolute_schema_path)
    described = _descriptions(frames) or f"see {DOC}"
    label = path_label(path, data)
    where = f"in {label}" if label else "at top level"
    subject = label or "the top level"
    keyword, inst = e.validator, e.instance
    if keyword == "additionalProperties":
        allowed = list(_properties(frames))
        extra = sorted((k for k in inst if k not in allowed), key=lambda k: tree.mark(path + (k,), key=True).line)
        is_step = "start" in allowed and not any(k in inst for k in actions())
        noun = "step action" if is_step else "key"
        return (tree.mark(path + (extra[0],), key=True), f"unknown {noun} '{extra[0]}' {where}",
                did_you_mean(extra[0], allowed) + f"allowed: {', '.join(allowed)}")
    if keyword == "propertyNames":
        return (tree.mark(path + (inst,), key=True), f"invalid name '{inst}' {where}", described)
    if keyword == "required":
        missing = next(k for k in e.validator_value if k not in inst)
        hint = _descriptions(_deref(_properties(frames).get(missing))) or described
        return tree.mark(path), f"missing key '{missing}' {where}", hint
    if keyword == "oneOf" and all(set(b) == {"required"} for b in e.validator_value):
        return _exactly_one(tree, e, path, subject)
    if keyword == "type":
        expected = e.validator_value if isinstance(e.validator_value, list) else [e.validator_value]
        want = " or ".join(JSON_TYPES.get(t, t) for t in expected)
        got = type_name(inst)
        if isinstance(inst, str) and inst in actions() and path and isinstance(path[-1], int):
            described = f"write `- {inst}:` with a colon; {described}"
        return tree.mark(path), f"{subject}: expected {want}, got {got}", described
    if keyword in ("enum", "const"):
        allowed = e.validator_value if keyword == "enum" else [e.validator_value]
        shown = [str(a) for a in allowed]
        return (tree.mark(path), f"{subject}: {short(inst)} is not allowed",
                did_you_mean(str(inst), shown) + f"allowed: {', '.join(shown)}")
    if keyword == "pattern":
        return tree.mark(path), f"{subject}: {short(inst)} is not valid", described
    if keyword in ("minItems", "minLength"):
        return tree.mark(path), f"{subject} is empty", described
    if keyword in ("minimum", "exclusiveMinimum"):
        bound = ">=" if keyword == "minimum" else ">"
        return (tree.mark(path), f"{subject}: {short(inst)} is too small (must be {bound} {e.validator_value})",
                described)
    if keyword in ("maximum", "exclusiveMaximum"):
        bound = "<=" if keyword == "maximum" else "<"
        return (tree.mark(path), f"{subject}: {short(inst)} is too large (must be {bound} {e.validator_value})",
                described)
    if keyword in ("maxLength", "maxItems"):
        return (tree.mark(path), f"{subject} is too long (at most {e.validator_value} "
                f"{'characters' if keyword == 'maxLength' else 'entries'})", described)
    if keyword == "uniqueItems":
        dup = next(i for i, x in enumerate(inst) if x in inst[:i])
        return (tree.mark(path + (dup,)), f"{subject}: {short(inst[dup])} is listed twice",
                "remove the repeated entry")
    return tree.mark(path), f"{subject}: {e.message}", described


def _exactly_one(tree: YamlTree, e: jsonschema.ValidationError, path: tuple, subject: str) -> tuple[Mark, str, str]:
    """The one-key choice of a step (its action) or a device (interface, hostdev or xml)."""
    choices = [b["required"][0] for b in e.validator_value]
    noun = "action" if "start" in choices else "device kind"
    present = [k for k in choices if k in e.instance] if isinstance(e.instance, dict) else []
    if not present:
        return (tree.mark(path), f"{subject} has no {noun}",
                f"use exactly one of: {', '.join(choices)}")
    keys = ", ".join(f"'{k}'" for k in present)
    return (tree.mark(path + (present[1],), key=True), f"{subject} has {len(present)} {noun}s: {keys}",
            "a step does exactly one thing: split it into separate steps" if noun == "action"
            else "a device entry is exactly one of interface, hostdev or xml: split it into separate entries")
