"""Benchmark: the whole catalog as `harness run` runs it (-n 2, a bed per worker, longest first), R times.
Writes results/bench/catalog.json: wall seconds per run and their median, each bed's busy seconds, and
the upgrade / tiny-guest / other split. `--one-bed` puts both workers on the first bed, for the ratio.
`--versus VAR=VALUE` runs the catalog 2R times, alternating as-is and with VAR=VALUE in the environment (a
lever's switch, e.g. HX_FIRMWARE=seabios), on the same beds: both medians and their ratio, side by side, so
a machine that slows down during the benchmark slows both.

    .venv/bin/python -m bench.catalog [--suite trixie] [--runs 3] [-n 2] [--one-bed] [--label L] [--versus VAR=VALUE]
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


def parse_versus(text: str) -> tuple[str, str]:
    """VAR=VALUE for --versus, or a usage error that says what is wanted."""
    var, eq, value = text.partition("=")
    if not eq or not var.isidentifier():
        raise SystemExit(f"--versus {text!r}: want VAR=VALUE, e.g. --versus HX_FIRMWARE=seabios")
    return var, value


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default="trixie")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("-n", dest="workers", type=int, default=2)
    ap.add_argument("--one-bed", action="store_true")
    ap.add_argument("--label", default=None)
    ap.add_argument("--versus", default=None, metavar="VAR=VALUE")
    a = ap.parse_args()
    versus = parse_versus(a.versus) if a.versus else None
    names = lifecycle.worker_bed_names(a.suite, 1 if a.one_bed else a.workers)
    brought = [n for n in names if state.load(n) is None]
    try:
        for n in names:
            b = lifecycle.up(suite=a.suite, name=n)
            if n in brought:     # as harness run's: a bed that dies or stalls is replaced (engine/heal.py)
                heal.own(b, f"bench.catalog (pid {os.getpid()})")
        runs, other = [], []
        for i in range(a.runs):
            for changed in ((None, versus) if versus else (None,)):
                wall, s = run_catalog(",".join(names), None, a.workers, ("--maxschedchunk", "1", "--longest-first"),
                                      env=dict(os.environ, **dict([changed])) if changed else None)
                (other if changed else runs).append({"wall_s": round(wall, 1), "counts": s["counts"],
                                                     "run_dir": s["meta"].get("run_id"), **split(s)})
                print(f"run {i + 1}{' with ' + '='.join(changed) if changed else ''}: {wall:.1f} s {s['counts']}",
                      flush=True)
    finally:
        for n in brought:
            lifecycle.down(n)
    out = {"env": env(), "suite": a.suite, "workers": a.workers, "beds": names, "label": a.label, "runs": runs,
           "median_wall_s": median([r["wall_s"] for r in runs])}
    if versus:
        out["versus"] = {"env": "=".join(versus), "runs": other, "median_wall_s": median([r["wall_s"] for r in other])}
        out["ratio_as_is_to_versus"] = round(out["median_wall_s"] / out["versus"]["median_wall_s"], 3)
    write("catalog" if not a.one_bed else "catalog-one-bed", out)


if __name__ == "__main__":
    main()
