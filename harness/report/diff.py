"""`harness diff RUN_A RUN_B`: every outward difference between two runs of the same scenarios.

Typically the same catalog on two libvirt versions. Both runs may have passed: the diff is about what
libvirt *did*, step by step, not about verdicts alone. Pure functions over run folders on disk:

    load_run -> compare (align scenarios by name, steps by index) -> apply_acks -> text / JSON / HTML

What is compared, per scenario and step (docs/diff-acks.md has the full list of kinds):
  verdicts of the scenario and of each step, the step text (a changed scenario file), aliases per device id
  (summary.json), libvirt's error text, QEMU's device ids (step-NN-*-qemu-ids.txt), and the elements and
  attributes of every <interface> and <hostdev> in the live and inactive XML (step-NN-*-{live,inactive}.xml),
  device by device.

Devices are matched by scenario device id, never by position: the step's aliases in summary.json name the
live XML's devices; the harness's generated MACs are recomputed from the domain name and the device id
(xmlbuild.Resolved.mac_for: sha256("<domain name>:<id>")), which names interfaces in the inactive XML too;
a plain <hostdev> there is known by its source address as seen in the live XML of the same run.

What differs on every run by construction is normalised before comparing (so two runs of one libvirt
version give no difference): the run tag in domain and network names (hx-<scenario>-gw0<tag>-<hex> ->
hx-<scenario>-{run}; shared networks hx-shared-nat-{run}), generated MACs ({mac:<id>}), UUIDs (portid),
the leased VF's PCI address in <source><address> and in error texts ({leased}), the leased host NIC of a
macvtap (<source dev>), and kernel-numbered names (vnetN, macvtapN, virbrN -> vnet{N} ...). The guest-side
<address> of a device is NOT normalised: libvirt chooses it, so a change there is outward.

Known, reviewed differences live in known-differences.yaml at the top of the repository (docs/diff-acks.md):
a matching difference is counted as acknowledged and not shown; an acknowledgement that matches nothing
although its scenario was in both runs is reported as stale.
"""
from __future__ import annotations

import hashlib
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from harness import paths
from harness.errors import HarnessError

FORMAT = "harness-diff/1"
DEFAULT_ACKS = "known-differences.yaml"
DOC = "docs/diff-acks.md"

#: Every kind of difference, in the order a person reads them within a step.
KINDS = ("scenario", "verdict", "step-text", "step", "error", "alias", "qemu-id", "state", "device", "xml")
SCENARIO_KINDS = ("scenario", "verdict")

#: Shown for a value that is not there at all (a device, an attribute, a step that did not run).
ABSENT = None


# --- loading -------------------------------------------------------------------------------------

@dataclass
class StepView:
    index: int                       # 0-based, as in summary.json
    text: str
    verdict: str                     # "passed" / "failed [check]"
    aliases: dict[str, str | None]
    error: str | None                # libvirt's message (raw; normalised when compared)
    files: dict[str, Path]           # "live" / "inactive" / "qemu-ids" -> artefact
    xml: dict[str, ET.Element | None] = field(default_factory=dict)   # "live" / "inactive", parsed
    qemu_ids: set[str] | None = None


@dataclass
class ScenarioView:
    name: str
    record: dict
    verdict: str                     # "passed", "failed at step 2 [libvirt-error]", "skipped", ...
    steps: list[StepView]
    artefacts: Path | None           # None: the folder is gone or was never written


@dataclass
class Run:
    path: Path
    meta: dict
    scenarios: dict[str, ScenarioView]
    leased_pci: set[str] = field(default_factory=set)   # every leased PCI address seen in the run's XML


def _fail(path: Path, what: str, hint: str) -> HarnessError:
    return HarnessError(f"{path}: {what}", hint=hint)


