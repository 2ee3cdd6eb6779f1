"""oracle.step_error: a step's libvirt error against its `expect.error` (judged in the runner until issue 14)."""
from __future__ import annotations

import pytest

from harness.oracle import Violation, step_error

POOL = "internal error: network 'hx-pool' requires exclusive access to interfaces, but none are available"


def test_no_error_and_none_expected_passes():
    assert step_error(None, None) is None


def test_an_unexpected_error_is_the_libvirt_error_check_with_libvirts_text():
    assert step_error(None, POOL) == Violation("libvirt-error", "the step to succeed", POOL)


def test_an_expected_error_that_did_not_come():
    assert step_error("none are available", None) == Violation(
        "expect", "the step to fail with 'none are available'", "it succeeded")


@pytest.mark.parametrize("want", ["none are available", "re:requires exclusive .* none are avail", "re:^internal"])
def test_an_expected_error_matches_as_substring_or_after_re_as_a_regular_expression(want):
    assert step_error(want, POOL) is None


@pytest.mark.parametrize("want", ["None are available", "re:^none", "re:exclusive$"])
def test_another_error_than_the_expected_one(want):
    assert step_error(want, POOL) == Violation("expect", f"error matching {want!r}", repr(POOL))
