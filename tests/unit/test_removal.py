"""journal.remove_domain, the one way a domain is removed (the orphan sweep and a scenario's cleanup), and
the cleanup's rule that a removal that fails is a problem noted, never an exception that stops the rest."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import libvirt
import pytest

from harness.engine import cleanup
from harness.engine.journal import UNDEFINE_FLAGS, remove_domain
from harness.engine.run_state import RunState
from harness.scenario.loader import load_text


class Dom:
    def __init__(self, log, active=True, persistent=True, fail=()):
        self.log, self.active, self.persistent, self.fail = log, active, persistent, fail

    def isActive(self):
        return self.active

    def isPersistent(self):
        return self.persistent

    def destroy(self):
        if "destroy" in self.fail:
            raise _error("Failed to terminate process 4242 with SIGKILL: Device or resource busy")
        self.log.append("destroy")

    def undefineFlags(self, flags):
        self.log.append(("undefine", flags))


def _error(message: str) -> libvirt.libvirtError:
    """A libvirtError that says `message`. libvirtError takes its text from the thread's last libvirt error when
    there is one: in CI's pytest process the real connections of the integration tests had left one ('End of
    file while reading data'), and the fake destroy 'said' that instead."""
    libvirt.virResetLastError()
    return libvirt.libvirtError(message)


class Conn:
    """Runs each call at once and notes it with its deadline."""

    def __init__(self, log, dom=None):
        self.log, self.closed = log, None
        self.virconn = SimpleNamespace(lookupByName=lambda n: dom,
                                       networkLookupByName=lambda n: (_ for _ in ()).throw(_error("no")))

    def ensure(self, reconnect_timeout=None):
        pass

    def call(self, fn, *a, timeout=None):
        self.log.append(("call", fn.__name__, timeout))
        return fn(*a)


def test_a_running_persistent_domain_is_destroyed_then_undefined_each_in_one_bounded_call():
    log: list = []
    remove_domain(Conn(log), Dom(log))
    assert log == [("call", "destroy", 120), "destroy", ("call", "undefine", 120), ("undefine", UNDEFINE_FLAGS)]
    assert UNDEFINE_FLAGS == libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA


def test_a_shut_off_or_transient_domain_gets_only_what_applies():
    log: list = []
    remove_domain(Conn(log), Dom(log, active=False))
    remove_domain(Conn(log), Dom(log, persistent=False))
    assert [x for x in log if x[0] != "call"] == [("undefine", UNDEFINE_FLAGS), "destroy"]


def test_without_each_a_failure_raises_and_nothing_after_it_runs():
    log: list = []
    with pytest.raises(libvirt.libvirtError):
        remove_domain(Conn(log), Dom(log, fail=("destroy",)))
    assert ("call", "undefine", 120) not in log


def test_the_cleanup_times_each_removal_and_goes_on_after_a_failed_destroy(tmp_path):
    log: list = []
    [sc] = load_text("guards: g\ndomain: {devices: []}\nsteps:\n  - start:\n", "s.yaml")
    t = SimpleNamespace(bed=None, conn=Conn(log, Dom(log, fail=("destroy",))), lock_dir=tmp_path, worker="gw0",
                        run_tag="t0", kvm_available=False, libvirt_seconds=0.0)
    run = RunState(sc, t, Path(tmp_path / "art"))
    run.art.mkdir()
    cleanup.cleanup(run)
    assert ("undefine", UNDEFINE_FLAGS) in log, "undefine still runs after destroy failed"
    (problem,) = run.cleanup_problems
    assert problem.startswith(f"destroy {run.dom_name}: Failed to terminate process 4242"), problem
    assert [p["phase"] for p in run.phases] == ["destroy", "undefine", "remove networks"]
    assert (run.art / "cleanup-problems.txt").read_text() == problem + "\n"


class Named(Dom):
    def __init__(self, log, name):
        super().__init__(log)
        self._name = name

    def name(self):
        return self._name

    def destroy(self):
        self.log.append(f"destroy {self._name}")

    def undefineFlags(self, flags):
        self.log.append(f"undefine {self._name}")

    def undefine(self):
        self.log.append(f"undefine {self._name}")


def test_sweep_removes_unowned_hx_domains_then_networks_and_leftovers_names_them(tmp_path):
    from harness.engine import session
    from harness.engine.journal import Entry, Journal
    log: list = []
    doms = [Named(log, n) for n in ("hx-mine", "hx-old", "guest")]
    nets = [Named(log, n) for n in ("hx-mine-lan", "hx-old-lan", "default")]

    def list_networks(flags):
        log.append("list networks")
        return nets

    conn = Conn(log)
    conn.virconn = SimpleNamespace(listAllDomains=lambda flags: doms, listAllNetworks=list_networks)
    t = SimpleNamespace(conn=conn, lock_dir=tmp_path, nics=[], bed=None)
    Journal(tmp_path).write(Entry(domain="hx-mine", networks=["hx-mine-lan"]))     # this live process owns them
    assert session.leftovers(t) == ["domain hx-old", "network hx-old-lan"]
    log.clear()
    assert session.sweep(t) == ["domain hx-old", "network hx-old-lan"]
    removals = [x for x in log if isinstance(x, str)]
    assert removals == ["destroy hx-old", "undefine hx-old", "list networks", "destroy hx-old-lan",
                        "undefine hx-old-lan"], "networks are listed once the domains are gone"
