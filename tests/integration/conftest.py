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
