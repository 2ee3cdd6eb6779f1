"""The catalog on the other suites: bookworm (libvirt 9.0, the oldest QA still runs) and sid (12.x).

The trixie run (libvirt 11.3) is the scenario items of this same pytest session. Here `harness matrix` runs
a guest-free selection on a bookworm bed and on a sid bed and writes the scenario x libvirt table; the sid test
then runs the seed and the pool scenarios on a sid bed. Neither touches the session's trixie bed: this module
runs in the other xdist worker of `./harness.sh test` (tests/ci_groups.py), side by side with the catalog and
the fault tests on that bed. The whole catalog on all three suites
(with `--diff`) is the nightly pipelines' job (.github/workflows/nightly.yml, .gitlab-ci.yml): in .ci/run it
took 12 of the 45 minutes on bookworm alone.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness import paths
from harness.bed import lifecycle, state
from harness.report import run as report

pytestmark = [pytest.mark.bed, pytest.mark.slow]

REPO = paths.REPO


def run_suite(suite: str, extra: list[str]) -> tuple[subprocess.CompletedProcess, dict]:
    before = {h["run_dir"] for h in report.read_history(paths.results_dir())}
    p = subprocess.run([sys.executable, "-m", "pytest", "scenarios", "-q", "-p", "no:cacheprovider", "-rfEs",
                        "--suite", suite, *extra], cwd=REPO, capture_output=True, text=True, timeout=3600,
                       env=dict(os.environ, PYTEST_ADDOPTS=""))
    new = [h for h in report.read_history(paths.results_dir()) if h["run_dir"] not in before]
    assert new, f"the {suite} run wrote no results:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    summary = json.loads((paths.results_dir() / new[-1]["run_dir"] / "summary.json").read_text())
    return p, summary


#: The matrix selection: the seed, a pool interface named at start, daemon restart, index reuse (USB, no guest).
MATRIX = ["seed-hostdev-then-hotplug", "pool-interface-alias-at-start", "restart-daemon-stability", "index-reuse-usb"]


@pytest.fixture(scope="module")
def bookworm_down():
    """A bookworm bed left running by the matrix goes down with this module."""
    yield
    if state.load("bookworm") is not None:
        lifecycle.down("bookworm")


@pytest.fixture(scope="module")
def sid_down():
    """A sid bed left running (the seed + pool test keeps the one it brings up) goes down with this module."""
    yield
    if state.load("sid") is not None:
        lifecycle.down("sid")


def test_matrix_over_two_suites_writes_a_scenario_by_libvirt_table(bookworm_down, sid_down):
    before = state.load("bookworm")
    # -n 1: one bed at a time, as the rest of this CI half (harness run's default would add a second bed per
    # suite next to the other half's bed: three TCG beds on 2 cores starved their vCPUs, 2026-12-05)
    p = subprocess.run([sys.executable, "-m", "harness.cli", "matrix", "--suites", "bookworm,sid", "-n", "1",
                        "-k", " or ".join(MATRIX), "--retries", "1"], cwd=REPO, capture_output=True, text=True,
                       timeout=3600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    after = state.load("bookworm")
    if before is not None:     # a running bed of the suite is reused, and left running
        assert after is not None and after.pid == before.pid, (before, after)
    else:                      # the matrix took down the bed it brought up
        assert after is None
    text = (paths.results_dir() / "matrix.txt").read_text()
    header = text.splitlines()[0]
    assert "9.0.0" in header and "12.8.0" in header, text
    for name in MATRIX:        # every scenario of the selection passed on both libvirt versions (a pass on
        row = next(line for line in text.splitlines() if line.startswith(name))   # retry shows as FLAKY)
        assert row.split().count("PASS") + row.split().count("FLAKY") == 2, text
    html = (paths.results_dir() / "matrix.html").read_text()
    assert "seed-hostdev-then-hotplug" in html and "9.0.0" in html


SID_SCENARIOS = ["seed-hostdev-then-hotplug", "pool-by-pf", "pool-exhausted", "pool-interface-alias-at-start",
                 "pool-interface-hotplug"]


def test_seed_and_pool_scenarios_pass_on_sid(sid_down):
    # The seed and the guest-free pool scenarios. The whole catalog (tiny-guest scenarios too: sid's guest
    # boots in ~100 s) passes on sid in the nightly matrix (24/24 on 2026-12-02, 974 s at -n 2); here the
    # guest scenarios are left out to keep .ci/run inside its time budget.
    p, summary = run_suite("sid", ["-k", " or ".join(SID_SCENARIOS), "--harness-retries", "1", "--keep-bed"])
    assert summary["meta"]["libvirt"].startswith("12."), summary["meta"]
    verdicts = {s["scenario"]: s["verdict"] for s in summary["scenarios"]}
    bad = {k: v for k, v in verdicts.items() if v != "passed"}
    assert not bad, f"{bad}\n{p.stdout[-4000:]}"
    assert set(SID_SCENARIOS) <= set(verdicts), sorted(verdicts)
    assert not summary["counts"].get("skipped"), summary["counts"]
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