def load_run(path: Path | str) -> Run:
    """A run folder as written by the plugin (summary.json + artefacts/). Bad input is a HarnessError that
    names the folder or file and the fix."""
    path = Path(path)
    if not path.is_dir():
        raise _fail(path, "no such run folder", f"give a folder under results/ ({nearby(path)})")
    summary_file = path / "summary.json"
    if not summary_file.is_file():
        if (path / "records").is_dir() or (path / "meta.json").is_file():
            raise _fail(path, "has no summary.json yet: the run is still being written, or it was interrupted",
                        "wait for the run to finish (or diff a finished run)")
        raise _fail(path, "is not a run folder (no summary.json)", f"give a folder under results/ ({nearby(path)})")
    try:
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _fail(summary_file, f"cannot be read as JSON ({e})", "the run's summary.json is damaged; "
                    "diff another run, or rewrite it from the run's records") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("scenarios"), list):
        raise _fail(summary_file, "has no 'scenarios' list", "this is not a summary.json the harness wrote")
    scenarios = {}
    for rec in summary["scenarios"]:
        if not isinstance(rec, dict) or not isinstance(rec.get("scenario"), str):
            raise _fail(summary_file, "holds a scenario record without a name", "the file is damaged")
        scenarios[rec["scenario"]] = _scenario(path, rec)
    run = Run(path=path, meta=summary.get("meta") or {}, scenarios=scenarios)
    for sv in scenarios.values():
        for st in sv.steps:
            for kind in ("live", "inactive"):
                for el in _devices(st.xml.get(kind)):
                    a = _source_pci(el)
                    if a:
                        run.leased_pci.add(a)
    return run


def nearby(path: Path) -> str:
    """A hint for a run folder that is not there: the closest name next to it, or the newest runs."""
    parent = path.parent if path.parent.is_dir() else None
    if parent is None:
        return f"{path.parent} does not exist either"
    runs = sorted(p.name for p in parent.iterdir() if (p / "summary.json").is_file())
    if not runs:
        return f"{parent} holds no run folder (runs are folders under results/)"
    import difflib
    close = difflib.get_close_matches(path.name, runs, n=1, cutoff=0.5)
    return f"did you mean {parent / close[0]}?" if close else f"runs there: {', '.join(runs[-4:])}"


def _scenario(run_dir: Path, rec: dict) -> ScenarioView:
    art = None
    if isinstance(rec.get("artefacts"), str):
        p = (run_dir / rec["artefacts"]).resolve()
        if p.is_relative_to(run_dir.resolve()) and p.is_dir():
            art = p
    files = sorted(art.iterdir()) if art else []
    failure = rec.get("failure") or {}
    steps = []
    for s in rec.get("steps") or []:
        if not isinstance(s, dict) or not isinstance(s.get("index"), int):
            continue
        i = s["index"]
        prefix = f"step-{i + 1:02d}-"
        found = {}
        for f in files:
            if f.name.startswith(prefix):
                for kind in ("live", "inactive"):
                    if f.name.endswith(f"-{kind}.xml"):
                        found[kind] = f
                if f.name.endswith("-qemu-ids.txt"):
                    found["qemu-ids"] = f
        error = s.get("error")
        if error is None and failure.get("step_index") == i:
            error = failure.get("libvirt_error")
        verdict = str(s.get("verdict", "passed"))
        if verdict == "failed" and failure.get("step_index") == i and failure.get("check"):
            verdict += f" [{failure['check']}]"
        steps.append(StepView(index=i, text=str(s.get("step", "")), verdict=verdict,
                              aliases=dict(s.get("aliases") or {}), error=error, files=found,
                              xml={k: _xml(found.get(k)) for k in ("live", "inactive")},
                              qemu_ids=_qemu_ids(found.get("qemu-ids"))))
    return ScenarioView(name=rec["scenario"], record=rec, verdict=_verdict(rec), steps=steps, artefacts=art)


def _verdict(rec: dict) -> str:
    """The scenario's outcome as one comparable string. A pass after a retry counts as a pass (flakiness is
    `harness report`'s business); a skip reason names the target's version, so only "skipped" is compared."""
    v = str(rec.get("verdict"))
    f = rec.get("failure") or {}
    if v == "failed" and isinstance(f.get("step_index"), int):
        return f"failed at step {f['step_index'] + 1} [{f.get('check')}]"
    if v == "error":
        return f"error [{f.get('check') or 'infrastructure'}]"
    return v


def _xml(path: Path | None) -> ET.Element | None:
    """A parsed artefact; an unreadable or damaged one counts as missing (a full results disk can leave one)."""
    if path is None:
        return None
    try:
        return ET.fromstring(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ET.ParseError):
        return None


def _devices(root: ET.Element | None) -> list[ET.Element]:
    devs = root.find("devices") if root is not None else None
    return [el for el in devs if el.tag in ("interface", "hostdev")] if devs is not None else []


def _pci(addr: ET.Element) -> str | None:
    try:
        d, b, s, f = (int(addr.get(k, ""), 0) for k in ("domain", "bus", "slot", "function"))
    except ValueError:
        return None
    return f"{d:04x}:{b:02x}:{s:02x}.{f:x}"


def _source_pci(el: ET.Element) -> str | None:
    addr = el.find("source/address")
    if addr is None or addr.get("type", "pci") != "pci":
        return None
    return _pci(addr)


