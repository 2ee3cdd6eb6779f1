"""Slow, real (issue 12): `harness explore` against a real libvirtd finds each mutant's failure and shrinks it to a
scenario of at most 4 steps, which then fails as a plain scenario on that mutant and passes on the control; on the
control a budgeted exploration finds nothing. The virsh script written with the A finding shows the same error
when run in the bed with no harness at all.

Builds come from the libvirt_build cache (control + mutants A and B, as `harness mutants --build-only` makes them);
the bed is the session's spare bed, or HX_EXPLORE_BED=NAME (a running trixie bed, left running with the control
installed). A fixed --seed keeps the sequences the same on every run (no example database is read then).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from harness import paths
from harness.libvirt_build import build as build_mod
from harness.libvirt_build import install as install_mod
from harness.libvirt_build import mutants
from harness.scenario.loader import load_file

pytestmark = [pytest.mark.slow, pytest.mark.libvirt_build,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mmdebstrap, chroot, bed)")]

SEED = "1"
A, B = "A-hostdev-alias-breaks-net-hotplug", "B-pool-interface-named-net"
INDEX_ERROR = "Unable to determine device index for network device"


@pytest.fixture
def bed(mutant_bed):
    """HX_EXPLORE_BED, or the session's spare bed (conftest.mutant_bed)."""
    return mutant_bed("HX_EXPLORE_BED")


@pytest.fixture(scope="module")
def builds():
    patches = mutants.mutant_patches("11.3.0")
    out = {"control": build_mod.build("trixie")}
    out.update({n: build_mod.build("trixie", patches=[patches[n]]) for n in (A, B)})
    return out


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("explore")


def _run(argv, out_dir, timeout) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(paths.REPO))
    p = subprocess.run(argv, cwd=paths.REPO, capture_output=True, text=True, timeout=timeout, env=env)
    print(p.stdout[-5000:], p.stderr[-3000:], sep="\n")
    return p


def explore(bed, out_dir, budget: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "harness.cli", "explore", "--bed", bed.name, "--budget", budget,
                 "--shrink-budget", "3m", "--seed", SEED], out_dir, timeout)


def scenario_run(bed, out_dir, *files) -> subprocess.CompletedProcess:
    """The written files as plain scenarios: pytest on them, nothing else."""
    return _run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *map(str, files), "--bed", bed.name,
                 "--no-bed-up", "-q", "-rfEs", "--results-dir", str(out_dir / "runs")], out_dir, 900)


def _found(p) -> tuple:
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    yaml_path = re.search(r"^scenario: (\S+\.yaml)$", p.stdout, re.M).group(1)
    sh = re.search(r"^virsh script: (\S+\.sh)$", p.stdout, re.M).group(1)
    [sc] = load_file(yaml_path)
    assert len(sc.steps) <= 4, [s.describe() for s in sc.steps]
    return yaml_path, sh, sc


def test_explore_finds_both_mutants_shrinks_them_and_the_control_stays_clean(bed, builds, out_dir):
    install_mod.install(bed, builds[A])
    a_yaml, a_sh, a_sc = _found(explore(bed, out_dir, "10m"))
    assert INDEX_ERROR in a_sc.guards, a_sc.guards
    p = scenario_run(bed, out_dir, a_yaml)
    assert p.returncode == 1 and INDEX_ERROR in p.stdout, p.stdout[-3000:]
    # the virsh script, in the bed, without the harness: libvirt's own error at the step the scenario names
    with open(a_sh) as f:
        p = subprocess.run(["ssh", "-F", str(bed.ssh_config), "bed", "sh", "-s"], stdin=f, capture_output=True,
                           text=True, timeout=300)
    assert INDEX_ERROR in p.stdout + p.stderr, p.stdout[-3000:] + p.stderr[-2000:]

    install_mod.install(bed, builds[B])
    b_yaml, _, b_sc = _found(explore(bed, out_dir, "10m"))
    assert "alias-family" in b_sc.guards, b_sc.guards
    p = scenario_run(bed, out_dir, b_yaml)
    assert p.returncode == 1 and "alias-family" in p.stdout, p.stdout[-3000:]

    install_mod.install(bed, builds["control"])
    p = scenario_run(bed, out_dir, a_yaml, b_yaml)
    assert p.returncode == 0 and "2 passed" in p.stdout, p.stdout[-3000:]
    p = explore(bed, out_dir, "150s")
    assert p.returncode == 0 and "nothing found within the budget" in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
    runs = int(re.search(r"explore: (\d+) sequences", p.stdout).group(1))
    assert runs >= 3, p.stdout      # it did explore: several sequences ran on the control
