"""Mutation check of the catalog: the control build must pass every scenario, each mutant must be killed.

A mutant is a patch in mutants/ that puts a historical bug back into libvirt. For a libvirt version V a
file `NAME.V.patch` (e.g. A-foo.9.0.0.patch) replaces `NAME.patch` (written against 11.3.0).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from harness import paths
from harness.errors import HarnessError
from harness.libvirt_build import build as build_mod
from harness.libvirt_build import install as install_mod
from harness.libvirt_build import source
from harness.progress import say

MUTANTS_DIR = paths.REPO / "mutants"
VARIANT = re.compile(r"^(?P<name>.+?)\.(?P<ver>\d+\.\d+\.\d+)\.patch$")


def mutant_patches(version: str, directory: Path = MUTANTS_DIR) -> dict[str, Path]:
    """name -> patch for `version` (a variant NAME.<version>.patch wins over NAME.patch)."""
    base, variants = {}, {}
    for p in sorted(directory.glob("*.patch")):
        m = VARIANT.match(p.name)
        if m:
            variants.setdefault(m.group("name"), {})[m.group("ver")] = p
        else:
            base[p.name[:-len(".patch")]] = p
    out = {}
    for name in sorted(set(base) | set(variants)):
        if version in variants.get(name, {}):
            out[name] = variants[name][version]
        elif name in base:
            out[name] = base[name]
    return out


def run_scenarios(bed, out_dir: Path, k: str | None = None, timeout: float = 3600,
                  extra: list[str] | None = None) -> dict:
    """Run the catalog (or -k EXPR) against `bed`; results go to out_dir. Returns the summary + exit code."""
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pytest", "scenarios", "-p", "no:cacheprovider", "--bed", bed.name,
            "--no-bed-up", "--sweep", "-q", "-rfEs", "--results-dir", str(out_dir)]
    if k:
        argv += ["-k", k]
    argv += extra or []
    env = dict(os.environ, PYTHONPATH=str(paths.REPO))
    before = set(out_dir.glob("*/summary.json"))
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, cwd=paths.REPO, capture_output=True, text=True, timeout=timeout, env=env)
        rc, text = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = -1, f"scenario run timed out after {timeout:.0f} s\n{(e.stdout or b'')[-2000:]!r}"
    (out_dir / "pytest.log").write_text(text)
    new = sorted(set(out_dir.glob("*/summary.json")) - before, key=lambda p: p.stat().st_mtime)
    summary = json.loads(new[-1].read_text()) if new else None
    return {"rc": rc, "summary": summary, "summary_path": str(new[-1]) if new else None,
            "seconds": round(time.monotonic() - t0, 1), "output_tail": text[-3000:]}


def failure_text(f) -> str:
    """One readable text from a scenario record's failure: where, which check, libvirt's error/message."""
    if not f:
        return ""
    if not isinstance(f, dict):
        return str(f)
    head = f"step {f.get('step_index')} ({f.get('step')}): {f.get('check') or ''}".strip()
    body = f.get("libvirt_error") or f.get("message") or ""
    if not body and (f.get("expected") is not None or f.get("actual") is not None):
        body = f"expected {json.dumps(f.get('expected'))}, got {json.dumps(f.get('actual'))}"
    return f"{head}: {body}" if body else head


def verdicts(run: dict) -> dict:
    """{passed: [...], failed: {scenario: failure text}, skipped: [...], other: {...}} from a run."""
    out = {"passed": [], "failed": {}, "errors": {}, "skipped": [], "other": {}}
    s = run.get("summary")
    if not s:
        return out
    for sc in s.get("scenarios", []):
        v = sc.get("verdict")
        text = failure_text(sc.get("failure"))
        if v == "passed":
            out["passed"].append(sc["scenario"])
        elif v == "skipped":
            out["skipped"].append(sc["scenario"])
        elif v == "failed":
            out["failed"][sc["scenario"]] = text.strip()[:1500]
        elif v == "error":
            # harness/infrastructure trouble (bed unreachable, connection lost): not a verdict on libvirt
            out["errors"][sc["scenario"]] = text.strip()[:1500] or "error verdict (see the run's pytest.log)"
        else:
            out["other"][sc["scenario"]] = v
    return out


def _bed_for(suite: str, bed_name: str | None):
    from harness.bed import lifecycle
    if bed_name:
        return lifecycle.find(name=bed_name), False
    name = f"hx-mutants-{suite}"
    from harness.bed import state
    existed = state.load(name) is not None
    return lifecycle.up(suite=suite, name=name), not existed


def run(suite: str = "trixie", bed_name: str | None = None, k: str | None = None,
        debian_version: str | None = None, only: list[str] | None = None, keep_bed: bool = False,
        out: Path | None = None, skip_control: bool = False, build_only: bool = False,
        workers: int | str | None = None) -> int:
    """Build control + each mutant, run the scenarios on each, write results/mutants.json. Exit code.

    build_only: stop after the builds (no bed): warms the build cache ahead of bed time. (Not while a TCG
    bed runs scenarios: a concurrent build made the nested guest boot 3x slower.)
    """
    t0 = time.monotonic()
    base = source.prepare(suite, debian_version)
    version = (base / ".hx-ready").read_text().strip().split(":")[-1].rsplit("-", 1)[0]
    patches = mutant_patches(version)
    if only:
        patches = {n: p for n, p in patches.items() if any(o in n for o in only)}
    if not patches:
        raise HarnessError(f"no mutant patches for libvirt {version} in {MUTANTS_DIR}")
    out = out or (paths.results_dir() / "mutants.json")
    runs_dir = paths.results_dir() / "mutants"
    # build everything first: a patch that does not build is reported before any bed time is spent
    builds = {"control": build_mod.build(suite, debian_version=debian_version)}
    prev_control = None
    if skip_control:
        # reuse the control verdicts of the previous run (same source); reported as carried over
        try:
            prev_control = json.loads(out.read_text())["control"]
        except (OSError, ValueError, KeyError, TypeError):
            prev_control = None
        if not prev_control:
            raise HarnessError("--skip-control needs an earlier results/mutants.json with a control run")
        prev_control["carried_over"] = True
        del builds["control"]
    for name, p in patches.items():
        builds[name] = build_mod.build(suite, debian_version=debian_version, patches=[p])
    if build_only:
        for name, b in builds.items():
            print(f"{name:10} build {b.id}: {b.tarball} ({b.seconds.get('total', 'reused')} s)", flush=True)
        return 0
    bed, owned = _bed_for(suite, bed_name)
    report = {"suite": suite, "libvirt": version, "bed": bed.name, "k": k, "workers": workers,
              "control": prev_control, "mutants": {},
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    rc = 0
    if prev_control is not None:
        rc |= int(bool(prev_control.get("killed_by") or prev_control.get("errors") or not prev_control.get("passed")))
    if only and out.exists():
        # a partial run (--only) keeps the other mutants' latest results, marked as carried over
        try:
            prev = json.loads(out.read_text())
            for n, e in prev.get("mutants", {}).items():
                if n not in patches and n in mutant_patches(version):
                    e.setdefault("carried_over_from", prev.get("started"))
                    report["mutants"][n] = e
                    rc |= int(not e.get("killed"))
        except (ValueError, KeyError):
            pass
    try:
        for name, b in builds.items():
            say(f"mutants: {name} (build {b.id}): installing into bed {bed.name}")
            inst = install_mod.install(bed, b)
            proof = inst.pop("running")
            r = run_scenarios(bed, runs_dir / name, k=k, extra=["-n", str(workers)] if workers else None)
            v = verdicts(r)
            entry = {"build": b.id, "patch": b.patches, "k": k, "build_seconds": b.seconds, "install_seconds": inst,
                     "installed": {"id": proof.get("id"), "verified": proof.get("verified")},
                     "run": r["summary_path"], "run_seconds": r["seconds"], "pytest_rc": r["rc"],
                     "passed": v["passed"], "skipped": v["skipped"], "killed_by": v["failed"],
                     "errors": v["errors"], "other": v["other"]}
            if r["summary"] is None:
                entry["error"] = "the scenario run wrote no summary:\n" + r["output_tail"][-1500:]
            if name == "control":
                report["control"] = entry
                if v["failed"] or v["errors"] or entry.get("error") or not v["passed"]:
                    rc = 1
                    say(f"mutants: CONTROL FAILS {sorted(v['failed'])}", warn=True)
            else:
                entry["killed"] = bool(v["failed"])
                report["mutants"][name] = entry
                if not v["failed"]:
                    rc = 1
            print(_line(name, entry), flush=True)
            out.write_text(json.dumps(report, indent=2))
    finally:
        if owned and not keep_bed:
            from harness.bed import lifecycle
            lifecycle.down(bed.name)
    report["seconds"] = round(time.monotonic() - t0, 1)
    report["ok"] = rc == 0
    out.write_text(json.dumps(report, indent=2))
    print(f"mutants: {out}")
    return rc


def _line(name: str, e: dict) -> str:
    if name == "control":
        head = (f"control  build {e['build']}: {len(e['passed'])} passed, {len(e['skipped'])} skipped, "
                f"{len(e['killed_by'])} failed")
    else:
        head = (f"mutant {name} build {e['build']}: " +
                (f"KILLED by {len(e['killed_by'])} scenario(s)" if e["killed_by"] else "SURVIVED"))
    lines = [head]
    for sc, text in e["killed_by"].items():
        lines.append(f"    {sc}: {text.splitlines()[0][:200] if text else '(no message)'}")
    for sc, text in (e.get("errors") or {}).items():
        lines.append(f"    ({sc}: infrastructure error, not counted: {text.splitlines()[0][:160]})")
    if e.get("error"):
        lines.append("    " + e["error"].splitlines()[0])
    return "\n".join(lines)


def rescore(path: Path | None = None) -> int:
    """Recompute results/mutants.json from the run summaries it points to (no build, no bed). Exit code."""
    path = path or (paths.results_dir() / "mutants.json")
    report = json.loads(path.read_text())
    rc = 0
    for name, entry in [("control", report["control"]), *report["mutants"].items()]:
        if not entry or not entry.get("run"):
            rc = 1
            continue
        v = verdicts({"summary": json.loads(Path(entry["run"]).read_text())})
        entry.update(passed=v["passed"], skipped=v["skipped"], killed_by=v["failed"], errors=v["errors"],
                     other=v["other"])
        if name == "control":
            rc |= int(bool(v["failed"] or v["errors"] or not v["passed"]))
        else:
            entry["killed"] = bool(v["failed"])
            rc |= int(not v["failed"])
        print(_line(name, entry))
    report["ok"] = rc == 0
    path.write_text(json.dumps(report, indent=2))
    return rc
