"""Removing what one run made once its steps are over: the domain, its own networks, a libvirt it
upgraded, and the check that every leased VF is back on its host driver; at once, or handed to this
worker's reaper so that it overlaps the next scenario (engine/teardown.py says why).

Why a room of its own: it runs in the main thread or in a teardown thread on a connection of its own
(`t`, the reaper's view of the target), and what it cannot remove becomes the run's cleanup_problems,
never an exception: the journal entry then stays, and the next session on the bed sweeps the rest.
"""
from __future__ import annotations

import threading
from typing import Callable

import libvirt
from filelock import ReadWriteLock

from harness.engine import artefacts, session, teardown
from harness.engine.devices import Leases
from harness.engine.journal import Journal, kill_orphan_qemu, on_vfio, remove_domain, remove_network
from harness.engine.run_state import RunState
from harness.engine.session import Target
from harness.errors import HarnessError
from harness.libvirt_build import upgrade
from harness.progress import say


def cleanup(run: RunState, t: Target | None = None) -> None:
    """Remove the domain and networks and check every leased VF is back on its host driver.
    `t`: the target view of a teardown thread (its own connection); default the run's target."""
    t = t or run.t
    c = t.conn
    problems = []
    try:
        failed = session.bed_trouble(t)
        if failed:             # nothing will answer: do not wait on every call's timeout to learn it
            raise HarnessError(f"the bed {t.bed.name} failed: {failed}")
        c.ensure(reconnect_timeout=90)     # a libvirtd restart in a TCG bed can take 30 s and more
    except HarnessError as e:
        run.cleanup_problems = [f"cleanup deferred, the bed does not answer ({e.message}): the next session "
                                f"on this bed removes {run.dom_name} and its networks (journal "
                                f"{run.t.lock_dir / 'journal'})"]
        artefacts.write(run, "cleanup-problems.txt", run.cleanup_problems[0] + "\n")
        return
    try:
        d = c.call(c.virconn.lookupByName, run.dom_name)
    except (libvirt.libvirtError, HarnessError):
        d = None
    if d is not None:
        def each(what: str, call: Callable[[], object]) -> None:   # its own phase; a failure is noted, not raised
            try:
                with run.phase(what, t):
                    call()
            except (libvirt.libvirtError, HarnessError) as e:
                problems.append(f"{what} {run.dom_name}: {e}")
        remove_domain(c, d, each)
    if t.bed is not None:
        try:
            with run.phase("orphaned QEMU", t):
                killed = kill_orphan_qemu(t, run.dom_name)
        except HarnessError as e:
            problems.append(f"could not look for an orphaned QEMU of {run.dom_name}: {e.message}")
        else:
            if killed:      # libvirt lost the domain (the step that did it has failed already): say so
                say("; ".join(killed), warn=True)
                artefacts.write(run, "orphaned-qemu.txt", "\n".join(killed) + "\n")
    with run.phase("remove networks", t):
        for sym in run.sc.networks:
            if sym in run.shared:
                continue
            try:
                n = c.call(c.virconn.networkLookupByName, run.r.networks[sym])
            except (libvirt.libvirtError, HarnessError):
                continue
            try:
                remove_network(c, n)
            except (libvirt.libvirtError, HarnessError) as e:
                problems.append(f"remove network {n.name()}: {e}")
    if run.upgraded and t.bed is not None:
        with run.phase("restore the original libvirt", t):
            try:
                upgrade.restore(t.bed)
                c.reconnect(timeout=120)
            except HarnessError as e:
                problems.append(f"restore the original libvirt: {e.message}")
    if t.bed is not None and run.r.addrs:
        vfs = [str(a) for s, a in run.r.addrs.items() if run.sc.devices[s].kind in ("vf", "e1000e")]
        if vfs:
            try:
                with run.phase("check device drivers", t):
                    bound = on_vfio(t, vfs)
                if bound:
                    problems.append("devices not returned to their host driver: "
                                    + ", ".join(f"{a} vfio-pci" for a in bound))
            except HarnessError as e:
                problems.append(f"could not check the leased devices' drivers: {e.message}")
    if problems:
        run.cleanup_problems = problems     # first: the file below may not fit on the results disk
        artefacts.write(run, "cleanup-problems.txt", "\n".join(problems) + "\n")


def hand_off(run: RunState, leases: Leases, journal: Journal,
             on_done: Callable[[teardown.Job], None] | None) -> teardown.Job:
    """Give a passed run's cleanup to this worker's reaper; returns once the teardown holds its own read
    lock on the bed. The job releases the leases and removes the journal entry (if all went)."""
    holds_lock = threading.Event()

    def job(get_view: Callable[[], Target]) -> None:
        rw = ReadWriteLock(str(run.t.lock_dir / "bed.rwlock"), is_singleton=False)
        try:
            with rw.read_lock():
                holds_lock.set()          # the scenario goes on now; the view's connection opens meanwhile
                view = get_view()
                cleanup(run, view)
                if not run.cleanup_problems:
                    journal.remove(run.dom_name)
                if view.bed is not None and run.r.addrs:
                    # The VFs just went back to igbvf: let udev rename them before the next holder
                    # (libvirt 9.0 reads the kernel's first name otherwise; see vf-returned-to-pool).
                    with run.phase("udev settle", view):
                        view.ssh("udevadm settle -t 10", timeout=30)
        finally:
            holds_lock.set()
            leases.__exit__(None, None, None)

    if run.t.reaper is None:
        run.t.reaper = teardown.Reaper(run.t)
    submitted = run.t.reaper.submit(run.sc.name, job, on_done)
    # Ours goes when we return: the teardown's own read lock must be held first (else a daemon
    # restart elsewhere could slip in between and find this domain still there).
    while not holds_lock.wait(teardown.WAIT_SLICE):
        pass
    return submitted
