"""Benchmark: time to a ready bed, cold (empty cache: image build + boot) and warm (cached image),
and the bed's idle memory. Medians over --runs. Writes results/bench/bed.json.

    .venv/bin/python -m bench.bed [--suite trixie] [--cold-runs 1] [--warm-runs 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import env, median, write  # noqa: E402
from harness.bed import image, lifecycle  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def one_up(suite: str, name: str) -> tuple[float, dict]:
    t0 = time.monotonic()
    bed = lifecycle.up(suite=suite, name=name)
    ready = time.monotonic() - t0
    try:
        time.sleep(20)   # let boot-time work settle before sampling idle memory
        samples = []
        for _ in range(5):
            samples.append(rss_mib(bed.pid))
            time.sleep(2)
        used = bed.ssh("free -m | awk '/^Mem:/ {print $3}'", timeout=60).stdout.strip()
        mem = {"qemu_rss_mib": median(samples), "guest_used_mib": int(used) if used.isdigit() else None,
               "bed_memory_mib": bed.memory_mib}
    finally:
        lifecycle.down(name)
    return ready, mem


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default="trixie")
    ap.add_argument("--cold-runs", type=int, default=1)
    ap.add_argument("--warm-runs", type=int, default=3)
    a = ap.parse_args()
    cold, warm, mems = [], [], []
    real_cache = os.environ.get("HARNESS_CACHE")
    for i in range(a.cold_runs):
        with tempfile.TemporaryDirectory(prefix="hx-bench-cache-") as d:
            os.environ["HARNESS_CACHE"] = d
            t0 = time.monotonic()
            image.build(a.suite)
            t_build = time.monotonic() - t0
            ready, mem = one_up(a.suite, f"hx-bench-cold{i}")
            cold.append({"build_s": round(t_build, 1), "boot_s": round(ready, 1), "total_s": round(t_build + ready, 1)})
    if real_cache is None:
        os.environ.pop("HARNESS_CACHE", None)
    else:
        os.environ["HARNESS_CACHE"] = real_cache
    image.build(a.suite)   # make sure the warm runs have a cached image
    for i in range(a.warm_runs):
        ready, mem = one_up(a.suite, f"hx-bench-warm{i}")
        warm.append(round(ready, 1))
        mems.append(mem)
    write("bed", {
        "suite": a.suite, "env": env(),
        "cold_to_ready_s": {"median": median([c["total_s"] for c in cold]), "runs": cold, "target": 240},
        "warm_to_ready_s": {"median": median(warm), "runs": warm, "target": 60},
        "idle_memory": {"qemu_rss_mib_median": median([m["qemu_rss_mib"] for m in mems]),
                        "guest_used_mib_median": median([m["guest_used_mib"] for m in mems if m["guest_used_mib"]]),
                        "runs": mems},
    })


if __name__ == "__main__":
    main()
