"""Worker processes for test_leases.py. Kept apart from the test module so a child process
imports only the leases code (not pytest): the forkserver preloads this module once and every
worker is a cheap fork of it."""
from __future__ import annotations

import time
from pathlib import Path

from harness.engine.devices import HostNic, Leases
from harness.errors import HarnessError


def hold_one_vf(lock_dir: str, nics: list[HostNic], wait: float, hold: float, barrier, out) -> None:
    """Lease one VF once every worker is ready; report when it was held."""
    barrier.wait(timeout=30)
    t0 = time.monotonic()
    try:
        with Leases(Path(lock_dir), nics, wait=wait) as ls:
            nic = ls.lease("vf1", "vf")
            got = time.monotonic()
            time.sleep(hold)
            out.put(("ok", nic.pci, got, time.monotonic()))
    except HarnessError as e:
        out.put(("failed", e.message, t0, time.monotonic()))


def take_index(lock_dir: str, barrier, out) -> None:
    """Take a subnet index at the same moment as the others, and hold it until all have one."""
    with Leases(Path(lock_dir), [], wait=0) as ls:
        barrier.wait(timeout=30)
        out.put(ls.lease_index("subnet", 250))
        barrier.wait(timeout=30)
