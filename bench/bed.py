"""Benchmark: time to a ready bed, cold (empty cache: image build + boot), warm (cached image, plain
boot) and warm from the saved template (cached image + template: RAM restored, keys rotated), and the
bed's idle memory. Medians over --runs. Writes results/bench/bed.json.

    .venv/bin/python -m bench.bed [--suite trixie] [--cold-runs 1] [--warm-runs 3] [--template-runs 3]
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
from harness.bed import image, lifecycle, qemu, template_store  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def one_up(suite: str, name: str, cold: bool | None = None) -> tuple[float, dict, dict]:
    """Up, then idle memory; returns (seconds to up() returning, memory, the bed's boot record). The image
    is made sure of first, outside the timing (another change of the recipe meanwhile would rebuild it)."""
    image.build(suite)
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    bed = lifecycle.up(suite=suite, name=name, cold=cold)
    ready = time.monotonic() - t0
    boot = dict(bed.extra.get("boot", {}), load1_before=round(load, 2))
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
    return ready, mem, boot


def mem_summary(mems: list[dict]) -> dict:
    return {"qemu_rss_mib_median": median([m["qemu_rss_mib"] for m in mems]),
            "guest_used_mib_median": median([m["guest_used_mib"] for m in mems if m["guest_used_mib"]]),
            "runs": mems}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default="trixie")
    ap.add_argument("--cold-runs", type=int, default=1)
    ap.add_argument("--warm-runs", type=int, default=3)
    ap.add_argument("--template-runs", type=int, default=3)
    a = ap.parse_args()
    load_start = os.getloadavg()
    cold, warm, mems, tpl_runs, tpl_mems = [], [], [], [], []
    real_cache = os.environ.get("HARNESS_CACHE")
    for i in range(a.cold_runs):
        with tempfile.TemporaryDirectory(prefix="hx-bench-cache-") as d:
            os.environ["HARNESS_CACHE"] = d
            t0 = time.monotonic()
            image.build(a.suite)
            t_build = time.monotonic() - t0
            # the default path on an empty cache: cold boot, then saved as the template (a short pause)
            ready, mem, boot = one_up(a.suite, f"hx-bench-cold{i}")
            saved = boot.get("saved_template") or {}
            cold.append({"build_s": round(t_build, 1), "boot_s": round(ready, 1), "total_s": round(t_build + ready, 1),
                         "libvirtd_ready_s": boot.get("seconds"), "template_saved": bool(saved),
                         "template_pause_s": saved.get("paused_s"), "load1_before": boot["load1_before"]})
    if real_cache is None:
        os.environ.pop("HARNESS_CACHE", None)
    else:
        os.environ["HARNESS_CACHE"] = real_cache
    image.build(a.suite)   # make sure the warm runs have a cached image
    for i in range(a.warm_runs):
        ready, mem, boot = one_up(a.suite, f"hx-bench-warm{i}", cold=True)   # plain boot: no template
        warm.append(round(ready, 1))
        mems.append(dict(mem, load1_before=boot["load1_before"]))
    made, not_from_template = [], []
    tpl = None
    for i in range(a.template_runs + 3):
        if len(tpl_runs) == a.template_runs:
            break
        img = image.build(a.suite)
        tpl = template_store.for_hardware(img, accel=qemu.detect_accel(img, None)[0])
        if not tpl.ready():       # first time for this image (or a recipe change rebuilt it): make it
            ready, _, boot = one_up(a.suite, "hx-bench-tpl-origin")
            made.append({"boot_s": round(ready, 1), "libvirtd_ready_s": boot.get("seconds"),
                         **(boot.get("saved_template") or {})})
        ready, mem, boot = one_up(a.suite, f"hx-bench-tpl{i}")
        if boot.get("path") != "template":
            not_from_template.append(boot)
            continue
        tpl_runs.append({"s": round(ready, 1), **{k: boot.get(k) for k in
                                                  ("load_s", "keys_s", "ready_s", "load1_before")}})
        tpl_mems.append(mem)
    meta = tpl.meta if tpl is not None and tpl.ready() else {}
    write("bed", {
        "suite": a.suite, "env": dict(env(), loadavg_at_bench_start=load_start),   # env()'s loadavg: at the end
        "load_note": "load1_before in each run: the 1-min load average just before that bed came up",
        "cold_to_ready_s": {"median": median([c["total_s"] for c in cold]), "runs": cold, "target": 240},
        "warm_to_ready_s": {"median": median(warm), "runs": warm, "target": 60,
                            "note": "plain boot of the cached image (HX_BED_COLD=1: no template)"},
        "warm_from_template_to_ready_s": {
            "median": median([r["s"] for r in tpl_runs]), "runs": tpl_runs, "target": 15,
            "note": "cached image + template: new overlay over the frozen template disk, RAM loaded from "
                    "the file, own keys installed over SSH, libvirtd answering and VFs present",
            "template": {"key": tpl.key if tpl else None, "state_mib": round(meta.get("state_bytes", 0) / 2**20, 1),
                         "origin_pause_s": meta.get("paused_s"), "made_by_this_run": made},
            "runs_not_from_template": not_from_template},
        "idle_memory": mem_summary(mems),
        "idle_memory_from_template": mem_summary(tpl_mems),
    })


if __name__ == "__main__":
    main()
