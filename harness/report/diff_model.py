"""A run folder as `harness diff` sees it: scenario and step views, and the per-run noise normalised away.

Why a module of its own: loading (summary.json, step artefacts, XML) and normalisation (run tags,
generated MACs, UUIDs, leased VF addresses, kernel-numbered names) are what both the comparison
(harness/report/diff.py) and the acknowledgements (harness/report/diff_acks.py) stand on; the list of
difference kinds lives here for the same reason. See diff.py's docstring for what is compared.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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
                for el in devices(st.xml.get(kind)):
                    a = source_pci(el)
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


def devices(root: ET.Element | None) -> list[ET.Element]:
    devs = root.find("devices") if root is not None else None
    return [el for el in devs if el.tag in ("interface", "hostdev")] if devs is not None else []


def _pci(addr: ET.Element) -> str | None:
    try:
        d, b, s, f = (int(addr.get(k, ""), 0) for k in ("domain", "bus", "slot", "function"))
    except ValueError:
        return None
    return f"{d:04x}:{b:02x}:{s:02x}.{f:x}"


def source_pci(el: ET.Element) -> str | None:
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


def norm_for(run: Run, sv: ScenarioView) -> Norm:
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
        by_alias = inverse(st.aliases)
        for el in devices(st.xml.get("live")):
            i = by_alias.get(alias_of(el) or "")
            if i is None:
                continue
            mac = mac_of(el)
            if mac:
                n.macs.setdefault(mac, i)
            elif source_pci(el):
                n.keys.setdefault(source_pci(el), i)
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


def inverse(aliases: dict[str, str | None]) -> dict[str, str]:
    out: dict[str, str] = {}
    dup = set()
    for i, a in aliases.items():
        if a:
            if a in out:
                dup.add(a)
            out[a] = i
    return {a: i for a, i in out.items() if a not in dup}


def alias_of(el: ET.Element) -> str | None:
    a = el.find("alias")
    return a.get("name") if a is not None else None


def mac_of(el: ET.Element) -> str | None:
    m = el.find("mac")
    return (m.get("address") or "").lower() or None if m is not None else None


# --- showing values and paths to people ------------------------------------------------------------

def show(v: Any, width: int = 100, quote: bool = False) -> str:
    if v is None:
        return "(absent)"
    s = str(v)
    if len(s) > width:
        s = s[:width - 3] + "..."
    return json.dumps(s, ensure_ascii=False) if quote or " -> " in s or s != s.strip() or not s else s


def shown_path(p: Path | str) -> str:
    """A path as a person typed it: relative to the current folder when it is inside it."""
    try:
        return str(Path(p).resolve().relative_to(Path.cwd().resolve()))
    except (OSError, ValueError):
        return str(p)
