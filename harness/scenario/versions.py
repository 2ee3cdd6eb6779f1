"""Version rules: `requires: {libvirt: ">=9.0"}` in a scenario and `libvirt: {a: "<10"}` in an acknowledgement.

Why a module of its own: a constraint is checked where scenarios run (the engine skips a scenario
the bed's versions do not meet) and where differences are acknowledged (harness/report/diff_acks.py),
and has nothing to do with reading a YAML file.
"""
from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt}
_CLAUSE = re.compile(r"\s*(<=|>=|==|!=|<|>)\s*([0-9]+(?:\.[0-9]+)*)\s*")
_VERSION = re.compile(r"\s*v?([0-9]+(?:\.[0-9]+)*)")


def parse_version_constraint(spec: str) -> Callable[[str], bool]:
    """'>=8.0, <10' -> predicate on version strings; dotted ints compare with missing parts as 0."""
    clauses = []
    for part in spec.split(","):
        match = _CLAUSE.fullmatch(part)
        if not match:
            raise ValueError(f"bad version constraint {spec!r}: expected e.g. '>=9.0.0' or '>=8.0, <10'")
        clauses.append((_OPS[match.group(1)], _version_tuple(match.group(2))))

    def satisfied(version: str) -> bool:
        have = _version_tuple(version)
        return all(op(*_padded(have, want)) for op, want in clauses)
    return satisfied


def version_satisfies(version: str, spec: str) -> bool:
    """Whether e.g. '9.0.0' (or '8.2.2 (Debian ...)': leading dotted ints count) meets '>=9.0'."""
    return parse_version_constraint(spec)(version)


def _version_tuple(version: str) -> tuple[int, ...]:
    match = _VERSION.match(version)
    if not match:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(p) for p in match.group(1).split("."))


def _padded(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    n = max(len(a), len(b))
    return a + (0,) * (n - len(a)), b + (0,) * (n - len(b))