def _qemu_ids(path: Path | None) -> set[str] | None:
    if path is None:
        return None
    try:
        return {ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()}
    except (OSError, UnicodeDecodeError):
        return None


# --- normalising what differs on every run by construction --------------------------------------

#: The run tag in every object a run creates: hx-<scenario>-<worker><tag>-<hex> (runner.py), networks
#: <domain>-<sym> and hx-shared-<forward>-<worker><tag> (shared_networks.py).
_RUN_TAG = re.compile(r"\b(hx-[A-Za-z0-9._-]*?-)gw\d*[0-9a-f]{4}(?:-[0-9a-f]{4})?(?![0-9a-f])")
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I)
_NUMBERED = re.compile(r"\b(vnet|macvtap|macvlan|virbr|tap)\d+\b")
_MAC = re.compile(r"\b(?:[0-9a-f]{2}:){5}[0-9a-f]{2}\b", re.I)
_PCI_TEXT = re.compile(r"\b[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]\b", re.I)


def generated_macs(domain: str, dev_id: str, tries: int = 4) -> list[str]:
    """The MACs xmlbuild.Resolved.mac_for can give `dev_id` in a domain of this name (the first, or a
    later one after a collision)."""
    out = []
    for n in range(tries):
        h = hashlib.sha256((f"{domain}:{dev_id}" + (f":{n}" if n else "")).encode()).digest()
        out.append("52:54:00:%02x:%02x:%02x" % (h[0], h[1], h[2]))
    return out


@dataclass
class Norm:
    """What one scenario's run calls things: device ids by MAC and by device key, and the leased addresses."""
    domain: str | None = None
    macs: dict[str, str] = field(default_factory=dict)       # MAC (lower case) -> device id
    keys: dict[str, str] = field(default_factory=dict)       # source PCI of a plain hostdev -> device id
    leased: set[str] = field(default_factory=set)

    def text(self, value: str | None) -> str | None:
        """A libvirt message or attribute value with the per-run parts replaced."""
        if value is None:
            return None
        s = _MAC.sub(lambda m: "{mac:%s}" % self.macs[m.group(0).lower()] if m.group(0).lower() in self.macs
                     else m.group(0), value)
        s = _RUN_TAG.sub(r"\1{run}", s)
        s = _UUID.sub("{uuid}", s)
        s = _NUMBERED.sub(r"\1{N}", s)
        return _PCI_TEXT.sub(lambda m: "{leased}" if m.group(0).lower() in self.leased else m.group(0), s)


def _norm_for(run: Run, sv: ScenarioView) -> Norm:
    n = Norm(leased=run.leased_pci)
    ids = _device_ids(sv)
    for st in sv.steps:
        for kind in ("live", "inactive"):
            root = st.xml.get(kind)
            if root is not None and n.domain is None:
                n.domain = (root.findtext("name") or "").strip() or None
    if n.domain:
        for i in sorted(ids):
            for mac in generated_macs(n.domain, i):
                n.macs.setdefault(mac, i)
    for st in sv.steps:     # explicit MACs and plain hostdevs: named by the live XML's aliases
        by_alias = _inverse(st.aliases)
        for el in _devices(st.xml.get("live")):
            i = by_alias.get(_alias(el) or "")
            if i is None:
                continue
            mac = _mac(el)
            if mac:
                n.macs.setdefault(mac, i)
            elif _source_pci(el):
                n.keys.setdefault(_source_pci(el), i)
    return n


def _device_ids(sv: ScenarioView) -> set[str]:
    """Every device id the scenario may have: the steps' aliases name those in the XML the aliases came from;
    a config-only attach is named only by its step ("attach u1") and the scenario file."""
    ids: set[str] = set()
    for st in sv.steps:
        ids.update(st.aliases)
        words = st.text.split()
        if len(words) == 2 and words[0] in ("attach", "detach", "update", "wait-removed"):
            ids.add(words[1])
    f = sv.record.get("file")
    if isinstance(f, str) and f.endswith((".yaml", ".yml")):
        try:
            import yaml
            ids.update(_ids_in(yaml.safe_load((paths.REPO / f).read_text(encoding="utf-8"))))
        except Exception:   # the file is gone or changed since the run: the step texts still name most devices
            pass
    return ids


def _ids_in(data: Any) -> set[str]:
    if isinstance(data, dict):
        own = {data["id"]} if isinstance(data.get("id"), str) else set()
        return own.union(*(_ids_in(v) for v in data.values()))
    if isinstance(data, list):
        return set().union(*(_ids_in(v) for v in data))
    return set()


