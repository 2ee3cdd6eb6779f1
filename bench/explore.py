"""Benchmark: how long `harness explore` takes to find each mutant's failure, and how many steps it runs per minute.

For each mutant build (and seed) the build is installed into a running trixie bed and `harness explore --seed S`
runs until its first failure (shrinking is cut short with --shrink-budget 1s: the search is what is timed here;
the integration test shows the shrinking). One run on the control measures steps per minute where nothing fails
(every sequence runs to its end). Medians go to results/bench/explore.json.

    .venv/bin/python -m bench.explore --bed hx-explore [--seeds 1,2,3] [--budget 10m] [--control-budget 2m]
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import env, median, write  # noqa: E402
from harness import paths  # noqa: E402

MUTANTS = ("A-hostdev-alias-breaks-net-hotplug", "B-pool-interface-named-net")
SUMMARY = re.compile(r"explore: (\d+) sequences, (\d+) steps in (\d+) s \(([\d.]+) steps/min\)"
                     r"(?:, first failure after (\d+) s)?")


def explore_once(bed: str, seed: int, budget: str) -> dict:
    argv = [sys.executable, "-m", "harness.cli", "explore", "--bed", bed, "--seed", str(seed), "--budget", budget,
            "--shrink-budget", "1s"]
    t0 = time.monotonic()
    p = subprocess.run(argv, cwd=paths.REPO, capture_output=True, text=True)
    m = SUMMARY.search(p.stdout)
    if p.returncode not in (0, 1) or not m:
        raise SystemExit(f"explore failed (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    bed_runs = re.findall(r"\((\d+) run on the bed\)", p.stderr)
    return {"seed": seed, "found": p.returncode == 1, "wall_s": round(time.monotonic() - t0, 1),
            "sequences": int(m.group(1)), "bed_runs": int(bed_runs[-1]) if bed_runs else None,
            "steps": int(m.group(2)), "elapsed_s": int(m.group(3)), "steps_per_min": float(m.group(4)),
            "first_failure_s": int(m.group(5)) if m.group(5) else None}


def summarise(runs: list[dict]) -> dict:
    found = [r for r in runs if r["found"]]
    return {"runs": runs, "found": f"{len(found)}/{len(runs)}",
            "median_first_failure_s": median([r["first_failure_s"] for r in found]),
            "median_steps_per_min": median([r["steps_per_min"] for r in runs])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bed", required=True)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--budget", default="10m")
    ap.add_argument("--control-budget", default="2m")
    a = ap.parse_args()
    from harness.bed import lifecycle
    from harness.libvirt_build import build as build_mod
    from harness.libvirt_build import install, mutants
    bed = lifecycle.find(name=a.bed)
    patches = mutants.mutant_patches("11.3.0")
    seeds = [int(s) for s in a.seeds.split(",") if s]
    out = {"env": env(), "bed": bed.name, "seeds": seeds, "budget": a.budget, "mutants": {}}
    for name in MUTANTS:
        install.install(bed, build_mod.build("trixie", patches=[patches[name]]))
        out["mutants"][name] = summarise([explore_once(bed.name, s, a.budget) for s in seeds])
    install.install(bed, build_mod.build("trixie"))
    out["control"] = summarise([explore_once(bed.name, seeds[0], a.control_budget)])
    write("explore", out)


if __name__ == "__main__":
    main()
