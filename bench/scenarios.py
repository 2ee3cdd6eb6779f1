"""Benchmark: per-scenario wall time for the whole catalog, and for the seed scenario the ratio of
the harness's wall time to the time spent inside libvirt calls and bed commands (target <= 1.05).
Prints and writes a per-phase profile of every scenario (prepare, networks, each step's action and
oracle snapshot, logs, destroy, cleanup), from the phases the runner records in summary.json.
Needs a bed that is up (or pass --bed). Writes results/bench/scenarios.json.

    .venv/bin/python -m bench.scenarios [--bed trixie] [--seed-runs 5] [--workers 1]
    .venv/bin/python -m bench.scenarios --from-run results/<run> --seed-runs 0   # profile a finished run
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import env, median, write  # noqa: E402
from harness import paths  # noqa: E402
from harness.report import run as report  # noqa: E402


def run_catalog(bed: str, k: str | None, workers: int, extra: tuple[str, ...] = (),
                env: dict | None = None) -> tuple[float, dict]:
    """The catalog (or -k) on `bed` (several: comma-separated, one per worker): wall seconds and the summary.
    `env`: the whole environment of the run (None: this process's)."""
    before = {h["run_dir"] for h in report.read_history(paths.results_dir())}
    argv = [sys.executable, "-m", "pytest", "scenarios", "-q", "-p", "no:cacheprovider", "--bed", bed, "--no-bed-up",
            *extra]
    if k:
        argv += ["-k", k]
    if workers > 1:
        argv += ["-n", str(workers)]
    t0 = time.monotonic()
    p = subprocess.run(argv, cwd=paths.REPO, capture_output=True, text=True, env=env)
    wall = time.monotonic() - t0
    new = [h for h in report.read_history(paths.results_dir()) if h["run_dir"] not in before]
    if not new:
        raise SystemExit(f"no run recorded:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    summary = json.loads((paths.results_dir() / new[-1]["run_dir"] / "summary.json").read_text())
    return wall, summary


def category(phase: str, overlapped: bool = False) -> str:
    """The profile's columns: where a recorded phase's time belongs."""
    if overlapped:
        return "teardown (overlapped)"
    if phase.startswith("step ") and phase.endswith(" snapshot"):
        return "oracle snapshots"
    if phase.startswith("step "):
        return "steps (libvirt actions)"
    if phase in ("destroy",):
        return "destroy"
    if phase in ("undefine", "remove networks", "check device drivers"):
        return "cleanup"
    if phase in ("networks",):
        return "networks"
    if phase == "logs":
        return "logs"
    return "prepare"


CATEGORIES = ["prepare", "networks", "steps (libvirt actions)", "oracle snapshots", "logs", "destroy", "cleanup"]
OVERLAPPED = "teardown (overlapped)"   # handed to a teardown thread: runs while the next scenario does


def profile(record: dict) -> dict:
    """Seconds per category for one scenario record, plus what no phase accounts for (pytest, retries)."""
    out = dict.fromkeys([*CATEGORIES, OVERLAPPED], 0.0)
    for p in record.get("phases") or []:
        out[category(p["phase"], p.get("overlapped", False))] += p["s"]
    out = {k: round(v, 2) for k, v in out.items()}
    out["unaccounted"] = round(record["duration_s"] - sum(v for k, v in out.items() if k != OVERLAPPED), 2)
    out["phases"] = record.get("phases") or []
    return out


def print_profile(records: list[dict]) -> None:
    head = ["scenario", "total", *[c.split(" ")[0] for c in CATEGORIES], "other", "overlap"]
    print(" ".join(f"{h:>9}" if i else f"{h:<32}" for i, h in enumerate(head)))
    for r in sorted(records, key=lambda r: -r["duration_s"]):
        pr = profile(r)
        cells = [r["duration_s"], *[pr[c] for c in CATEGORIES], pr["unaccounted"], pr[OVERLAPPED]]
        print(f"{r['scenario'][:32]:<32} " + " ".join(f"{c:>9.2f}" for c in cells))


def catalog_figures(s: dict, wall: float, workers: int, source: str | None) -> dict:
    print_profile(s["scenarios"])
    return {"workers": workers, "wall_s": round(wall, 1), "counts": s["counts"], "libvirt": s["meta"].get("libvirt"),
            "source_run": source, "median_scenario_s": median([r["duration_s"] for r in s["scenarios"]]),
            "per_scenario_s": {r["scenario"]: r["duration_s"] for r in s["scenarios"]},
            "profile": {r["scenario"]: profile(r) for r in s["scenarios"]}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bed", default="trixie")
    ap.add_argument("--seed-runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--skip-catalog", action="store_true")
    ap.add_argument("--from-run", help="take the catalog figures from this finished run folder instead of re-running")
    a = ap.parse_args()
    seed = []
    for _ in range(a.seed_runs):
        _, s = run_catalog(a.bed, "seed-hostdev-then-hotplug", 1)
        r = s["scenarios"][0]
        seed.append({"wall_s": r["duration_s"], "libvirt_s": r["libvirt_s"],
                     "ratio": round(r["duration_s"] / r["libvirt_s"], 4) if r["libvirt_s"] else None,
                     "profile": profile(r)})
    out = {"env": env(), "seed": {"runs": seed, "median_wall_s": median([x["wall_s"] for x in seed]),
                                  "median_libvirt_s": median([x["libvirt_s"] for x in seed]),
                                  "median_ratio": median([x["ratio"] for x in seed if x["ratio"]]),
                                  "target_ratio": 1.05}}
    if a.from_run:
        s = json.loads((Path(a.from_run) / "summary.json").read_text())
        out["catalog"] = catalog_figures(s, sum(r["duration_s"] for r in s["scenarios"]), 1, a.from_run)
    elif not a.skip_catalog:
        wall, s = run_catalog(a.bed, None, a.workers)
        out["catalog"] = catalog_figures(s, wall, a.workers, None)
    write("scenarios", out)


if __name__ == "__main__":
    main()