def _inverse(aliases: dict[str, str | None]) -> dict[str, str]:
    out: dict[str, str] = {}
    dup = set()
    for i, a in aliases.items():
        if a:
            if a in out:
                dup.add(a)
            out[a] = i
    return {a: i for a, i in out.items() if a not in dup}


def _alias(el: ET.Element) -> str | None:
    a = el.find("alias")
    return a.get("name") if a is not None else None


def _mac(el: ET.Element) -> str | None:
    m = el.find("mac")
    return (m.get("address") or "").lower() or None if m is not None else None


# --- one device as comparable facts ----------------------------------------------------------------

def _label(el: ET.Element, by_alias: dict[str, str], n: Norm, seen: dict[str, int]) -> str:
    alias, mac, pci = _alias(el), _mac(el), _source_pci(el)
    label = (by_alias.get(alias or "") or (mac and n.macs.get(mac)) or (pci and n.keys.get(pci))
             or (f"alias {alias}" if alias else None) or (f"mac {n.text(mac)}" if mac else None) or el.tag)
    seen[label] = seen.get(label, 0) + 1
    return label if seen[label] == 1 else f"{label}#{seen[label]}"


def device_facts(el: ET.Element, n: Norm, skip_alias: bool) -> dict[str, str]:
    """`path@attr` -> value and `<path>` -> element, for one device, normalised.

    Paths are relative to the device ("source/address@bus"); a repeated child is "tag[2]"."""
    out: dict[str, str] = {}
    leased_source = el.tag == "hostdev" or el.get("type") == "hostdev"

    def walk(e: ET.Element, path: str) -> None:
        out[f"<{path}>" if path else "<>"] = _short_element(e, n, path, leased_source, el)
        for k, v in e.attrib.items():
            out[f"{path}@{k}"] = _value(path, k, v, n, leased_source, el)
        text = (e.text or "").strip()
        if text:
            out[f"{path}#text"] = n.text(text)
        counts: dict[str, int] = {}
        for c in e:
            if not isinstance(c.tag, str) or (skip_alias and not path and c.tag == "alias"):
                continue
            counts[c.tag] = counts.get(c.tag, 0) + 1
            name = c.tag if counts[c.tag] == 1 else f"{c.tag}[{counts[c.tag]}]"
            walk(c, f"{path}/{name}" if path else name)

    walk(el, "")
    return out


def _value(path: str, attr: str, v: str, n: Norm, leased_source: bool, dev: ET.Element) -> str:
    if path == "source/address" and attr in ("domain", "bus", "slot", "function") and (
            leased_source or dev.find("source/address").get("type", "pci") == "pci"):
        return "{leased}"          # the VF this run leased (raw XML may pass only leased addresses)
    if path == "source" and attr == "dev" and dev.get("type") == "direct":
        return "{leased netdev}"   # the host NIC this run leased for the macvtap
    return n.text(v)


def _short_element(e: ET.Element, n: Norm, path: str, leased_source: bool, dev: ET.Element) -> str:
    attrs = "".join(f" {k}='{_value(path, k, v, n, leased_source, dev)}'" for k, v in e.attrib.items())
    return f"<{e.tag}{attrs}{'' if len(e) or (e.text or '').strip() else '/'}>"


def _snapshot(root: ET.Element | None, aliases: dict, n: Norm, skip_alias: bool) -> dict[str, dict[str, str]]:
    by_alias = _inverse(aliases)
    seen: dict[str, int] = {}
    return {_label(el, by_alias, n, seen): device_facts(el, n, skip_alias) for el in _devices(root)}


# --- comparing -----------------------------------------------------------------------------------

def _diff(scenario: str, kind: str, a, b, step: StepView | None = None, subject: str | None = None,
          step_b: StepView | None = None) -> dict:
    s = step or step_b
    return {"scenario": scenario, "step": s.index + 1 if s else None, "step_text": s.text if s else None,
            "kind": kind, "subject": subject, "a": a, "b": b}


def compare(a: Run, b: Run) -> tuple[list[dict], list[str]]:
    """All differences, in reading order, and notes (what could not be compared and why)."""
    out: list[dict] = []
    notes: list[str] = []
    for name in sorted(a.scenarios.keys() | b.scenarios.keys()):
        sa, sb = a.scenarios.get(name), b.scenarios.get(name)
        if sa is None or sb is None:
            out.append(_diff(name, "scenario", sa and sa.verdict, sb and sb.verdict))
            continue
        out.extend(compare_scenario(a, sa, b, sb, notes))
    return out, notes


