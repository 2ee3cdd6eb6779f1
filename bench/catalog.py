"""Benchmark: the whole catalog as `harness run` runs it (-n 2, a bed per worker, longest first), R times.
Writes results/bench/catalog.json: wall seconds per run and their median, each bed's busy seconds, and
the upgrade / tiny-guest / other split. `--one-bed` puts both workers on the first bed, for the ratio.

    .venv/bin/python -m bench.catalog [--suite trixie] [--runs 3] [-n 2] [--one-bed] [--label L]
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import env, median, write  # noqa: E402
from bench.scenarios import run_catalog  # noqa: E402
from harness.bed import lifecycle, state  # noqa: E402
from harness.engine import heal  # noqa: E402


def split(summary: dict) -> dict:
    """Seconds of the upgrade scenarios, the tiny-guest ones and the rest, and each bed's busy seconds."""
    out, beds = {"upgrade": 0.0, "guest": 0.0, "other": 0.0}, defaultdict(float)
    for s in summary["scenarios"]:
        kind = ("upgrade" if any("upgrade-libvirt" in str(st["step"]) for st in s["steps"]) else
                "guest" if s["scenario"] in ("detach-reattach-guest", "vf-returned-to-pool") else "other")
        out[kind] += s["duration_s"]
        beds[s.get("bed") or "?"] += s["duration_s"]
    return {k: round(v, 1) for k, v in out.items()} | {"busy_per_bed": {b: round(v, 1) for b, v in beds.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default="trixie")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("-n", dest="workers", type=int, default=2)
    ap.add_argument("--one-bed", action="store_true")
    ap.add_argument("--label", default=None)
    a = ap.parse_args()
    names = lifecycle.worker_bed_names(a.suite, 1 if a.one_bed else a.workers)
    brought = [n for n in names if state.load(n) is None]
    try:
        for n in names:
            b = lifecycle.up(suite=a.suite, name=n)
            if n in brought:     # as harness run's: a bed that dies or stalls is replaced (engine/heal.py)
                heal.own(b, f"bench.catalog (pid {os.getpid()})")
        runs = []
        for i in range(a.runs):
            wall, s = run_catalog(",".join(names), None, a.workers, ("--maxschedchunk", "1", "--longest-first"))
            runs.append({"wall_s": round(wall, 1), "counts": s["counts"], "run_dir": s["meta"].get("run_id"),
                         **split(s)})
            print(f"run {i + 1}: {wall:.1f} s {s['counts']}", flush=True)
    finally:
        for n in brought:
            lifecycle.down(n)
    out = {"env": env(), "suite": a.suite, "workers": a.workers, "beds": names, "label": a.label, "runs": runs,
           "median_wall_s": median([r["wall_s"] for r in runs])}
    write("catalog" if not a.one_bed else "catalog-one-bed", out)


if __name__ == "__main__":
    main()
