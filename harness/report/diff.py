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
Modules: diff_model.py (run views, normalisation), diff_acks.py (acknowledgements), this one (comparing,
the whole diff, text).
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from harness import paths
from harness.report.diff_acks import Ack, apply_acks, load_acks
from harness.report.diff_model import (
    ABSENT,
    DEFAULT_ACKS,
    FORMAT,
    Norm,
    Run,
    ScenarioView,
    StepView,
    alias_of,
    devices,
    inverse,
    load_run,
    mac_of,
    norm_for,
    show,
    shown_path,
    source_pci,
)

# --- one device as comparable facts ----------------------------------------------------------------

def _label(el: ET.Element, by_alias: dict[str, str], n: Norm, seen: dict[str, int]) -> str:
    alias, mac, pci = alias_of(el), mac_of(el), source_pci(el)
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
    by_alias = inverse(aliases)
    seen: dict[str, int] = {}
    return {_label(el, by_alias, n, seen): device_facts(el, n, skip_alias) for el in devices(root)}


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
    na, nb = norm_for(ra, a), norm_for(rb, b)
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
        "acks_file": shown_path(acks_file) if acks_file is not None else None,
        "counts": {"differences": len(diffs), "new": len(new), "acknowledged": len(diffs) - len(new),
                   "stale_acks": len(stale), "scenarios_compared": len(both),
                   "only_in_a": len(a.scenarios.keys() - b.scenarios.keys()),
                   "only_in_b": len(b.scenarios.keys() - a.scenarios.keys())},
        "differences": diffs,
        "stale_acks": [{"file": k.file, "line": k.line, "ack": k.entry, "reason": k.entry["reason"]} for k in stale],
        "notes": notes,
    }


def exit_code(result: dict) -> int:
    """0: nothing new; 1: differences nobody acknowledged."""
    return 1 if result["counts"]["new"] else 0


def default_acks() -> Path | None:
    p = paths.REPO / DEFAULT_ACKS
    return p if p.is_file() else None


# --- text ----------------------------------------------------------------------------------------

def _run_line(tag: str, r: dict) -> str:
    return (f"{tag}: {r['run_dir']}  ({r.get('suite')}, libvirt {r.get('libvirt')}, QEMU {r.get('qemu')}; "
            f"run {r.get('run_id')})")


def _diff_line(d: dict) -> str:
    what = f"{d['subject']}: " if d["subject"] else ""
    q = d["kind"] in ("error", "step-text")
    return f"{d['kind']:<9} {what}{show(d['a'], quote=q)} -> {show(d['b'], quote=q)}"


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
