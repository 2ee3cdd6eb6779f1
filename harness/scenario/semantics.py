"""The rules of a scenario that the schema cannot express, checked across the whole file.

Why a module of its own: after the schema, a file can still name a device, network or id it never
defines, use an id before its attach step, attach inside a repeat without detaching, repeat past
MAX_RUN_STEPS, hold a regex that would crash, tag a scenario with a pytest mark, or put keys where
they have no effect. Every such problem is collected, and the one earliest in the file is raised,
so that fixing a file top to bottom never jumps around. Raw XML has its own checks (raw_xml.py).
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.scenario.raw_xml import RawXmlCheck
from harness.scenario.schema import actions
from harness.scenario.wording import did_you_mean, path_label
from harness.scenario.yaml_tree import ScenarioError, YamlTree, value_at

#: Limits on what a scenario may ask of the run and of `re` (the file's own limits are in yaml_tree.py).
#: Steps one run may execute, repeats expanded (schema: repeat.times <= 1000; bench.soak runs 200 cycles = 400 steps).
MAX_RUN_STEPS = 2_000
MAX_REGEX_DEPTH = 20    # nested groups in an expect.error regex

_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
_INTERFACE_KEY_TYPES = {   # keys that only make sense for some interface types
    "device": ("hostdev",), "managed": ("hostdev",), "network": ("network",), "bridge": ("bridge",),
    "dev": ("direct",), "model": ("network", "bridge", "user", "ethernet", "direct"),
}
_DOMAIN_XML_COMPATIBLE = {"xml", "guest"}
_FLAGGED_ACTIONS = ("attach", "detach", "update")


class Semantics:
    """Cross-references the schema cannot express, for every scenario in one file.

    Every problem found is collected; the one earliest in the file is raised, so fixing errors
    top to bottom never jumps around.
    """

    def __init__(self, tree: YamlTree, data: dict, reserved_tags: frozenset[str]):
        self.tree = tree
        self.data = data
        self.reserved_tags = reserved_tags
        self.problems: list[ScenarioError] = []

    def problem(self, path: tuple, message: str, hint: str, key: bool = False) -> None:
        self.problems.append(self.tree.at(path, message, hint, key))

    def raise_first(self) -> None:
        if self.problems:
            raise min(self.problems, key=lambda p: (p.line, p.column))

    # -- per file --------------------------------------------------------------------------

    def checked_parts(self) -> list[dict[str, tuple]]:
        """Where each scenario's parts live (see `sections`) once the whole file is checked; the problem
        earliest in the file is raised instead if there is any."""
        if "scenarios" in self.data:
            parts = [self.sections(("scenarios", i), sc) for i, sc in enumerate(self.data["scenarios"])]
            self.check_names(parts)
        else:
            parts = [self.sections((), self.data)]
            stem = Path(self.tree.file).stem
            if "name" not in self.data and not _NAME.fullmatch(stem):
                self.problem((), f"the scenario is named after the file stem '{stem}', which is not a valid name",
                             "rename the file (lowercase letters, digits and '-') or add `name: ...`")
        for part in parts:
            self.check(part)
        self.raise_first()
        return parts

    def sections(self, base: tuple, sc: dict) -> dict[str, tuple]:
        """Where each part of this scenario lives: its own key, else the file's shared one."""
        out = {"base": base}
        for key in ("devices", "networks", "host", "domain"):
            if key in sc:
                out[key] = base + (key,)
            elif base and key in self.data:
                out[key] = (key,)
        return out

    def get(self, path: tuple | None, default: Any = None) -> Any:
        return value_at(self.data, path, default)

    def check_names(self, parts: list[dict]) -> None:
        first: dict[str, tuple] = {}
        for part in parts:
            path = part["base"] + ("name",)
            name = self.get(path)
            if name in first:
                line = self.tree.mark(first[name]).line
                self.problem(path, f"duplicate scenario name '{name}'",
                             f"'{name}' is already used at line {line}; names are test ids and must be unique")
            first.setdefault(name, path)

    # -- per scenario ----------------------------------------------------------------------

    def check(self, part: dict) -> None:
        """One scenario's references; sets the per-scenario lookups the check_* methods use."""
        self.devices = self.get(part.get("devices"), {})
        self.networks = self.get(part.get("networks"), {})
        self.host = self.get(part.get("host"), {})
        for i, tag in enumerate(self.get(part["base"]).get("tags", [])):
            if tag in self.reserved_tags:
                self.problem(part["base"] + ("tags", i), f"tag '{tag}' is a pytest mark",
                             f"as a tag it would change how pytest runs the scenario (e.g. xfail turns a failure "
                             f"green, skip hides it): rename the tag (e.g. 'hx_{tag}')")
        for sym, net in self.networks.items():
            self.check_network(sym, net, part["networks"] + (sym,))
        steps_path = part["base"] + ("steps",)
        dom_path = part.get("domain")
        domain = self.get(dom_path, {})
        at_start = [(dev, dom_path + ("devices", i)) for i, dev in enumerate(domain.get("devices", []))]
        attached = [(step["attach"], p + ("attach",)) for step, p in _walk_steps(self.get(steps_path), steps_path)
                    if "attach" in step]
        self.ids: dict[str, tuple] = {}    # device id -> path of its definition
        for dev, path in at_start + attached:
            self.check_device(dev, path)
        raw_xml = RawXmlCheck(self.tree, self.devices, self.networks, self.ids, self.host)
        if "xml" in domain:
            for key in domain:
                if key not in _DOMAIN_XML_COMPATIBLE:
                    self.problem(dom_path + (key,), f"domain '{key}' has no effect next to domain.xml",
                                 "raw domain XML replaces type, machine, memory_mib, vcpus, root_ports and "
                                 "devices: put them into the XML, or drop `xml`", key=True)
            self.problems += raw_xml.problems(domain["xml"], dom_path + ("xml",))
        for dev, path in at_start + attached:
            if "xml" in dev:
                self.problems += raw_xml.problems(dev["xml"], path + ("xml",))
        self.defined = {_device_id(dev) for dev, _ in at_start}   # grows as check_steps walks the attaches
        self.check_steps(self.get(steps_path), steps_path)
        self.check_run_length(self.get(steps_path), steps_path)

    def check_network(self, sym: str, net: dict, path: tuple) -> None:
        if net["forward"] != "hostdev":
            for key in ("vfs", "pf"):
                if key in net:
                    self.problem(path + (key,), f"network '{sym}': '{key}' only applies to forward: hostdev",
                                 f"set `forward: hostdev` or remove '{key}'", key=True)
            return
        if ("vfs" in net) == ("pf" in net):
            self.problem(path, f"hostdev network '{sym}' needs exactly one of `vfs` and `pf`",
                         "a VF pool is either `vfs: [vf1, vf2]` (listed VFs) or `pf: pf1` (a whole PF)")
        if "pf" in net:
            self.ref_device(net["pf"], path + ("pf",), ("pf",), f"network '{sym}' pf",
                            "a pool by PF needs a `kind: pf` device (its VFs are leased with it)")
        for i, vf in enumerate(net.get("vfs", [])):
            self.ref_device(vf, path + ("vfs", i), ("vf",), f"network '{sym}' vfs",
                            "a hostdev pool lists `kind: vf` devices; for a whole PF use `pf:`")

    def ref_device(self, sym: str, path: tuple, kinds: tuple[str, ...], what: str, why: str) -> None:
        """`sym` must be a host device under `devices:` of one of `kinds`; `why` explains the kinds."""
        if sym not in self.devices:
            self.problem(path, f"{what}: undefined device '{sym}'",
                         did_you_mean(sym, list(self.devices)) + "host devices defined under `devices:`: "
                         f"{', '.join(self.devices) or 'none'}; add e.g. `devices: {{{sym}: {{kind: {kinds[0]}}}}}`")
        elif self.devices[sym]["kind"] not in kinds:
            self.problem(path, f"{what}: device '{sym}' is kind {self.devices[sym]['kind']}, "
                         f"needs {' or '.join(kinds)}", why)

    def check_device(self, dev: dict, path: tuple) -> None:
        if "xml" in dev:
            kind, spec, id_path = "xml", dev, path + ("id",)
        else:
            kind = "interface" if "interface" in dev else "hostdev"
            spec, id_path = dev[kind], path + (kind, "id")
            if "id" in dev:
                self.problem(path + ("id",), f"'id' belongs inside the {kind} mapping",
                             f"write `{kind}: {{id: {dev['id']}, ...}}`", key=True)
        dev_id = spec["id"]
        if dev_id in self.ids:
            line = self.tree.mark(self.ids[dev_id]).line
            self.problem(id_path, f"duplicate device id '{dev_id}'",
                         f"'{dev_id}' is already defined at line {line}; ids name one device for the whole "
                         "scenario (including every attach and repeat): pick another id")
        self.ids.setdefault(dev_id, id_path)
        if kind == "hostdev":
            self.ref_device(spec["device"], path + ("hostdev", "device"), ("vf", "e1000e"), f"hostdev '{dev_id}'",
                            "a plain hostdev passes through a `kind: vf` or `kind: e1000e` device; "
                            "PFs are only leased for network pools")
        elif kind == "interface":
            itype = spec["type"]
            for key, types in _INTERFACE_KEY_TYPES.items():
                if key in spec and itype not in types:
                    self.problem(path + ("interface", key), f"'{key}' does not apply to a type {itype} interface",
                                 f"'{key}' is for type {' or '.join(types)}: remove it or change the type", key=True)
            if itype == "hostdev":
                self.ref_device(spec["device"], path + ("interface", "device"), ("vf",),
                                f"interface '{dev_id}'",
                                "an <interface type='hostdev'> passes through an SR-IOV VF: use a `kind: vf` device "
                                "(an e1000e goes in as a plain `hostdev: {id, device}`)")
            elif itype == "network":
                self.ref_network(spec["network"], path + ("interface", "network"), f"interface '{dev_id}'")

    def ref_network(self, sym: str, path: tuple, what: str) -> None:
        if sym not in self.networks:
            defined = ", ".join(self.networks) or "none"
            self.problem(path, f"{what}: undefined network '{sym}'",
                         did_you_mean(sym, list(self.networks)) + f"networks defined under `networks:`: {defined}; "
                         f"add e.g. `networks: {{{sym}: {{forward: nat}}}}`")

    def ref_id(self, dev_id: str, path: tuple, what: str, key: bool = False) -> None:
        """An id must be defined by the domain or by an attach at or before this step."""
        if dev_id in self.defined:
            return
        if dev_id in self.ids:
            line = self.tree.mark(self.ids[dev_id]).line
            self.problem(path, f"{what}: device '{dev_id}' is used before it is defined (line {line})",
                         "steps run in order: attach the device first", key)
            return
        known = sorted(self.ids)
        self.problem(path, f"{what}: undefined device id '{dev_id}'",
                     did_you_mean(dev_id, known) + f"ids come from domain.devices and attach steps; "
                     f"defined: {', '.join(known) or 'none'}", key)

    def check_steps(self, steps: list[dict], path: tuple) -> None:
        for i, step in enumerate(steps):
            spath = path + (i,)
            action = next(k for k in step if k in actions())
            label = path_label(spath, self.data)
            if "flags" in step and action not in _FLAGGED_ACTIONS:
                self.problem(spath + ("flags",), f"{label}: 'flags' does not apply to {action}",
                             f"flags apply to {', '.join(_FLAGGED_ACTIONS)}: remove it", key=True)
            arg = step[action]
            if action == "attach":
                self.defined.add(_device_id(arg))
            elif action in ("detach", "wait-removed"):
                self.ref_id(arg, spath + (action,), f"{label} {action}")
            elif action == "update":
                self.ref_id(arg["id"], spath + ("update", "id"), f"{label} update")
            elif action.startswith("network-"):
                self.ref_network(arg, spath + (action,), f"{label} {action}")
            elif action == "repeat":
                self.check_steps(arg["steps"], spath + ("repeat", "steps"))
                self.check_repeat(arg["steps"], spath + ("repeat", "steps"))
            self.check_expect(step.get("expect", {}), spath + ("expect",), label)

    def check_run_length(self, steps: list[dict], path: tuple) -> None:
        """Nested repeats multiply: blame the top-level repeat that takes the run past MAX_RUN_STEPS."""
        total = 0
        for i, step in enumerate(steps):
            total += _expanded([step])
            if total > MAX_RUN_STEPS:
                where = path + (i, "repeat", "times") if "repeat" in step else path + (i,)
                self.problem(where, f"{path_label(path + (i,), self.data)}: the run would execute {total} or more "
                             f"steps (repeats expanded), more than {MAX_RUN_STEPS}",
                             "lower repeat.times, or nest fewer repeats")
                return

    def check_repeat(self, body: list[dict], path: tuple) -> None:
        walked = list(_walk_steps(body, path))
        detached = {s["detach"] for s, _ in walked if "detach" in s}
        for s, p in walked:
            if "attach" in s and _device_id(s["attach"]) not in detached:
                dev_id = _device_id(s["attach"])
                self.problem(p + ("attach",), f"device '{dev_id}' is attached inside a repeat but not detached there",
                             "the next round would attach it again: add `- detach: " + dev_id + "` inside the repeat")

    def check_expect(self, expect: dict, path: tuple, label: str) -> None:
        for dev_id in expect.get("aliases", {}):
            self.ref_id(dev_id, path + ("aliases", dev_id), f"{label} expect.aliases", key=True)
        for i, dev_id in enumerate(expect.get("changes", [])):
            self.ref_id(dev_id, path + ("changes", i), f"{label} expect.changes")
        err = expect.get("error", "")
        if err.startswith("re:"):
            try:
                if _group_depth(err[3:]) > MAX_REGEX_DEPTH:   # else re.compile recurses, here or at run time
                    raise ValueError(f"groups nested more than {MAX_REGEX_DEPTH} deep")
                with warnings.catch_warnings():   # "possible nested set" and the like are not our business
                    warnings.simplefilter("ignore")
                    re.compile(err[3:])
            except (re.error, RecursionError, OverflowError, ValueError) as e:   # a{99999999999}: OverflowError
                why = "groups nested too deep" if isinstance(e, RecursionError) else str(e)
                self.problem(path + ("error",), f"{label} expect.error: bad regular expression: {why}",
                             "fix the regex after `re:` (libvirt's messages need simple ones), or drop `re:` to "
                             "match plain text")


def _device_id(dev: dict) -> str:
    return dev["id"] if "xml" in dev else (dev.get("interface") or dev["hostdev"])["id"]


def _expanded(steps: list[dict]) -> int:
    """How many steps a run executes, repeats expanded (capped, so nesting cannot blow up the count)."""
    total = 0
    for step in steps:
        total += 1 + (step["repeat"]["times"] * _expanded(step["repeat"]["steps"]) if "repeat" in step else 0)
        if total > MAX_RUN_STEPS:
            return total
    return total


def _group_depth(pattern: str) -> int:
    """How deep a regex's groups nest (escapes and [classes] skipped; a rough count is enough)."""
    depth = deepest = 0
    escaped = in_class = False
    for ch in pattern:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch in "()":
            depth = depth + 1 if ch == "(" else max(depth - 1, 0)
            deepest = max(deepest, depth)
    return deepest


def _walk_steps(steps: list[dict], path: tuple) -> Iterable[tuple[dict, tuple]]:
    """Every step with its path, repeat bodies included, in file order."""
    for i, step in enumerate(steps):
        yield step, path + (i,)
        if "repeat" in step:
            yield from _walk_steps(step["repeat"]["steps"], path + (i, "repeat", "steps"))
