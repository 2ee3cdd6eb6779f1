"""Slow, real (the issue-4 proof, run by .ci/run): libvirt 11.3.0 built from Debian's source in a chroot and
installed into a bed; `harness mutants` shows the control passing and both mutants killed; `harness bisect`
over a 9-commit libvirt repo names the mutant commit and skips the commit that does not build.

Needs root and the host's Debian mirror. On a 2-core machine: ~4 min cold build (chroot + libvirt),
~6 min mutants on the CI selection, ~5 min bisect. Set HX_LVBUILD_BED=NAME to reuse a running trixie bed (it
is left running, with the last build installed); otherwise they use the session's spare bed.

The CI selection (MUTANTS_K) keeps .ci/run within its time budget: the guest-free scenarios that exercise
each family of interface (hostdev, pool by VF list and by PF, usb, macvtap, bridge network) on every build,
plus a daemon restart and an upgrade (11.3.0 -> sid's 12.8.0 -> back) on the control and mutant U, which only
an upgrade kills. The whole
catalog (`harness mutants` with no -k) is the command's default and is what QA runs before an upgrade.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import paths
from harness.libvirt_build import bisect as bisect_mod
from harness.libvirt_build import build as build_mod
from harness.libvirt_build import mutants

pytestmark = [pytest.mark.slow, pytest.mark.libvirt_build,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mmdebstrap, chroot, bed)")]

SEED = "seed-hostdev-then-hotplug"
UPGRADE, RESTART = "upgrade-seed-rollback", "restart-daemon-stability"
BASE_K = " or ".join([
    SEED, "pool-interface-alias-at-start", "pool-by-pf", "same-vf-twice", "direct-macvtap",
    "index-reuse-usb", "network-lifecycle",
])
MUTANTS_K = os.environ.get("HX_MUTANTS_K", " or ".join([BASE_K, RESTART, UPGRADE]))
A, B, U = "A-hostdev-alias-breaks-net-hotplug", "B-pool-interface-named-net", "U-status-xml-from-another-version"
INDEX_ERROR = "Unable to determine device index for network device"


@pytest.fixture
def bed(mutant_bed):
    """HX_LVBUILD_BED, or the session's spare bed (conftest.mutant_bed)."""
    return mutant_bed("HX_LVBUILD_BED")


def harness(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=paths.REPO, capture_output=True, text=True,
                       timeout=timeout)
    print(p.stdout[-6000:], p.stderr[-3000:], sep="\n")
    return p


