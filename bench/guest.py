"""Benchmark: wall time of the scenarios that boot the tiny guest (issue 10: each <= 40 s), and how
much of it is the start step (define + start + waiting for `harness-guest-ready` on the console).

Runs the guest scenarios via pytest (one worker, one session per run) on a bed that is up, each run
into its own results folder under results/bench/guest-runs/ (so a concurrent run by someone else
can't be mistaken for ours), and reads each scenario's duration and start-step phase from its
summary.json. Medians per label go to results/bench/guest.json; other labels already in that file
are kept, so a "before" and an "after" series sit side by side.

    .venv/bin/python -m bench.guest --bed trixie --runs 3 [--label after]
    .venv/bin/python -m bench.guest --label before --from-run results/<run> [--from-run ...]   # finished runs
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import env, median, write  # noqa: E402
from harness import paths  # noqa: E402

SCENARIOS = ["detach-reattach-guest", "vf-returned-to-pool"]
TARGET_S = 40.0


def start_phase(record: dict) -> float | None:
    """Seconds of the scenario's start step (where the guest boot is waited for)."""
    for p in record.get("phases") or []:
        name = p["phase"]
        if name.startswith("step ") and name.endswith(" start") and not p.get("overlapped"):
            return p["s"]
    return None


def figures(summary: dict) -> dict:
    out = {}
    for r in summary["scenarios"]:
        if r["scenario"] in SCENARIOS:
            out[r["scenario"]] = {"verdict": r["verdict"], "duration_s": r["duration_s"],
                                  "start_s": start_phase(r), "attempts": r.get("attempts")}
    return out


def run_once(bed: str, out_dir: Path) -> tuple[float, dict, Path]:
    argv = [sys.executable, "-m", "pytest", "scenarios", "-q", "-p", "no:cacheprovider", "--bed", bed,
            "--no-bed-up", "-k", " or ".join(SCENARIOS), "--results-dir", str(out_dir)]
    t0 = time.monotonic()
    p = subprocess.run(argv, cwd=paths.REPO, capture_output=True, text=True)
    wall = time.monotonic() - t0
    found = sorted(out_dir.glob("*/summary.json"), key=lambda f: f.stat().st_mtime)
    if not found:
        raise SystemExit(f"no summary.json under {out_dir}:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return wall, json.loads(found[-1].read_text()), found[-1].parent


def medians(runs: list[dict]) -> dict:
    out = {}
    for name in SCENARIOS:
        rec = [r["scenarios"][name] for r in runs if name in r["scenarios"]]
        ok = [x for x in rec if x["verdict"] == "passed"]
        out[name] = {"runs": len(rec), "passed": len(ok),
                     "median_duration_s": median([x["duration_s"] for x in ok]),
                     "median_start_s": median([x["start_s"] for x in ok if x["start_s"] is not None]),
                     "within_target": bool(ok) and median([x["duration_s"] for x in ok]) <= TARGET_S}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bed", default="trixie")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--label", default="current", help="name of this series in guest.json (e.g. before, after)")
    ap.add_argument("--note", default="", help="free text kept with the series (what was measured)")
    ap.add_argument("--from-run", action="append", default=[], help="take figures from finished run folders instead")
    a = ap.parse_args()
    started = env()                  # the load before the first run (each run also records its own)
    runs = []
    if a.from_run:
        for d in a.from_run:
            s = json.loads((Path(d) / "summary.json").read_text())
            runs.append({"run_dir": str(d), "load1_before": None, "wall_s": None, "scenarios": figures(s),
                         "bed": s["meta"].get("bed"), "libvirt": s["meta"].get("libvirt")})
    else:
        base = paths.results_dir() / "bench" / "guest-runs" / f"{a.label}-{time.strftime('%Y%m%dT%H%M%S')}"
        for i in range(a.runs):
            load = os.getloadavg()
            wall, s, run_dir = run_once(a.bed, base / str(i + 1))
            runs.append({"run_dir": str(run_dir), "load1_before": round(load[0], 2),
                         "load_before": [round(x, 2) for x in load], "wall_s": round(wall, 1),
                         "scenarios": figures(s), "bed": s["meta"].get("bed"), "libvirt": s["meta"].get("libvirt")})
            print(f"run {i + 1}/{a.runs}: load {load[0]:.2f}: " + ", ".join(
                f"{n} {x['verdict']} {x['duration_s']:.1f} s (start {x['start_s']} s)"
                for n, x in runs[-1]["scenarios"].items()), flush=True)
    f = paths.results_dir() / "bench" / "guest.json"
    data = json.loads(f.read_text()) if f.exists() else {}
    data.setdefault("target_s", TARGET_S)
    data["scenarios"] = SCENARIOS
    series = data.setdefault("series", {})
    series[a.label] = {"env": dict(started, loadavg_at_end=[round(x, 2) for x in os.getloadavg()]), "bed": a.bed,
                       "note": a.note, "runs": runs, "medians": medians(runs)}
    write("guest", data)


if __name__ == "__main__":
    main()
