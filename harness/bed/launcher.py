"""What a bed launcher is: the small interface every way of starting a bed implements.

Why: the bring-up skeleton (lock, reuse, bed dir, keys, known_hosts, cleanup on failure) is the same
for every launcher and lives once in harness/bed/lifecycle.py; what differs (how the VM starts, how it
is told apart from a dead one, what is left to stop) is a ``Launcher``. lifecycle.py picks one from
its ``LAUNCHERS`` table by ``BedInfo.via``; implementations (harness/bed/launch_qemu.py,
harness/bed/vagrant.py) import this module and never lifecycle.py, so no module imports back.

This module also holds the one readiness wait (SSH, then libvirtd) both launchers end with.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import paths
from harness.bed.image import Image
from harness.bed.state import MEMORY_MIB, BedInfo
from harness.errors import HarnessError
from harness.progress import say

BOOT_TIMEOUT = 420.0


@dataclass(frozen=True)
class UpOptions:
    """What 'bed up' was asked for, beyond suite and name."""
    memory_mib: int = MEMORY_MIB
    cpus: int = 2
    vfs: int = 4
    port: int | None = None          # QEMU: the host port SSH is forwarded from (None: a free one)
    accel: str | None = None         # forced accelerator (kvm | tcg), None: detect
    timeout: float = BOOT_TIMEOUT
    cold: bool | None = None         # QEMU: boot cold, no template used or saved (None: HX_BED_COLD)


class Launcher:
    """One way of starting a bed. lifecycle.up calls, in order: ``check`` (before the lock),
    ``prepare`` (under the lock, before an earlier dead bed is cleaned up or anything is created),
    then ``up`` on a fresh BedInfo whose folder already holds the keys and the pinned known_hosts.
    If ``up`` raises, ``failed`` may keep logs, then ``down`` and the folder's removal follow."""

    via = ""

    def check(self, opts: UpOptions) -> None:
        """Refuse early (missing tools, rights, bad options): nothing is locked or created yet."""

    def prepare(self, name: str, opts: UpOptions) -> dict:
        """Checks that must pass before anything of an earlier bed is removed; returns facts for
        ``BedInfo.extra``."""
        return {}

    def clear_leftovers(self, name: str) -> None:
        """Remove what a bed of this name may have left without a state file."""

    def up(self, bed: BedInfo, img: Image, opts: UpOptions) -> None:
        """Start the VM of the prepared bed and return once libvirtd in it answers."""
        raise NotImplementedError

    def failed(self, bed: BedInfo) -> None:
        """After a failed ``up``, before cleanup: keep what a person needs to see why."""

    def down(self, bed: BedInfo) -> list[str]:
        """Stop everything this launcher started for the bed. Returns what was done, for people."""
        raise NotImplementedError

    def alive(self, bed: BedInfo) -> bool:
        raise NotImplementedError

    def status(self, bed: BedInfo) -> str:
        """The VM's state in a few words (QMP status, libvirt domstate, or why it is not running)."""
        raise NotImplementedError

    def died(self, bed: BedInfo) -> bool:
        """True when the VM is known to have exited (a wait for readiness stops at once)."""
        return False

    def wait_ready(self, bed: BedInfo, timeout: float = BOOT_TIMEOUT) -> None:
        wait_ready(bed, timeout=timeout, died=lambda: self.died(bed))

    def describe(self, bed: BedInfo) -> str:
        """How a person finds the running bed, for the 'already up' line."""
        return f"SSH {bed.ssh_host}:{bed.ssh_port}"


def libvirtd_wait_sh(seconds: int) -> str:
    """Bed-side shell for the places that restart libvirtd inside one SSH command (install, upgrade and its
    restore, reviving a hung daemon): exit 0 once libvirtd answers, or print its journal tail and exit 3
    after `seconds`. Polled every 0.25 s: a restart is waited for on every upgrade step and its rollback."""
    return (f"for i in $(seq 1 {seconds * 4}); do virsh -c qemu:///system version --daemon >/dev/null 2>&1 && exit 0; "
            "sleep 0.25; done; journalctl -u libvirtd -n 30 --no-pager; exit 3")


