"""Benchmark: whole-catalog wall time on one bed at -n 1 and -n 2 (pytest-xdist), side by side.
Writes results/bench/parallel.json with the ratio and what limits scaling.

    .venv/bin/python -m bench.parallel [--bed trixie] [-k EXPR]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import env, write  # noqa: E402
from bench.scenarios import run_catalog  # noqa: E402

LIMITS = (
    "Here (2 host cores, bed under TCG): the bed VM's two vCPUs are emulated threads on the same two cores "
    "that run QEMU for the bed, so a second worker mostly overlaps waiting (domain start/destroy, VF rebind, "
    "guest boot) rather than adding CPU; leases serialise scenarios that need the PF or 3+ VFs (4 VFs per bed). "
    "On a larger KVM host: VF count per bed (--vfs up to 7 per igb PF, or real NICs), bed vCPUs, and one bed "
    "per worker (harness run -n N does that; bench.catalog measures it) are what to scale."
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bed", default="trixie")
    ap.add_argument("-k", default=None)
    a = ap.parse_args()
    out = {"env": env(), "bed": a.bed, "select": a.k, "limits": LIMITS, "runs": {}}
    for n in (1, 2):
        wall, s = run_catalog(a.bed, a.k, n)
        out["runs"][f"n{n}"] = {"wall_s": round(wall, 1), "counts": s["counts"]}
    out["speedup_n2_over_n1"] = round(out["runs"]["n1"]["wall_s"] / out["runs"]["n2"]["wall_s"], 3)
    write("parallel", out)


if __name__ == "__main__":
    main()
