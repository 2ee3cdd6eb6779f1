"""How `./harness.sh test` splits the project's tests over two pytest-xdist workers, and its time per module.

Why two workers: on 2 cores one half of the integration tests waits on the session's bed while the other half
waits on the spare bed (or on beds of other suites); run one after the other they took ~46 min. The halves share
no bed, so neither can disturb the other: a fault test restarts, kills or freezes the session's bed; explore and
the mutants install other libvirt builds into the spare bed.

Why a scheduler and not `xdist_group` marks: with pytest 9.2, xdist 3.8's loadgroup loses the marks (it carries
them in a node-id suffix that pytest no longer keeps: pytest-dev/pytest-xdist#1386) and spreads the tests over
both workers. The group is taken from the test's node id here instead, only under `--dist loadgroup`; any other
run (`harness run -n 2`, `pytest scenarios -n 2`) keeps xdist's own distribution.

Loaded from the root conftest.py, so the xdist controller (which collects nothing itself) has it.
"""
from __future__ import annotations

import time

import pytest

#: Tests that use the spare bed (explore, mutants, the fault test that kills a bed) or other suites' beds.
#: A file, or file::test. Everything else (unit tests, the catalog, faults, soak, bed and template tests)
#: runs in "main", on the session's bed. The halves take about the same time.
SPARE_GROUP = ("tests/integration/test_explore.py", "tests/integration/test_libvirt_build.py",
               "tests/integration/test_catalog_suites.py",
               "tests/integration/test_faults.py::test_bed_vm_killed_mid_step",
               "tests/integration/test_faults.py::test_a_disposable_bed_that_dies_mid_scenario_is_replaced_and_the_retry_passes",
               "tests/integration/test_faults.py::test_a_failure_under_a_bed_whose_kernel_complained_is_run_again_on_a_fresh_bed",
               "tests/integration/test_faults.py::test_a_bed_that_complained_and_is_not_ours_ends_the_next_scenario_at_once_naming_the_fix")


def ci_group(nodeid: str) -> str:
    """The worker group of a test: "spare" or "main"."""
    return "spare" if any(nodeid == k or nodeid.startswith((k + "::", k + "["))
                          for k in SPARE_GROUP) else "main"


def _scheduler_class():
    from xdist.scheduler import LoadScopeScheduling

    class BedGroupScheduling(LoadScopeScheduling):
        """One work unit per bed group, each to its own worker, in collection order within it."""

        def _split_scope(self, nodeid: str) -> str:
            return ci_group(nodeid)

    return BedGroupScheduling


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    return _scheduler_class()(config, log)


class ModuleTimes:
    """Sum setup + call + teardown per file (integration modules, and the scenario catalog as one line) and per
    worker, and print them with the wall time at the end, so CI's 45-minute budget can be watched per module."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.seconds: dict[str, float] = {}
        self.workers_of: dict[str, set[str]] = {}      # module -> the workers its tests ran in
        self.per_worker: dict[str, float] = {}

    def pytest_runtest_logreport(self, report):
        path = report.nodeid.split("::")[0]
        worker = getattr(report, "node", None)
        wid = getattr(worker, "gateway", None)
        wid = wid.id if wid is not None else "main process"
        self.per_worker[wid] = self.per_worker.get(wid, 0.0) + report.duration
        if path.startswith("tests/integration/") or path.startswith("scenarios/"):
            key = "scenarios/ (the catalog)" if path.startswith("scenarios/") else path
            self.seconds[key] = self.seconds.get(key, 0.0) + report.duration
            self.workers_of.setdefault(key, set()).add(wid)

    def pytest_terminal_summary(self, terminalreporter):
        if not any(k.startswith("tests/") for k in self.seconds):   # a scenario run (harness run): not ours
            return
        terminalreporter.section("time per integration module")
        for key, s in sorted(self.seconds.items(), key=lambda kv: -kv[1]):
            where = f"  [{', '.join(sorted(self.workers_of[key]))}]" if len(self.per_worker) > 1 else ""
            terminalreporter.write_line(f"{s:8.1f} s  {key}{where}")
        terminalreporter.write_line(f"{sum(self.seconds.values()):8.1f} s  total")
        for wid, s in sorted(self.per_worker.items()):
            terminalreporter.write_line(f"{s:8.1f} s  busy in {wid} (every test)")
        terminalreporter.write_line(f"{time.monotonic() - self.t0:8.1f} s  wall, from pytest's start")


def pytest_configure(config):
    # Only where reports are summed: the controller, or the one process of a run without xdist.
    if not hasattr(config, "workerinput") and not config.pluginmanager.has_plugin("hx-module-times"):
        config.pluginmanager.register(ModuleTimes(), "hx-module-times")
