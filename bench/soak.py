"""Soak: N hot-plug/unplug cycles on one domain that holds a hostdev interface (USB NICs unplug with
no guest), with the oracle checking aliases after every step. Measures libvirtd's memory and open
file descriptors before and after, and checks that no VF leaked. Writes results/bench/soak.json.

    .venv/bin/python -m bench.soak [--bed trixie] [--cycles 200]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import env, write  # noqa: E402
from harness import paths  # noqa: E402
from harness.bed import lifecycle  # noqa: E402

SCENARIO = """guards: soak - {cycles} hot-plug/unplug cycles next to a hostdev interface
domain:
  devices:
    - interface: {{id: hn0, type: hostdev, device: vf1}}
devices:
  vf1: {{kind: vf}}
steps:
  - start:
  - repeat:
      times: {cycles}
      steps:
        - attach: {{interface: {{id: u1, type: user, model: usb-net}}}}
          expect: {{aliases: {{u1: net0, hn0: hostdev0}}}}
        - detach: u1
  - check:
    expect: {{aliases: {{hn0: hostdev0}}}}
"""

PROBE = ("p=$(pidof libvirtd); echo $(awk '/VmRSS/ {print $2}' /proc/$p/status) $(ls /proc/$p/fd | wc -l); "
         "for d in /sys/bus/pci/drivers/vfio-pci/0000:*; do [ -e \"$d\" ] && echo vfio ${d##*/}; done; true")


def probe(bed) -> dict:
    out = bed.ssh(PROBE, timeout=60).stdout.split("\n")
    rss, fds = out[0].split()
    return {"libvirtd_rss_kib": int(rss), "libvirtd_fds": int(fds),
            "on_vfio": [ln.split()[1] for ln in out[1:] if ln.startswith("vfio")]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bed", default="trixie")
    ap.add_argument("--cycles", type=int, default=200)
    a = ap.parse_args()
    bed = lifecycle.find(name=a.bed)
    before = probe(bed)
    with tempfile.TemporaryDirectory() as d:
        sdir = Path(d) / "scenarios"
        sdir.mkdir()
        (sdir / "soak.yaml").write_text(SCENARIO.format(cycles=a.cycles))
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "pytest", str(sdir), "-q", "-p", "no:cacheprovider",
                            "-p", "harness.plugin", "-c", str(paths.REPO / "pyproject.toml"),
                            "--bed", a.bed, "--no-bed-up", "--results-dir", str(Path(d) / "results")],
                           cwd=paths.REPO, capture_output=True, text=True)
        wall = time.monotonic() - t0
    after = probe(bed)
    # Bound: RSS may grow by caches, not per cycle; fds must come back to where they were.
    rss_growth = after["libvirtd_rss_kib"] - before["libvirtd_rss_kib"]
    result = {"env": env(), "cycles": a.cycles, "passed": p.returncode == 0, "wall_s": round(wall, 1),
              "per_cycle_s": round(wall / a.cycles, 3), "before": before, "after": after,
              "libvirtd_rss_growth_kib": rss_growth, "libvirtd_fd_growth": after["libvirtd_fds"] - before["libvirtd_fds"],
              "bounds": {"rss_growth_kib_max": 20480, "fd_growth_max": 0},
              "within_bounds": rss_growth <= 20480 and after["libvirtd_fds"] <= before["libvirtd_fds"]
              and not after["on_vfio"]}
    if p.returncode != 0:
        result["pytest_tail"] = p.stdout[-3000:]
    write("soak", result)
    sys.exit(0 if result["passed"] and result["within_bounds"] else 1)


if __name__ == "__main__":
    main()
