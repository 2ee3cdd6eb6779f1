"""Scenarios that benchmarks and integration tests write at run time must pass the loader's limits.

The soak benchmark's 200-cycle file once broke only 40 minutes into CI, when the limits of issue 13 capped
repeat.times at 100: loading each generated text here catches such a clash in a second."""
from __future__ import annotations

import importlib.util

import pytest

from bench import soak
from harness import paths
from harness.scenario.loader import load_text


def _module(rel: str):
    spec = importlib.util.spec_from_file_location(rel.replace("/", "_"), paths.REPO / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _generated():
    faults = _module("tests/integration/test_faults.py")
    e2e = _module("tests/integration/test_reporting_e2e.py")
    return {
        "soak-200": soak.SCENARIO.format(cycles=200),
        "faults-target": faults.FAULT_SCENARIO,
        "faults-next": faults.NEXT_SCENARIO,
        "e2e-passing": e2e.PASSING % "net0",
        "e2e-stable": e2e.STABLE,
    }


GENERATED = _generated()


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_scenario_loads(name):
    [sc] = load_text(GENERATED[name], f"{name}.yaml")
    assert sc.steps, name


def test_soak_repeat_expands_to_every_cycle():
    [sc] = load_text(soak.SCENARIO.format(cycles=200), "soak.yaml")
    [rep] = [s for s in sc.steps if s.action == "repeat"]
    assert rep.times == 200