def compare_scenario(ra: Run, a: ScenarioView, rb: Run, b: ScenarioView, notes: list[str]) -> list[dict]:
    out = []
    name = a.name
    na, nb = _norm_for(ra, a), _norm_for(rb, b)
    if a.verdict != b.verdict:
        d = _diff(name, "verdict", a.verdict, b.verdict)
        why = [f"{tag}: {n.text(_first_line(s.record))}" for tag, s, n in (("A", a, na), ("B", b, nb))
               if _first_line(s.record)]
        errs = [tag for tag, s in (("A", a), ("B", b)) if s.record.get("verdict") == "error"]
        if errs:
            why.insert(0, f"not libvirt's answer: the harness could not judge this scenario in {' and '.join(errs)}; "
                          "steps that did not run are not compared")
        if why:
            d["notes"] = why     # shown, never compared or matched: the failure in words
        out.append(d)
    artefacts = a.artefacts is not None and b.artefacts is not None
    if not artefacts and (a.steps or b.steps):
        gone = [str(r.path) for r, s in ((ra, a), (rb, b)) if s.artefacts is None]
        notes.append(f"{name}: no artefacts in {', '.join(gone)}: XML and QEMU ids not compared")
    steps_a = {s.index: s for s in a.steps}
    steps_b = {s.index: s for s in b.steps}
    for i in sorted(steps_a.keys() | steps_b.keys()):
        x, y = steps_a.get(i), steps_b.get(i)
        if x is None or y is None:
            if (a if x is None else b).record.get("verdict") != "error":
                out.append(_diff(name, "step", x and x.verdict, y and y.verdict, x, step_b=y))
            continue            # an infrastructure error stopped that run: its verdict line says so
        out.extend(compare_step(name, x, na, y, nb, artefacts))
    return out


def _first_line(rec: dict) -> str | None:
    """What went wrong, in one line: an infrastructure error's message, a failed step's libvirt error or check."""
    f = rec.get("failure") or {}
    text = f.get("message") if rec.get("verdict") == "error" else None
    if rec.get("verdict") == "skipped":
        text = rec.get("skip_reason")
    return str(text).splitlines()[0][:300] if text else None


def compare_step(name: str, x: StepView, na: Norm, y: StepView, nb: Norm, artefacts: bool) -> list[dict]:
    out = []

    def add(kind, va, vb, subject=None):
        out.append(_diff(name, kind, va, vb, x, subject))

    if x.text != y.text:
        add("step-text", x.text, y.text)
    if x.verdict != y.verdict:
        add("step", x.verdict, y.verdict)
    ea, eb = na.text(x.error), nb.text(y.error)
    if ea != eb:
        add("error", ea, eb)
    alias_changed = set()
    for i in sorted(x.aliases.keys() | y.aliases.keys()):
        va, vb = _alias_value(x.aliases, i), _alias_value(y.aliases, i)
        if va != vb:
            add("alias", va, vb, i)
            alias_changed.add(i)
    if not artefacts:
        return out
    qa, qb = x.qemu_ids, y.qemu_ids
    if (qa is None) != (qb is None):
        add("state", "present" if qa is not None else ABSENT, "present" if qb is not None else ABSENT, "QEMU ids")
    elif qa is not None:
        for q in sorted(qa ^ qb):
            add("qemu-id", "present" if q in qa else ABSENT, "present" if q in qb else ABSENT, q)
    # The step's aliases came from the live XML, or the inactive one when the domain was not running:
    # that XML's <alias> is already compared above.
    for kind in ("live", "inactive"):
        ra, rb = x.xml.get(kind), y.xml.get(kind)
        if (ra is None) != (rb is None):
            add("state", "present" if ra is not None else ABSENT, "present" if rb is not None else ABSENT,
                f"{kind} XML")
            continue
        if ra is None:
            continue
        skip_a = kind == "live" or x.xml.get("live") is None
        skip_b = kind == "live" or y.xml.get("live") is None
        da, db = _snapshot(ra, x.aliases, na, skip_a), _snapshot(rb, y.aliases, nb, skip_b)
        for dev in sorted(da.keys() | db.keys()):
            fa, fb = da.get(dev), db.get(dev)
            if fa is None or fb is None:
                if kind == "live" and dev in alias_changed:
                    continue        # the alias line already says it appeared or vanished
                add("device", fa and fa["<>"], fb and fb["<>"], f"{kind} {dev}")
                continue
            out.extend(_facts_diff(name, x, f"{kind} {dev}", fa, fb))
    return out


