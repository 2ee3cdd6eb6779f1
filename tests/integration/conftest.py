"""Fixtures shared by the integration tests."""
from __future__ import annotations

import os

import pytest

from harness.bed import lifecycle, state
from harness.errors import HarnessError

SPARE = "hx-itest-spare"


@pytest.fixture(scope="session")
def spare_bed(request):
    """A second bed of the session's suite, for tests that kill it or install another libvirt into it.

    Why shared: each boot costs 1-2 min of CI. Call it to get the bed (brought up on first use, or again
    after a test killed it); whatever libvirt the last test installed stays in it. Down at session end.
    """
    suite = request.config.getoption("hx_suite")

    def get():
        if state.load(SPARE) is not None:
            try:
                return lifecycle.find(name=SPARE)
            except HarnessError:     # killed by a fault test: `up` cleans the dead bed's state
                pass
        return lifecycle.up(suite=suite, name=SPARE)

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


class ModuleTimes:
    """Sum setup + call + teardown per file (integration modules, and the scenario catalog as one line) and
    print them at the end, so CI's 45-minute budget can be watched per module. A plugin object, registered
    below: hooks in this conftest itself would only see the reports of tests under tests/integration/."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report):
        path = report.nodeid.split("::")[0]
        if path.startswith("tests/integration/") or path.startswith("scenarios/"):
            key = "scenarios/ (the catalog)" if path.startswith("scenarios/") else path
            self.seconds[key] = self.seconds.get(key, 0.0) + report.duration

    def pytest_terminal_summary(self, terminalreporter):
        if not self.seconds:
            return
        terminalreporter.section("time per integration module")
        for key, s in sorted(self.seconds.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"{s:8.1f} s  {key}")
        terminalreporter.write_line(f"{sum(self.seconds.values()):8.1f} s  total")


def pytest_configure(config):
    if not config.pluginmanager.has_plugin("hx-module-times"):
        config.pluginmanager.register(ModuleTimes(), "hx-module-times")
