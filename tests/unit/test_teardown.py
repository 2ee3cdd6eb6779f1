"""The reaper that overlaps a passed scenario's teardown with the next scenario: nothing is lost or hidden."""
from __future__ import annotations

import threading
import time

import pytest

from harness.engine import teardown


@pytest.fixture
def reaper(monkeypatch):
    r = teardown.Reaper(t=object())
    monkeypatch.setattr(teardown.Reaper, "view", lambda self: "view")
    return r


def test_a_finished_teardown_is_reported_once_in_the_callers_thread(reaper):
    seen = []
    main = threading.get_ident()
    job = reaper.submit("s1", lambda get_view: seen.append(("ran", get_view())),
                        lambda j: seen.append(("done", threading.get_ident() == main, j.error)))
    job.done.wait(5)
    assert [j.scenario for j in reaper.collect()] == ["s1"]
    assert seen == [("ran", "view"), ("done", True, None)]
    assert reaper.collect() == [] and reaper.jobs == []


def test_collect_never_waits_for_a_running_teardown(reaper):
    gate = threading.Event()
    reaper.submit("slow", lambda view: gate.wait(5), None)
    t0 = time.monotonic()
    assert reaper.collect() == []
    assert time.monotonic() - t0 < 0.5
    assert [j.scenario for j in reaper.pending()] == ["slow"]
    gate.set()
    assert [j.scenario for j in reaper.drain(timeout=5)] == ["slow"]


def test_an_exception_in_a_teardown_becomes_its_error(reaper):
    got = []

    def boom(view):
        raise RuntimeError("destroy hung up")

    reaper.submit("s2", boom, got.append)
    reaper.drain(timeout=5)
    assert got and got[0].error == "RuntimeError: destroy hung up"


def test_drain_gives_up_after_its_timeout_and_says_so(reaper):
    gate = threading.Event()
    got = []
    reaper.submit("stuck", lambda view: gate.wait(10), got.append)
    reaper.drain(timeout=0.1)
    gate.set()
    assert got and got[0].error == "teardown still running after 0 s"


def test_overlap_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("HX_OVERLAP_TEARDOWN", "0")
    assert not teardown.enabled()
    monkeypatch.delenv("HX_OVERLAP_TEARDOWN")
    assert teardown.enabled()

