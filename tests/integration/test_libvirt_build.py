"""Slow, real: libvirt 11.3.0 built from Debian's source in a chroot, installed into a bed, the seed scenario
run on the control build (passes) and on mutant A (fails with "Unable to determine device index"), and a
`harness bisect` over a 9-commit repo that names the mutant commit and skips the commit that does not build.

Needs root, the host's Debian mirror and ~20-40 min on a 2-core machine. Set HX_LVBUILD_BED=NAME to reuse a
running bed (it is left running, with the last build installed); otherwise one is brought up and taken down.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from harness.libvirt_build import bisect as bisect_mod
from harness.libvirt_build import build as build_mod
from harness.libvirt_build import install as install_mod
from harness.libvirt_build import mutants

pytestmark = [pytest.mark.slow, pytest.mark.libvirt_build,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mmdebstrap, chroot, bed)")]

SEED = "seed-hostdev-then-hotplug"
MUTANT_A = next(mutants.MUTANTS_DIR.glob("A-*.patch"))


@pytest.fixture(scope="module")
def bed():
    from harness.bed import lifecycle
    name = os.environ.get("HX_LVBUILD_BED")
    if name:
        yield lifecycle.find(name=name)
        return
    b = lifecycle.up(suite="trixie", name="hx-itest-lvbuild")
    try:
        yield b
    finally:
        lifecycle.down(b.name)


def _run_seed(bed, tmp_path: Path, label: str) -> dict:
    r = mutants.run_scenarios(bed, tmp_path / label, k=SEED, timeout=1200)
    assert r["summary"], r["output_tail"]
    (rec,) = [s for s in r["summary"]["scenarios"] if s["scenario"] == SEED]
    return rec


def test_control_build_passes_seed(bed, tmp_path):
    b = build_mod.build("trixie")
    assert Path(b.tarball).exists()
    install_mod.install(bed, b)
    proof = install_mod.installed_build(bed)
    assert proof["id"] == b.id and proof["verified"], proof
    rec = _run_seed(bed, tmp_path, "control")
    assert rec["verdict"] == "passed", rec.get("failure")
    # the domain log the scenario left names this build
    proof = install_mod.installed_build(bed)
    assert proof["domain_log_package"] and f"hx-{b.id}" in proof["domain_log_package"], proof


def test_mutant_a_fails_seed_with_index_error(bed, tmp_path):
    b = build_mod.build("trixie", patches=[MUTANT_A])
    install_mod.install(bed, b)
    assert install_mod.installed_build(bed)["id"] == b.id
    rec = _run_seed(bed, tmp_path, "mutant-A")
    assert rec["verdict"] == "failed"
    assert "Unable to determine device index for network device" in mutants.failure_text(rec["failure"])


def test_bisect_names_mutant_commit_and_skips_broken_one(bed, tmp_path):
    repo = tmp_path / "libvirt-git"
    demo = bisect_mod.make_demo_repo(repo)
    assert len(demo["commits"]) >= 8
    try:
        r = bisect_mod.bisect(str(repo), good=demo["base"], bad=demo["commits"][-1]["sha"], k=SEED,
                              bed_name=bed.name, out=tmp_path / "bisect")
    finally:   # the build folder of this throw-away tree would stay in the cache (~250 MB)
        import shutil
        shutil.rmtree(build_mod.build_dir_for(repo, "trixie"), ignore_errors=True)
    print(bisect_mod.format_result(r))
    assert r["first_bad"] == demo["mutant"], r
    assert demo["broken"] in r["skipped"], r["steps"]
    assert "Unable to determine device index" in (r["message"] or "")
    # reset: the repo is back on its branch, no bisect in progress
    assert not (repo / ".git" / "BISECT_START").exists()
    assert re.match(r"[0-9a-f]{40}", r["first_bad"])