def wait_ready(bed: BedInfo, timeout: float = BOOT_TIMEOUT, died: Callable[[], bool] | None = None) -> None:
    """Wait for SSH and then libvirtd; on timeout, fail with the serial log's tail. `died` tells a VM
    that exited while booting (fail at once instead of waiting out the timeout)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    stage = "ssh"
    last = ""
    while time.monotonic() < deadline:
        if died is not None and died():
            raise HarnessError(f"bed {bed.name}: QEMU exited while booting\n{serial_tail(bed)}")
        try:
            if stage == "ssh":
                p = bed.ssh("true", timeout=20)
                if p.returncode == 0:
                    say(f"bed {bed.name}: SSH up after {time.monotonic() - t0:.0f} s")
                    stage = "libvirtd"
                else:
                    last = p.stderr.strip()
            if stage == "libvirtd":
                p = bed.ssh("virsh -c qemu:///system version --daemon", timeout=30)
                if p.returncode == 0:
                    say(f"bed {bed.name}: libvirtd answers after {time.monotonic() - t0:.0f} s")
                    return
                last = (p.stderr or p.stdout).strip()
        except subprocess.TimeoutExpired:
            last = f"{stage} probe timed out"
        time.sleep(2)
    raise HarnessError(f"bed {bed.name}: not ready after {timeout:.0f} s (waiting for {stage}: {last})\n"
                       f"{serial_tail(bed)}", hint=f"serial log: {bed.serial_log}")


#: what the bed's kernel prints on its console when it, not libvirt or the harness, is in trouble
_KERNEL_TROUBLE = re.compile(r"rcu: INFO: \S+ detected stalls|INFO: task .* blocked for more than|Kernel panic|"
                             r"BUG: |Oops: |general protection fault")   # "BUG: " covers soft lockups too


def kernel_trouble(bed: BedInfo) -> str:
    """'' or one sentence quoting the bed kernel's first complaint on its serial console (and how many followed).

    Why: a bed whose vCPU stopped taking timer interrupts (an RCU stall, seen once under TCG) still answers
    pings and half an SSH login, so every command just times out; the console says why."""
    try:
        text = Path(bed.serial_log).read_text(errors="replace")
    except OSError:
        return ""
    hits = [ln.strip() for ln in text.splitlines() if _KERNEL_TROUBLE.search(ln)]
    if not hits:
        return ""
    more = f", and {len(hits) - 1} more such lines" if len(hits) > 1 else ""
    return f"the bed's kernel reports trouble: '{hits[0][:160]}'{more} (serial log: {bed.serial_log})"


def qemu_said(bed: BedInfo, lines: int = 3) -> str:
    """The last lines QEMU wrote to its log (-D, which also takes its stderr): an assertion or an error_report
    says why it exited. '' when there is none (a Vagrant bed, or QEMU said nothing). Its start-up warnings (NICs
    with no peer: by design, nothing leaves the bed) are not last words."""
    try:
        text = bed.qemu_log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    said = [ln.strip() for ln in text if ln.strip() and ": warning: " not in ln]
    return " | ".join(said[-lines:])


def serial_tail(bed: BedInfo, lines: int = 20) -> str:
    try:
        text = bed.serial_log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no serial log)"
    return "--- serial log tail ---\n" + "\n".join(text[-lines:])


#: what is kept of a lost or failed bed (never its keys or its disk)
KEPT_FILES = ("serial.log", "qemu.log", "qemu.cmdline", "state.json")


def keep_logs(bed: BedInfo, why: str, extra: tuple[Path, ...] = ()) -> Path | None:
    """Copy a failed bed's console, QEMU logs (and a launcher's `extra` logs) to results/beds-lost/ before
    its folder goes: the evidence of a stall, a QEMU crash or a failed up must outlive the bed."""
    dest = paths.results_dir() / "beds-lost" / f"{time.strftime('%Y%m%dT%H%M%S')}-{bed.name}"
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for f in [bed.path / f for f in KEPT_FILES] + list(extra):
            if f.exists():
                shutil.copy2(f, dest / f.name)
        (dest / "why.txt").write_text(why + "\n")
    except OSError as e:
        say(f"bed {bed.name}: could not keep its logs in {dest}: {e}", warn=True)
        return None
    return dest
