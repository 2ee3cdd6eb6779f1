"""Fixtures shared by the integration tests."""
from __future__ import annotations

import os

import pytest

from harness.bed import lifecycle, state
from harness.engine import heal, session
from harness.errors import HarnessError

SPARE = "hx-itest-spare"

#: What marks a failure as the bed VM's and not the code's: its kernel's complaint, its QEMU gone (quoted by the
#: harness in what it prints), or BedFault (below). Tests on a bed are re-run once on such a failure.
BED_FAULT = [r"BedFault", r"the bed's kernel reports trouble", r"is gone \(its QEMU", r"its VM is gone",
             r"QEMU exited while booting"]
#: Tests that kill a bed (or make its kernel complain) themselves: their failure is never the bed's fault, and they are never re-run.
NO_RERUN = ("test_bed_vm_killed_mid_step",
            "test_a_disposable_bed_that_dies_mid_scenario_is_replaced_and_the_retry_passes",
            "test_a_failure_under_a_bed_whose_kernel_complained_is_run_again_on_a_fresh_bed",
            "test_a_bed_that_complained_and_is_not_ours_ends_the_next_scenario_at_once_naming_the_fix")


class BedFault(Exception):
    """A test failed, and meanwhile the bed it ran on died or its kernel complained (an RCU stall under TCG):
    the failure is the bed VM's. Raised from the test's own error, which is kept as its cause."""


def _bed_used(item) -> str | None:
    """'spare', 'session' (the bed the scenarios use) or None: the bed a test runs on, if it may be re-run.
    A re-run gets the fresh bed only through fixtures that ask for it per test: no module-scoped bed fixtures."""
    if not isinstance(item, pytest.Function) or item.name in NO_RERUN:
        return None
    names = item.fixturenames
    if "spare_bed" in names or "mutant_bed" in names:
        return "spare"
    return "session" if "hx_target" in names else None


def _trouble(item, which: str) -> str:
    if which == "spare":
        b = state.load(SPARE)
        return lifecycle.trouble(b) if b is not None else ""
    t = getattr(item.config._hx, "_target", None)
    return session.bed_trouble(t) if t is not None else ""


def pytest_collection_modifyitems(config, items):
    """Tests on a bed are re-run once (pytest-rerunfailures) when the bed VM, not the test, failed: a TCG bed on
    these 2-core machines stalls now and then (its kernel's RCU stall: in 7 of 11 CI runs on 2026-12-05),
    and the re-run gets a fresh bed (spare_bed, or HarnessSession.heal for the session's bed). The re-run
    shows in the report as R, with the first failure and the bed's complaint."""
    for item in items:
        if _bed_used(item):
            item.add_marker(pytest.mark.flaky(reruns=1, only_rerun=BED_FAULT))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    try:
        return (yield)
    except Exception as e:
        which = _bed_used(item)
        why = _trouble(item, which) if which else ""
        if not why:
            raise
        msg = f"the {which} bed failed under this test: {why}"
        try:       # replaced now: the re-run, and every test after it, finds a fresh bed
            if which == "session":
                item.config._hx.heal(probe_ssh=False)
            else:
                lifecycle.replace(state.load(SPARE), why)
        except Exception as h:
            msg += f"; replacing it failed: {h}"
        raise BedFault(msg) from e


@pytest.fixture(scope="session")
def spare_bed(request):
    """A second bed of the session's suite, for tests that kill it or install another libvirt into it.

    Why shared: each boot costs 1-2 min of CI. Call it to get the bed (brought up on first use, or again
    after a test killed it); whatever libvirt the last test installed stays in it. Down at session end.
    """
    suite = request.config.getoption("hx_suite")

    def get():
        b = state.load(SPARE)
        if b is not None:
            why = heal.why_broken(b, probe_ssh=True)
            if why and lifecycle.alive(b):       # stalled: a fresh one (its logs kept in results/beds-lost/)
                return lifecycle.replace(b, why)
            try:
                return lifecycle.find(name=SPARE)
            except HarnessError:     # killed by a fault test: `up` cleans the dead bed's state (and keeps its logs)
                pass
        # 4096 MiB: the VFs' registers are out of reach (see harness/bed/state.py). Explore and the mutants
        # hot-plug VFs for minutes on this bed; with reachable registers its QEMU (10.0.2, TCG) died on
        # 'iotlb_to_section: Assertion ...' or its kernel stalled in 3 of the last 4 CI runs (2026-12-06).
        return lifecycle.up(suite=suite, name=SPARE, memory_mib=4096)

    try:
        yield get
    finally:
        if state.load(SPARE) is not None:
            lifecycle.down(SPARE)


@pytest.fixture(scope="session")
def mutant_bed(request, spare_bed):
    """For tests that install libvirt builds (the mutants are patches against 11.3.0): call it with an
    environment variable's name to get the running bed it names, else the session's spare trixie bed (it keeps
    the last build; taken down at session end)."""
    def get(env_var: str):
        name = os.environ.get(env_var)
        if name:
            return lifecycle.find(name=name)
        if request.config.getoption("hx_suite") != "trixie":
            pytest.fail("the mutants are written against libvirt 11.3.0: run these tests with --suite trixie")
        return spare_bed()
    return get