def _alias_value(aliases: dict, i: str) -> str | None:
    if i not in aliases:
        return ABSENT
    return aliases[i] if aliases[i] is not None else "(no alias)"


def _facts_diff(name: str, step: StepView, where: str, fa: dict, fb: dict) -> list[dict]:
    """Attributes that changed, appeared or vanished; a whole element once, not each of its attributes."""
    out = []
    gone_a = {k[1:-1] for k in fa if k.startswith("<") and k not in fb}
    gone_b = {k[1:-1] for k in fb if k.startswith("<") and k not in fa}

    def under(key: str, elements: set[str]) -> bool:
        path = key[1:-1] if key.startswith("<") else re.split(r"[@#]", key, maxsplit=1)[0]
        return any(path.startswith(e + "/") for e in elements) or (not key.startswith("<") and path in elements)

    for key in sorted(fa.keys() | fb.keys(), key=_fact_order):
        va, vb = fa.get(key), fb.get(key)
        if va == vb:
            continue
        if key.startswith("<"):
            if va is not None and vb is not None:
                continue            # same element, attributes compared one by one
            if under(key, gone_a if vb is None else gone_b):
                continue
            out.append(_diff(name, "xml", va, vb, step, f"{where}: {key}"))
            continue
        if under(key, gone_a | gone_b):
            continue
        out.append(_diff(name, "xml", va, vb, step, f"{where}: {key}"))
    return out


def _fact_order(key: str) -> tuple:
    path = key[1:-1] if key.startswith("<") else re.split(r"[@#]", key, maxsplit=1)[0]
    return (path, 0 if key.startswith("<") else 1, key)


# --- acknowledged differences --------------------------------------------------------------------

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
            parts.append(f"{_show(e.get('from'))} -> {_show(e.get('to'))}")
        return " ".join(str(p) for p in parts)


def load_acks(path: Path | str) -> list[Ack]:
    """The acknowledgements file, validated; a problem is a located error (file:line:column, hint, snippet)
    like the scenario loader's."""
    from harness.scenario import loader as L
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise L.ScenarioError(f"cannot read the acknowledgements file: {e.strerror or e}",
                              "check the path (default: known-differences.yaml at the top of the repository)",
                              file=name) from None
    ld = L._Loader(name, raw)
    if len(raw) > L.MAX_BYTES:
        raise ld.error(1, 1, f"the file is larger than {L.MAX_BYTES >> 10} KiB", "acknowledge fewer, broader differences")
    text = ld.decode()
    ld.lines = L._split_lines(text)
    root = ld.compose(text)
    if root is None:
        raise ld.error(1, 1, "the file is empty", f"start it with `acknowledged: []`; see {DOC}")
    data = ld.build(root, (), 0, set())
    rank = {"additionalProperties": 0, "required": 2, "anyOf": 2}
    errors = sorted(jsonschema.Draft202012Validator(ACK_SCHEMA).iter_errors(data),
                    key=lambda e: (ld.mark(tuple(e.absolute_path)).line, -len(e.absolute_path),
                                   rank.get(e.validator, 1)))
    if errors:
        raise _ack_error(ld, errors, data)
    acks = []
    for i, entry in enumerate(data["acknowledged"]):
        for key in ("subject", "from", "to"):
            v = entry.get(key)
            if isinstance(v, str) and v.startswith("re:"):
                try:
                    re.compile(v[3:])
                except re.error as e:
                    raise ld.at(("acknowledged", i, key), f"acknowledgement {i + 1} {key}: bad regular expression "
                                f"({e})", "write a Python regular expression after 're:', or drop 're:' for an "
                                "exact value") from None
        for side, spec in (entry.get("libvirt") or {}).items():
            try:
                L.parse_version_constraint(spec)
            except ValueError as e:
                raise ld.at(("acknowledged", i, "libvirt", side), f"acknowledgement {i + 1} libvirt.{side}: {e}",
                            "e.g. '>=11.0' or '>=9.0, <10'") from None
        if entry["kind"] in SCENARIO_KINDS and entry.get("step", "*") != "*":
            raise ld.at(("acknowledged", i, "step"), f"acknowledgement {i + 1}: kind '{entry['kind']}' is about "
                        "a whole scenario, it has no step", "remove `step:` (or use another kind)", key=True)
        acks.append(Ack(line=ld.mark(("acknowledged", i)).line, entry=entry, file=_shown_path(name)))
    return acks


