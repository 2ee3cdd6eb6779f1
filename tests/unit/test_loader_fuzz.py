"""Whatever is in a scenario file, collection gets Scenarios or one located ScenarioError, never a traceback."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.scenario.loader import ScenarioError, actions, load_text

SEED = (Path(__file__).resolve().parent.parent / "data" / "good" / "seed-hostdev-then-hotplug.yaml").read_text()
SEED_DATA = yaml.safe_load(SEED)
FILE = "fuzz.yaml"
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Words the format knows, so mutations hit the interesting branches rather than only "unknown key".
WORDS = sorted(set(actions()) | {
    "guards", "tags", "requires", "devices", "networks", "domain", "steps", "name", "scenarios", "interface",
    "hostdev", "xml", "id", "type", "device", "network", "kind", "vf", "pf", "e1000e", "forward", "vfs", "expect",
    "aliases", "changes", "error", "removed", "times", "flags", "live", "alias", "ua-x", "hn0", "n1", "vf1", "lan",
    "{vf1.pci}", "{n1.mac}", "{nope}", ">=9.0.0", "<<", "&a", "*a", "{{", "}}"})

scalars = st.none() | st.booleans() | st.integers(-3, 300) | st.floats(allow_nan=True) | st.text(max_size=12) \
    | st.sampled_from(WORDS)
structures = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=8) | st.sampled_from(WORDS), inner, max_size=4),
                          max_leaves=25)
yamlish = st.lists(st.sampled_from(list(":-[]{}#&*!|>'\",?%@` \n\t\r\\ab1") + ["  ", ": ", "- "] + WORDS),
                   max_size=40).map("".join)


def assert_clean(source: str | bytes) -> None:
    """Loads, or fails with a ScenarioError that names the file and a line the file actually has."""
    try:
        load_text(source, FILE)
    except ScenarioError as e:
        text = source if isinstance(source, str) else source.decode("utf-8", errors="replace")
        lines = len(re.findall(r"\r\n|[\n\r\x85\u2028\u2029]", text)) + 1
        assert e.file == FILE
        assert 1 <= e.line <= lines, (e.line, lines, str(e))
        assert e.column >= 1 and e.message and e.hint
        assert str(e).startswith(f"{FILE}:{e.line}:{e.column}: ")


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data):
    assert_clean(data)


@FAST
@given(st.text(max_size=300))
def test_arbitrary_text(text):
    assert_clean(text)


@FAST
@given(yamlish)
def test_yaml_punctuation_soup(text):
    assert_clean(text)


@FAST
@given(structures)
def test_arbitrary_structures(value):
    assert_clean(yaml.safe_dump(value, allow_unicode=True))


def paths(value, prefix=()):
    """Every path into a YAML value, the root included."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, prefix + (i,))


SEED_PATHS = list(paths(SEED_DATA))


@st.composite
def mutated_seed(draw):
    """The doc's example with a few structural edits: drop, replace, add or rename a key, or an item."""
    data = copy.deepcopy(SEED_DATA)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(SEED_PATHS))
        try:
            parent = data
            for p in path[:-1]:
                parent = parent[p]
            if path:
                parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue   # an earlier edit removed this path
        if path and not isinstance(parent, (dict, list)):
            continue   # an earlier edit replaced a container on this path by a scalar (a string indexes too)
        how = draw(st.sampled_from(["drop", "replace", "add", "rename"]))
        if not path:
            data = draw(structures) if how == "replace" else data
        elif how == "drop":
            del parent[path[-1]]
        elif how == "replace":
            parent[path[-1]] = draw(structures)
        elif how == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(WORDS))] = draw(structures)
        elif how == "add":
            parent.insert(path[-1], draw(structures))
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(WORDS))] = parent.pop(path[-1])
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


@FAST
@given(mutated_seed())
def test_mutated_valid_scenario(text):
    assert_clean(text)


@FAST
@given(st.integers(0, len(SEED)), st.integers(0, 8), yamlish)
def test_text_edits_of_a_valid_scenario(at, cut, insert):
    assert_clean(SEED[:at] + insert + SEED[at + cut:])
