"""Scenario files -> validated Scenario objects, or one ScenarioError that points at the line to fix.

The pipeline is: bytes -> strict UTF-8 -> YAML node tree (so every value keeps its line) -> plain
data (yaml_tree.py) -> schema.json (schema.py) -> semantic checks: references, kinds, placeholders
(semantics.py, raw_xml.py) -> model objects (here). Every failure is a ScenarioError with
file:line:column, a hint and a snippet: collection must say what is wrong and how to fix it, never
show a traceback. This module is the entry the plugin, the explorer and the tests use.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.scenario import schema
from harness.scenario.model import Device, Domain, HostDevice, Mark, Network, Scenario, Step
from harness.scenario.schema import SCHEMA_PATH, actions
from harness.scenario.semantics import Semantics
from harness.scenario.versions import parse_version_constraint, version_satisfies
from harness.scenario.wording import DOC
from harness.scenario.yaml_tree import MAX_BYTES, ScenarioError, YamlTree, snippet_from_file, value_at

#: What other modules and tests import from here; some of it lives in the stage modules it belongs to.
__all__ = ["PYTEST_MARKS", "SCHEMA_PATH", "ScenarioError", "actions", "check_unique_names", "load_file", "load_text",
           "parse_version_constraint", "version_satisfies"]

#: pytest's own marks and well-known plugins' (plus the harness's `scenario`): as a tag they would change
#: how pytest runs the item (tags: [xfail] turned a failing scenario green). The plugin adds every mark
#: registered in the session.
PYTEST_MARKS = frozenset({
    "skip", "skipif", "xfail", "parametrize", "usefixtures", "filterwarnings", "tryfirst", "trylast",
    "timeout", "flaky", "forked", "xdist_group", "asyncio", "anyio", "hypothesis", "scenario"})


# ---------------------------------------------------------------------------------------------
# public API

def load_file(path: str | os.PathLike, *, reserved_tags: Iterable[str] = ()) -> list[Scenario]:
    """Load every scenario in one file; marks carry the path exactly as given."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise ScenarioError(f"cannot read the scenario file: {e.strerror or e}",
                            "check the path and its permissions", file=name) from None
    return load_text(raw, name, reserved_tags=reserved_tags)


def load_text(text: str | bytes, filename: str | os.PathLike, *,
              reserved_tags: Iterable[str] = ()) -> list[Scenario]:
    """Load scenarios from text already in memory; `filename` is used in marks and for the default name.

    `reserved_tags` are mark names a tag may not take (the marks registered in a pytest session), on top
    of PYTEST_MARKS.
    """
    return _Loader(os.fspath(filename), text, PYTEST_MARKS | set(reserved_tags)).load()


def check_unique_names(scenarios: Iterable[Scenario]) -> None:
    """Scenario names are test ids: raise at the second scenario that reuses a name."""
    seen: dict[str, Scenario] = {}
    for sc in scenarios:
        first = seen.setdefault(sc.name, sc)
        if first is sc:
            continue
        mark = sc.mark or Mark(sc.file, 1, 1)
        raise ScenarioError(
            f"duplicate scenario name '{sc.name}'",
            f"'{sc.name}' is already the scenario at {first.mark or first.file}; names are test ids, "
            "so rename one (a single-scenario file is named after its file stem)",
            file=mark.file, line=mark.line, column=mark.column, snippet=snippet_from_file(mark.file, mark.line))


# ---------------------------------------------------------------------------------------------
# one file

class _Loader:
    """One scenario file's load: its YAML tree, the schema, the semantic checks, then the model objects."""

    def __init__(self, filename: str, text: str | bytes, reserved_tags: frozenset[str] = PYTEST_MARKS):
        self.tree = YamlTree(filename, text)
        self.reserved_tags = reserved_tags
        self.data: Any = None

    def load(self) -> list[Scenario]:
        root = self.tree.compose_file(too_large="a scenario is a few KiB of YAML; split it, or check that this is a "
                                      "scenario file",
                                      empty=f"a scenario needs at least `guards:` and `steps:`; see {DOC}")
        try:
            self.data = self.tree.plain_data(root)
            self.validate(self.data)
            parts = Semantics(self.tree, self.data, self.reserved_tags).checked_parts()
            return [self.scenario(part) for part in parts]
        except RecursionError:   # a safety net: yaml_tree's limits should make this unreachable
            raise self.tree.error(1, 1, "the file nests too deeply for the loader",
                                  "scenarios are shallow; look for runaway nesting, aliases or merges") from None

    def validate(self, data: Any) -> None:
        schema.validate(self.tree, data)

    # -- model -----------------------------------------------------------------------------

    def scenario(self, part: dict) -> Scenario:
        base = part["base"]
        sc = value_at(self.data, base)
        devices = value_at(self.data, part.get("devices"), {})
        networks = value_at(self.data, part.get("networks"), {})
        return Scenario(
            name=sc.get("name") or Path(self.tree.file).stem,
            file=self.tree.file,
            guards=sc["guards"],
            tags=list(sc.get("tags", [])),
            requires=copy.deepcopy(sc.get("requires", {})),
            devices={sym: HostDevice(sym, dev["kind"], self.tree.mark(part["devices"] + (sym,), key=True))
                     for sym, dev in devices.items()},
            networks={sym: Network(sym, net["forward"], list(net.get("vfs", [])), net.get("pf"),
                                   net.get("create", True), self.tree.mark(part["networks"] + (sym,), key=True))
                      for sym, net in networks.items()},
            domain=self.domain(part.get("domain")),
            steps=[self.step(entry, base + ("steps", i)) for i, entry in enumerate(sc["steps"])],
            mark=self.tree.mark(base),
        )

    def domain(self, path: tuple | None) -> Domain:
        if path is None:
            return Domain()
        spec = value_at(self.data, path)
        return Domain(type=spec.get("type", "auto"), machine=spec.get("machine", "q35"),
                      memory_mib=int(spec.get("memory_mib", 128)), vcpus=int(spec.get("vcpus", 1)),
                      guest=spec.get("guest", False), root_ports=int(spec.get("root_ports", 8)),
                      devices=[self.device(dev, path + ("devices", i))
                               for i, dev in enumerate(spec.get("devices", []))],
                      xml=spec.get("xml"), mark=self.tree.mark(path))

    def device(self, dev: dict, path: tuple) -> Device:
        mark = self.tree.mark(path)
        if "xml" in dev:
            return Device(dev["id"], "xml", {"xml": dev["xml"]}, mark)
        kind = "interface" if "interface" in dev else "hostdev"
        return Device(dev[kind]["id"], kind, copy.deepcopy(dev[kind]), mark)

    def step(self, entry: dict, path: tuple) -> Step:
        action = next(k for k in entry if k in actions())
        arg = entry[action]
        step = Step(action=action, flags=entry.get("flags", "live"), expect=copy.deepcopy(entry.get("expect", {})),
                    name=entry.get("name"), timeout=float(entry["timeout"]) if "timeout" in entry else None,
                    mark=self.tree.mark(path))
        if action == "attach":
            step.arg = self.device(arg, path + ("attach",))
        elif action == "update":
            step.arg = dict(arg)
        elif action == "repeat":
            step.times = int(arg["times"])
            step.steps = [self.step(entry, path + ("repeat", "steps", i)) for i, entry in enumerate(arg["steps"])]
        else:
            step.arg = arg
        return step