def _ack_error(ld, errors: list, data: Any):
    from harness.scenario import loader as L
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
        return ld.at(path + (extra,), f"unknown key '{extra}' in {subject}",
                     L._did_you_mean(extra, allowed) + f"allowed: {', '.join(allowed)}", key=True)
    if v == "required":
        missing = next(k for k in e.validator_value if k not in inst)
        hint = (e.schema.get("properties", {}).get(missing) or {}).get("description") or described
        if missing == "acknowledged":
            hint = f"the file is a mapping with one key, `acknowledged:`, holding a list; see {DOC}"
        return ld.at(path, f"missing key '{missing}' in {subject}", hint)
    if v == "type":
        want = e.validator_value if isinstance(e.validator_value, list) else [e.validator_value]
        return ld.at(path, f"{subject}: expected {' or '.join(L._JSON_TYPES.get(t, t) for t in want)}, "
                     f"got {L._type_name(inst)}", described)
    if v in ("enum", "const"):
        allowed = [str(x) for x in (e.validator_value if v == "enum" else [e.validator_value])]
        return ld.at(path, f"{subject}: {L._short(inst)} is not allowed",
                     L._did_you_mean(str(inst), allowed) + f"allowed: {', '.join(allowed)}")
    if v == "anyOf":
        return ld.at(path, f"{subject}: {L._short(inst)} is not allowed", described)
    if v == "pattern":
        return ld.at(path, f"{subject}: {L._short(inst)} is not valid", described)
    if v == "minLength":
        return ld.at(path, f"{subject} is empty", described)
    if v == "maxLength":
        return ld.at(path, f"{subject} is too long (at most {e.validator_value} characters)", described)
    return ld.at(path, f"{subject}: {e.message}", described)


def _match(spec: Any, value: Any) -> bool:
    if isinstance(spec, str) and spec.startswith("re:"):
        return value is not None and re.search(spec[3:], str(value)) is not None
    return spec == value


def _applies(ack: Ack, a: Run, b: Run) -> bool:
    from harness.scenario.loader import version_satisfies
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


# --- the whole diff ------------------------------------------------------------------------------

def _run_info(run: Run) -> dict:
    m = run.meta
    return {"run_dir": str(run.path), "run_id": m.get("run_id"), "suite": m.get("suite"),
            "libvirt": m.get("libvirt"), "qemu": m.get("qemu")}


def diff_runs(a_dir: Path | str, b_dir: Path | str, acks_file: Path | str | None = None) -> dict:
    """Load both runs, compare, apply the acknowledgements (None: none) and return the diff as JSON data."""
    a, b = load_run(a_dir), load_run(b_dir)
    acks = load_acks(acks_file) if acks_file is not None else []
    diffs, notes = compare(a, b)
    diffs, stale = apply_acks(diffs, acks, a, b)
    new = [d for d in diffs if d["ack"] is None]
    both = sorted(a.scenarios.keys() & b.scenarios.keys())
    return {
        "format": FORMAT,
        "a": _run_info(a), "b": _run_info(b),
        "acks_file": _shown_path(acks_file) if acks_file is not None else None,
        "counts": {"differences": len(diffs), "new": len(new), "acknowledged": len(diffs) - len(new),
                   "stale_acks": len(stale), "scenarios_compared": len(both),
                   "only_in_a": len(a.scenarios.keys() - b.scenarios.keys()),
                   "only_in_b": len(b.scenarios.keys() - a.scenarios.keys())},
        "differences": diffs,
        "stale_acks": [{"file": k.file, "line": k.line, "ack": k.entry, "reason": k.entry["reason"]} for k in stale],
        "notes": notes,
    }


def _shown_path(p: Path | str) -> str:
    """A path as a person typed it: relative to the current folder when it is inside it."""
    try:
        return str(Path(p).resolve().relative_to(Path.cwd().resolve()))
    except (OSError, ValueError):
        return str(p)


def exit_code(result: dict) -> int:
    """0: nothing new; 1: differences nobody acknowledged."""
    return 1 if result["counts"]["new"] else 0


def default_acks() -> Path | None:
    p = paths.REPO / DEFAULT_ACKS
    return p if p.is_file() else None


# --- text ----------------------------------------------------------------------------------------

def _show(v: Any, width: int = 100, quote: bool = False) -> str:
    if v is None:
        return "(absent)"
    s = str(v)
    if len(s) > width:
        s = s[:width - 3] + "..."
    return json.dumps(s, ensure_ascii=False) if quote or " -> " in s or s != s.strip() or not s else s


def _run_line(tag: str, r: dict) -> str:
    return (f"{tag}: {r['run_dir']}  ({r.get('suite')}, libvirt {r.get('libvirt')}, QEMU {r.get('qemu')}; "
            f"run {r.get('run_id')})")


