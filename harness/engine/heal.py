"""Replacing a bed that cannot be trusted any more, under a running target, so that a retry means something.

Why: TCG beds on 2-core machines now and then lose a timer interrupt; the bed's kernel then prints an RCU stall
on its console and answers nothing more. A retry on that bed only fails again. A bed a test session brought up
came from its template, so a fresh one of the same hardware (3-5 s) loses nothing; a bed a person brought up may
hold a libvirt they installed, and is never replaced.
"""
from __future__ import annotations

import os
import subprocess

from filelock import ReadWriteLock

from harness import paths
from harness.bed import lifecycle
from harness.bed.state import BedInfo
from harness.engine import session
from harness.errors import HarnessError
from harness.progress import say

#: names the process (`harness run`, bench.catalog) whose beds a pytest session it started may replace
OWNER_ENV = "HX_BED_OWNER"


def own(bed: BedInfo, owner: str) -> None:
    """Mark a bed this process brought up as replaceable by it and by the pytest sessions it starts."""
    lifecycle.mark_disposable(bed, owner)
    os.environ[OWNER_ENV] = owner


def owners(sid: str) -> tuple[str, ...]:
    """Who may replace a bed of test session `sid`: the session itself, and the process that started it (own)."""
    return (sid, os.environ.get(OWNER_ENV, sid))


def disposable(bed: BedInfo, owners: tuple[str, ...]) -> bool:
    """A QEMU bed that one of `owners` (this test session, or the `harness run` that started it: HX_BED_OWNER)
    brought up from its template, as its brought-up-by says. Not a bed another session owns: a child run on the
    parent's bed (a fault test freezes it on purpose) must not replace it under the parent."""
    marker = bed.path / "brought-up-by"
    return bed.via == "qemu" and marker.exists() and marker.read_text() in owners


def why_broken(bed: BedInfo, probe_ssh: bool) -> str:
    """'' or why the bed cannot be trusted: its VM is gone, its kernel complained, or (probe_ssh, asked after an
    infrastructure error) it does not answer SSH within 20 s."""
    why = lifecycle.trouble(bed)
    if why or not probe_ssh:
        return why
    try:
        answered = bed.ssh("true", timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        answered = False
    return "" if answered else "it does not answer SSH within 20 s"


def untrusted(bed: BedInfo, why: str) -> HarnessError:
    """The error for a broken bed that may not be replaced, with how to go on."""
    return HarnessError(f"the bed {bed.name} cannot be trusted: {why}. It is not replaced: this run did not bring "
                        "it up (it may hold a libvirt someone installed, or another run's work)",
                        hint=f"take it down ('harness bed down --name {bed.name}') and run again: a run that brings "
                             "up its own beds replaces them itself")


def heal(t: session.Target, probe_ssh: bool, owners: tuple[str, ...]) -> str:
    """Replace the target's bed if it is broken and disposable, and point the target at the new one; returns
    why it was replaced ('' if it was well). A broken bed that is not disposable raises HarnessError. Other
    workers' scenarios on the broken bed end first (the bed's write lock); a worker that comes second finds the
    bed replaced already and only points its target at it."""
    if t.bed is None or (t.bed.via != "qemu" and not probe_ssh):    # asked before every scenario: kept cheap
        return ""
    why = why_broken(t.bed, probe_ssh)
    if not why:
        return ""
    if not disposable(t.bed, owners):
        # every scenario after this one would wait out the same timeouts on it (100 s each): stop now, and say how
        raise untrusted(t.bed, why)
    if t.reaper is not None:
        t.reaper.drain()          # this worker's teardowns hold read locks on the bed
    if t.lock_dir.exists():
        with ReadWriteLock(str(t.lock_dir / "bed.rwlock"), is_singleton=False).write_lock():
            new = lifecycle.replace(t.bed, why)
    else:                         # another worker replaced it already (the folder went with the old bed)
        new = lifecycle.replace(t.bed, why)
    session.rebind(t, new)
    say(f"bed {new.name}: the next attempt runs on a fresh bed (QEMU pid {new.pid}); the old bed's logs are in "
        f"{paths.results_dir() / 'beds-lost'}")
    return why
