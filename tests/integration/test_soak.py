"""Load (issue 6): 200 hot-plug/unplug cycles on one domain next to a hostdev interface, through
bench/soak.py. Aliases are checked by the oracle after every one of the 400 steps; libvirtd's memory
and open file descriptors must stay within the bounds the benchmark states, and no VF may be left
on vfio-pci. The measurement lands in results/bench/soak.json like every benchmark."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness import paths

pytestmark = [pytest.mark.bed, pytest.mark.slow]


def test_200_hotplug_cycles_keep_aliases_and_libvirtd_within_bounds(hx_target):
    out = paths.results_dir() / "bench" / "soak.json"
    out.unlink(missing_ok=True)     # a stale measurement must not pass for this one
    p = subprocess.run([sys.executable, "-m", "bench.soak", "--bed", hx_target.bed.name, "--cycles", "200"],
                       cwd=paths.REPO, capture_output=True, text=True, timeout=1800)
    assert out.exists(), p.stdout[-3000:] + p.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["cycles"] == 200
    assert result["passed"], result.get("pytest_tail", p.stdout[-3000:] + p.stderr[-3000:])
    assert result["libvirtd_fd_growth"] <= result["bounds"]["fd_growth_max"], result
    assert result["libvirtd_rss_growth_kib"] <= result["bounds"]["rss_growth_kib_max"], result
    assert result["after"]["on_vfio"] == [], result
    assert result["within_bounds"] and p.returncode == 0