def _diff_line(d: dict) -> str:
    what = f"{d['subject']}: " if d["subject"] else ""
    q = d["kind"] in ("error", "step-text")
    return f"{d['kind']:<9} {what}{_show(d['a'], quote=q)} -> {_show(d['b'], quote=q)}"


def _not_run(d: dict) -> bool:
    return d["kind"] == "step" and (d["a"] is None) != (d["b"] is None)


def _grouped(diffs: list[dict]) -> list[dict | list[dict]]:
    """Consecutive steps that ran in one run only become one group (a scenario that stopped early)."""
    out: list = []
    for d in diffs:
        prev = out[-1] if out else None
        if _not_run(d) and isinstance(prev, list) and prev[-1]["scenario"] == d["scenario"] \
                and (prev[-1]["a"] is None) == (d["a"] is None) and prev[-1]["step"] + 1 == d["step"]:
            prev.append(d)
        else:
            out.append([d] if _not_run(d) else d)
    return out


def render_text(result: dict, show_acknowledged: bool = False) -> str:
    c = result["counts"]
    lines = [_run_line("A", result["a"]), _run_line("B", result["b"]),
             f"scenarios in both runs: {c['scenarios_compared']}"
             + (f", only in A: {c['only_in_a']}" if c["only_in_a"] else "")
             + (f", only in B: {c['only_in_b']}" if c["only_in_b"] else ""), ""]
    shown = [d for d in result["differences"] if show_acknowledged or d["ack"] is None]
    only = {"a": [], "b": []}
    current = (None, None)
    for d in _grouped(shown):
        if isinstance(d, dict) and d["kind"] == "scenario" and d["ack"] is None:
            only["a" if d["b"] is None else "b"].append(d["scenario"])
            continue
        first = d[0] if isinstance(d, list) else d
        if current[0] != first["scenario"]:
            lines.append(first["scenario"])
            current = (first["scenario"], None)
        if isinstance(d, list):
            ran, missing = ("A", "B") if first["b"] is None else ("B", "A")
            steps = f"step {first['step']}" if len(d) == 1 else f"steps {first['step']}-{d[-1]['step']}"
            verdicts = sorted({x["a"] if ran == "A" else x["b"] for x in d})
            lines.append(f"  {steps} not run in {missing} ({' / '.join(verdicts)} in {ran})")
            current = (first["scenario"], None)
            continue
        if d["step"] is not None and current[1] != d["step"]:
            lines.append(f"  step {d['step']} {d['step_text'] or ''}".rstrip())
            current = (d["scenario"], d["step"])
        indent = "    " if d["step"] is not None else "  "
        mark = f"  [acknowledged: {d['ack']['reason']}]" if d["ack"] else ""
        lines.append(indent + _diff_line(d) + mark)
        for note in d.get("notes") or []:
            lines.append(indent + " " * 10 + (note if len(note) <= 160 else note[:157] + "..."))
    for side, tag in (("a", "A"), ("b", "B")):
        if only[side]:
            lines.append(f"only in {tag} ({len(only[side])}): {', '.join(only[side])}")
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    if lines[-1] != "":
        lines.append("")
    acked = c["acknowledged"]
    fresh = [d for d in result["differences"] if d["ack"] is None]
    inside = [d for d in fresh if d["kind"] != "scenario"]
    one_run = len(fresh) - len(inside)
    parts = []
    if inside:
        n = len({d["scenario"] for d in inside})
        parts.append(f"{len(inside)} new difference{'s' * (len(inside) != 1)} in {n} scenario{'s' * (n != 1)}")
    if one_run:
        parts.append(f"{one_run} scenario{'s' * (one_run != 1)} in one run only")
    tail = ", ".join(parts) if parts else "no new differences"
    if result.get("acks_file"):
        tail += f", {acked} acknowledged ({result['acks_file']})"
    lines.append(tail)
    if result["stale_acks"]:
        lines.append(f"{len(result['stale_acks'])} stale acknowledgement(s): they match nothing in these runs "
                     "any more; remove or update them:")
        for s in result["stale_acks"]:
            e = s["ack"]
            desc = Ack(line=s["line"], entry=e, file=s["file"]).describe()
            lines.append(f"  {s['file']}:{s['line']}: {desc} ({s['reason']})")
    return "\n".join(lines) + "\n"


def json_name(a_dir: Path | str) -> str:
    """Where the JSON goes by default: next to RUN_B, named after RUN_A."""
    return f"diff-{Path(a_dir).resolve().name}.json"
