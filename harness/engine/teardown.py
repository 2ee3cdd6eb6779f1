"""Teardown of a passed scenario, overlapped with the next scenario's work.

Why: destroying a domain that holds VFs costs 5-9 s in a TCG bed (libvirt hands each VF back to
igbvf, whose probe waits on the emulated PF's mailbox), and the harness has nothing to do meanwhile.
A scenario whose steps all passed hands its teardown (destroy, undefine, its own networks, the driver
check) to a thread of this worker's reaper. That thread holds what kept the scenario apart from the
others until it is done: its device leases, its journal entry and a read lock on the bed (so a
daemon-restart scenario still waits for it). The next scenario starts meanwhile.

What failed, was interrupted or met a fault is torn down at once, as before, and so is a scenario
that restarts the daemon. A teardown that leaves something behind turns its scenario's verdict into
`error` when the reaper reports it (at the next scenario, or at the end of the run, which then fails).
HX_OVERLAP_TEARDOWN=0 tears every scenario down before the next one starts.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from harness.engine.conn import Conn, _block_signals

WAIT_SLICE = 1.0      # waits in slices, so Ctrl-C reaches the main thread at once
DRAIN_TIMEOUT = 900.0


def enabled() -> bool:
    return os.environ.get("HX_OVERLAP_TEARDOWN", "1") != "0"


@dataclass
class Job:
    scenario: str
    fn: Callable[[object], None]                 # fn(target view), runs in the job's thread
    on_done: Callable[["Job"], None] | None      # called in the main thread by collect()/drain()
    done: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    error: str | None = None
    reported: bool = False


class Reaper:
    """Per worker: runs handed-off teardowns, each in its own thread, on a libvirt connection of its own
    (its calls neither queue behind the next scenario's nor count in its libvirt time)."""

    def __init__(self, t):
        self.t = t
        self.jobs: list[Job] = []
        self._view = None
        self._view_lock = threading.Lock()

    def view(self):
        """The target as teardown threads see it: same bed and leases, own connection and SSH clock."""
        with self._view_lock:
            if self._view is None:
                self._view = dataclasses.replace(self.t, conn=Conn(self.t.uri), ssh_seconds=0.0,
                                                 shared_networks=None, reaper=None)
                self._view.conn.abandon_if = self.t.conn.abandon_if
            return self._view

    def submit(self, scenario: str, fn: Callable[[Callable[[], object]], None],
               on_done: Callable[[Job], None] | None) -> Job:
        """Run fn(get_view) in a thread of its own. fn asks for the view when it needs it: the first one opens
        a libvirt connection (~0.25 s under TCG), and a teardown that first takes a lock the scenario waits for
        should not make it wait for that too."""
        job = Job(scenario=scenario, fn=fn, on_done=on_done)
        self.jobs.append(job)

        def run() -> None:
            _block_signals()
            try:
                fn(self.view)
            except BaseException as e:   # reported as the scenario's cleanup problem, never lost
                job.error = f"{type(e).__name__}: {getattr(e, 'message', None) or e}"
            finally:
                job.seconds = time.monotonic() - job.started
                job.done.set()

        threading.Thread(target=run, name=f"teardown-{scenario[:30]}", daemon=True).start()
        return job

    def pending(self) -> list[Job]:
        return [j for j in self.jobs if not j.done.is_set()]

    def collect(self) -> list[Job]:
        """Report the teardowns that have finished (never waits)."""
        out = []
        for j in self.jobs:
            if j.done.is_set() and not j.reported:
                j.reported = True
                if j.on_done is not None:
                    j.on_done(j)
                out.append(j)
        self.jobs = [j for j in self.jobs if not j.reported]
        return out

    def drain(self, timeout: float = DRAIN_TIMEOUT) -> list[Job]:
        """Wait for every teardown, then report them. A teardown still running after `timeout` is
        reported as such (its journal entry stays, so the next session on the bed sweeps it)."""
        deadline = time.monotonic() + timeout
        for j in list(self.jobs):
            while not j.done.wait(WAIT_SLICE):
                if time.monotonic() > deadline:
                    j.error = f"teardown still running after {timeout:.0f} s"
                    j.done.set()
                    break
        return self.collect()

    def close(self) -> list[Job]:
        out = self.drain()
        if self._view is not None:
            try:
                self._view.conn.close()
            except Exception:    # closing a connection to a dead bed: nothing left to do
                pass
            self._view = None
        return out