def test_mutants_control_passes_and_both_mutants_are_killed(bed):
    # Builds first, no bed involved: control + one build per mutants/*.patch, all three packed.
    p = harness("mutants", "--suite", "trixie", "--build-only")
    assert p.returncode == 0, p.stderr[-3000:]
    built = dict(re.findall(r"^(\S+)\s+build ([0-9a-f]{18}):", p.stdout, re.M))
    assert set(built) == {"control", *mutants.mutant_patches("11.3.0")}, p.stdout
    assert len(set(built.values())) == len(built), "each mutant is a different build"

    # Then the runs: the same builds are reused (cache), installed in turn, the selection run on each. The
    # control and U get the whole selection (U must survive everything but the upgrade); A and B, which no
    # daemon step concerns, the selection without the two scenarios that take the bed for themselves
    # (restart, upgrade: ~2 min a build), with the control's verdicts carried over.
    p = harness("mutants", "--suite", "trixie", "--bed", bed.name, "-k", MUTANTS_K, "-n", "2", "--only", "U-")
    report = json.loads((paths.results_dir() / "mutants.json").read_text())
    assert p.returncode == 0, p.stdout[-4000:]
    assert report["ok"] and report["k"] == MUTANTS_K

    control = report["control"]
    assert control["build"] == built["control"] and not control.get("carried_over")
    assert not control["killed_by"] and not control["errors"] and not control["other"], control
    assert len(control["passed"]) == len(MUTANTS_K.split(" or ")), control["passed"]
    assert UPGRADE in control["passed"] and RESTART in control["passed"]
    u = report["mutants"][U]
    # U: killed by the upgrade scenario alone (the rollback to U renames hostdevN interface aliases), while a
    # plain daemon restart, the seed and everything else without an upgrade step pass under it
    assert set(u["killed_by"]) == {UPGRADE}, u["killed_by"]
    assert "'upgrade-libvirt {'to': 'original'}'" in u["killed_by"][UPGRADE], u["killed_by"]
    assert {RESTART, SEED} <= set(u["passed"]) and len(u["passed"]) == len(MUTANTS_K.split(" or ")) - 1, u

    p = harness("mutants", "--suite", "trixie", "--bed", bed.name, "-k", BASE_K, "-n", "2",
                "--only", "A-", "--only", "B-", "--skip-control")
    report = json.loads((paths.results_dir() / "mutants.json").read_text())
    assert p.returncode == 0, p.stdout[-4000:]
    assert report["ok"] and report["k"] == BASE_K and report["control"]["carried_over"]
    assert report["mutants"][U]["carried_over_from"] and report["mutants"][U]["killed_by"] == u["killed_by"]

    a, b = (report["mutants"][n] for n in (A, B))
    for m, name in ((a, A), (b, B), (u, U)):
        assert m["build"] == built[name] and m["killed"] and not m["errors"], m
        # each run was on that build, proven in the bed (marker + sha256 of what libvirtd has mapped)
        assert m["installed"] == {"id": built[name], "verified": True}, m["installed"]
    # A: the hot-plug after a hostdevN alias fails with libvirt's own message
    assert SEED in a["killed_by"] and INDEX_ERROR in a["killed_by"][SEED], a["killed_by"]
    # B: nothing fails in libvirt; only the alias oracle sees the pool interface named netN
    assert "pool-interface-alias-at-start" in b["killed_by"], b["killed_by"]
    assert all("alias-family" in text for text in b["killed_by"].values()), b["killed_by"]
    assert SEED in b["passed"], "mutant B must not break the seed hot-plug"

    # bed status proves the running daemon is the last installed build (B), not Debian's
    p = harness("bed", "status", "--name", bed.name, "--json")
    (entry,) = json.loads(p.stdout)
    lb = entry["libvirt_build"]
    last = list(report["mutants"])[-1]
    assert lb["id"] == built[last] and lb["verified"], lb
    assert lb["domain_log_names_build"] and f"hx-{lb['id']}" in lb["domain_log_package"], lb

    # `bed up --libvirt-build ID` on a running bed: reused, the build installed, the daemon restarted on it
    p = harness("bed", "up", "--name", bed.name, "--suite", bed.suite, "--libvirt-build", built["control"])
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"running daemon: {built['control']} (verified: True)" in p.stdout, p.stdout
    (entry,) = json.loads(harness("bed", "status", "--name", bed.name, "--json").stdout)
    assert entry["libvirt_build"]["id"] == built["control"] and entry["libvirt_build"]["verified"]


def test_bisect_names_mutant_commit_and_skips_broken_one(bed, tmp_path):
    repo = tmp_path / "libvirt-git"
    demo = bisect_mod.make_demo_repo(repo)
    assert len(demo["commits"]) >= 8
    try:
        p = harness("bisect", "--source", str(repo), "--good", demo["base"], "--bad", demo["commits"][-1]["sha"],
                    "-k", SEED, "--bed", bed.name)
    finally:   # the build folder of this throw-away tree would stay in the cache (~250 MB)
        import shutil
        shutil.rmtree(build_mod.build_dir_for(repo, "trixie"), ignore_errors=True)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    first_bad = re.search(r"first bad commit: ([0-9a-f]{40})", p.stdout)
    assert first_bad and first_bad.group(1) == demo["mutant"], p.stdout
    # the commit that does not build was met and skipped, not blamed
    log_dir = Path(re.search(r"^logs: (\S+) \(", p.stdout, re.M).group(1))
    result = json.loads((log_dir / "bisect.json").read_text())
    answers = {s["commit"]: s["answer"] for s in result["steps"]}
    assert answers.get(demo["broken"]) == "skip", answers
    assert answers[demo["mutant"]] == "bad" and "good" in answers.values(), answers
    assert INDEX_ERROR in p.stdout
    # reset: the repo is back on its branch, no bisect in progress
    assert not (repo / ".git" / "BISECT_START").exists()
