"""Benchmark of the build/bisect pipeline; writes results/bench/bisect.json.

Measures: the build chroot (cached or fresh: `--fresh-chroot` rebuilds it), the first (full) build of the
Debian source, one incremental step on the demo repo (build, install, scenarios), and a whole `harness bisect`
over the 9-commit demo repo (mutant A at c7, c4 does not build).

    PYTHONPATH=. python -m bench.bisect_steps --bed NAME [--fresh-chroot] [--cold-ccache] [-k seed]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import json
import os
import shutil
import time

from harness import paths  # noqa: E402
from harness.bed import lifecycle
from harness.libvirt_build import bisect as bisect_mod  # noqa: E402
from harness.libvirt_build import build as build_mod
from harness.libvirt_build import chroot, install, mutants
from harness.libvirt_build.cache import sub


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bed", required=True)
    ap.add_argument("--suite", default="trixie")
    ap.add_argument("-k", default="seed-hostdev-then-hotplug")
    ap.add_argument("--fresh-chroot", action="store_true")
    ap.add_argument("--cold-ccache", action="store_true", help="empty ccache and build dirs first (true first build)")
    a = ap.parse_args()
    bed = lifecycle.find(name=a.bed)
    out: dict = {"suite": a.suite, "bed": bed.name, "k": a.k, "cpus": os.cpu_count(),
                 "loadavg_start": os.getloadavg()}
    t_all = time.monotonic()

    if a.fresh_chroot:
        shutil.rmtree(chroot.path(a.suite), ignore_errors=True)
    t = time.monotonic()
    cached = (chroot.path(a.suite) / ".hx-ready").exists()
    chroot.ensure(a.suite)
    out["chroot"] = {"seconds": round(time.monotonic() - t, 1), "cached": cached,
                     "recorded_build_seconds": json.loads((chroot.path(a.suite) / ".hx-ready").read_text())["seconds"]}

    # first build: the demo repo is a fresh tree -> a fresh build dir (ccache warm unless --cold-ccache)
    repo = sub("bench") / "libvirt-git"
    demo = bisect_mod.make_demo_repo(repo, suite=a.suite)
    shutil.rmtree(build_mod.build_dir_for(repo, a.suite), ignore_errors=True)
    if a.cold_ccache:
        shutil.rmtree(sub("ccache", a.suite))
    base = demo["base"]
    branch = bisect_mod._git(repo, "rev-parse", "--abbrev-ref", "HEAD").stdout.strip()
    bisect_mod._git(repo, "checkout", "-q", base)
    t = time.monotonic()
    b = build_mod.build(a.suite, source_dir=repo, force=True)   # same source as the control: don't reuse its tarball
    out["first_build"] = {"seconds": round(time.monotonic() - t, 1), "detail": b.seconds,
                          "ccache": "cold" if a.cold_ccache else "warm"}

    # one incremental step on c1 (a change in qemu_alias.c): build, install, scenarios
    bisect_mod._git(repo, "checkout", "-q", demo["commits"][0]["sha"])
    step: dict = {}
    t = time.monotonic()
    b1 = build_mod.build(a.suite, source_dir=repo)
    step["build"] = round(time.monotonic() - t, 1)
    t = time.monotonic()
    install.install(bed, b1)
    step["install"] = round(time.monotonic() - t, 1)
    t = time.monotonic()
    r = mutants.run_scenarios(bed, paths.results_dir() / "bench" / "step-run", k=a.k)
    step["scenarios"] = round(time.monotonic() - t, 1)
    step["verdicts"] = {k: len(v) for k, v in mutants.verdicts(r).items()}
    step["total"] = round(step["build"] + step["install"] + step["scenarios"], 1)
    out["incremental_step"] = step
    bisect_mod._git(repo, "checkout", "-q", branch)

    t = time.monotonic()
    res = bisect_mod.bisect(str(repo), good=base, bad=demo["commits"][-1]["sha"], k=a.k, suite=a.suite,
                            bed_name=bed.name, out=paths.results_dir() / "bench" / "bisect-logs")
    out["bisect"] = {"seconds": round(time.monotonic() - t, 1), "first_bad": res.get("first_bad"),
                     "expected": demo["mutant"], "correct": res.get("first_bad") == demo["mutant"],
                     "broken_skipped": demo["broken"] in res.get("skipped", []), "steps": res.get("steps"),
                     "message": res.get("message"), "log_dir": res.get("log_dir")}
    out["total_seconds"] = round(time.monotonic() - t_all, 1)
    out["loadavg_end"] = os.getloadavg()
    dest = paths.results_dir() / "bench"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "bisect.json").write_text(json.dumps(out, indent=2))
    print(json.dumps({k: out[k] for k in ("chroot", "first_build", "incremental_step")}, indent=1))
    print(bisect_mod.format_result(res))
    print(f"bench: {dest / 'bisect.json'}")
    return 0 if out["bisect"]["correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
