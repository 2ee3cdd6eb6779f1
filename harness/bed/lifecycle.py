"""Bed lifecycle in one place: up, wait until libvirtd answers, down (leaving nothing behind).

The bring-up skeleton is here once for every launcher: one 'bed up'/'bed down' per name at a time
(lock), reuse of a live bed, cleanup of a dead one, a fresh 0700 bed folder with the bed's own SSH
client and host keys and the pinned known_hosts, and removal of everything on failure. How the VM
starts is the launcher's (harness/bed/launcher.py), chosen by ``via`` from ``LAUNCHERS``: QEMU
(harness/bed/launch_qemu.py, with templates) or Vagrant (harness/bed/vagrant.py).
"""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path

from filelock import FileLock, Timeout

from harness.bed import image as image_mod
from harness.bed import state as state_mod
from harness.bed.launch_qemu import QemuLauncher
from harness.bed.launcher import BOOT_TIMEOUT, Launcher, UpOptions, keep_logs, kernel_trouble, qemu_said
from harness.bed.state import BedInfo
from harness.bed.vagrant import VagrantLauncher
from harness.errors import HarnessError
from harness.progress import say

#: --via NAME -> its launcher; the one place a launcher is chosen
LAUNCHERS: dict[str, Launcher] = {"qemu": QemuLauncher(), "vagrant": VagrantLauncher()}


def launcher_for(via: str) -> Launcher:
    try:
        return LAUNCHERS[via]
    except KeyError:
        raise HarnessError(f"unknown launcher {via!r}",
                           hint="use " + " or ".join(f"--via {v}" for v in LAUNCHERS)) from None


def default_name(suite: str, via: str = "qemu") -> str:
    return suite if via == "qemu" else f"{suite}-{via}"


def worker_bed_names(suite: str, count: int) -> list[str]:
    """The beds of one `harness run` with `count` workers: the suite's default bed, then SUITE-w1, SUITE-w2..."""
    return [default_name(suite)] + [f"{suite}-w{i}" for i in range(1, count)]


def room_for_beds(memory_mib: int = state_mod.MEMORY_MIB, meminfo: str | None = None) -> int:
    """How many more beds of `memory_mib` the host's available memory holds (QEMU's own ~0.5 GiB counted)."""
    if meminfo is None:
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            return 1
    kb = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemAvailable:")), None)
    return 1 if kb is None else max(0, (kb >> 10) // (memory_mib + 512))


@contextlib.contextmanager
def exclusive(name: str):
    """Only one 'bed up'/'bed down' per bed name at a time; a second one is refused, not queued."""
    lock = FileLock(str(state_mod.bed_dir(name)) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise HarnessError(f"another 'bed up' or 'bed down' for bed {name!r} is running",
                           hint="wait for it, or run 'harness bed status'") from None
    try:
        yield
    finally:
        lock.release()


def _new_bed_dir(name: str) -> Path:
    """The bed's folder, empty and 0700 from its creation (it holds the bed's private keys)."""
    d = state_mod.bed_dir(name)
    shutil.rmtree(d, ignore_errors=True)
    d.parent.mkdir(parents=True, exist_ok=True)
    d.mkdir(mode=0o700)
    d.chmod(0o700)
    return d


def _make_keys(d: Path) -> None:
    """The bed's SSH client key and host key. ssh-keygen runs under umask 077, so no key file (private or
    the .pub beside it) is ever readable by others, not even for a moment, whatever our umask is."""
    for name in ("id_ed25519", "host_ed25519"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"hx-{name}", "-f", str(d / name)],
                       check=True, capture_output=True, umask=0o077)


def up(suite: str = "trixie", via: str = "qemu", name: str | None = None,
       memory_mib: int = state_mod.MEMORY_MIB, cpus: int = 2, vfs: int = 4, port: int | None = None, accel: str | None = None,
       timeout: float = BOOT_TIMEOUT, cold: bool | None = None) -> BedInfo:
    """Bring a bed up (or reuse the running one) and wait until libvirtd answers. QEMU beds start from
    the template of their hardware if there is one; `cold` (or HX_BED_COLD=1) forces a cold boot."""
    image_mod.check_suite(suite)
    launcher = launcher_for(via)
    opts = UpOptions(memory_mib=memory_mib, cpus=cpus, vfs=vfs, port=port, accel=accel, timeout=timeout, cold=cold)
    launcher.check(opts)
    if memory_mib > state_mod.LOW_MEMORY_MAX_MIB:
        say(f"bed: {memory_mib} MiB of RAM reaches above 4 GiB, and with it the igb VFs' BARs, which QEMU then "
            f"maps at the wrong address: VFs handed back to the bed cost ~2 s each and their registers are out of "
            f"reach (<= {state_mod.LOW_MEMORY_MAX_MIB} MiB avoids it; harness bed status checks it)")
    name = name or default_name(suite, via)
    with exclusive(name):
        existing = state_mod.load(name)
        if existing and existing.via == via and launcher.alive(existing):
            say(f"bed {name}: already up ({via}, {launcher.describe(existing)}); reusing")
            launcher.wait_ready(existing, timeout=60)
            return existing
        # Before anything is created or cleaned up (a live bed reused above is not checked again).
        extra = launcher.prepare(name, opts)
        if existing:
            say(f"bed {name}: cleaning up a dead earlier bed")
            _cleanup(existing)
        else:
            launcher.clear_leftovers(name)
        img = image_mod.build(suite)
        d = _new_bed_dir(name)
        _make_keys(d)
        bed = BedInfo(name=name, suite=suite, via=via, dir=str(d), memory_mib=memory_mib, cpus=cpus, vfs=vfs,
                      image_key=img.key, started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), extra=extra)
        host_pub = (d / "host_ed25519.pub").read_text().split()
        bed.known_hosts.write_text(f"hx-bed-{name} {host_pub[0]} {host_pub[1]}\n")
        try:
            launcher.up(bed, img, opts)
        except BaseException:
            launcher.failed(bed)
            _cleanup(bed)
            raise
        return bed


def wait_ready(bed: BedInfo, timeout: float = BOOT_TIMEOUT) -> None:
    """Wait for SSH and then libvirtd in a bed brought up earlier (its launcher knows when it died)."""
    launcher_for(bed.via).wait_ready(bed, timeout=timeout)


def trouble(bed: BedInfo) -> str:
    """'' for a bed that looks well, else one sentence saying why it cannot be trusted any more: its VM is
    gone, or its kernel complained on the console (an RCU stall under TCG: the bed then answers nothing).
    Cheap (a pid and a file), so it is asked before a bed is reused or taken down."""
    if not alive(bed):
        said = qemu_said(bed)
        return (f"its VM is gone (pid {bed.pid} exited or was killed)"
                + (f"; QEMU's last words: {said}" if said else ""))
    return kernel_trouble(bed)


def _cleanup(bed: BedInfo) -> list[str]:
    """Remove everything a bed left: its launcher's processes, control sockets, the bed folder. A bed in
    trouble (dead VM, kernel complaints) has its logs kept first (keep_logs)."""
    why = trouble(bed) if bed.path.exists() else ""
    done = launcher_for(bed.via).down(bed)
    if why:
        kept = keep_logs(bed, why)
        if kept:
            done.append(f"kept its logs in {kept} ({why[:200]})")
    if bed.ssh_config.exists():
        subprocess.run(["ssh", "-F", str(bed.ssh_config), "-O", "exit", "bed"], capture_output=True,
                       timeout=10)
    if bed.path.exists():
        shutil.rmtree(bed.path, ignore_errors=True)
        done.append(f"removed {bed.path} (overlay, keys, logs)")
    return done


def down(name: str) -> list[str]:
    with exclusive(name):
        bed = state_mod.load(name)
        if bed is None:
            raise HarnessError(f"no bed named {name!r} is up",
                               hint="'harness bed status' lists the beds; nothing to take down")
        return _cleanup(bed)


def mark_disposable(bed: BedInfo, by: str) -> None:
    """Say that `by` (a test session, `harness run`, a benchmark) brought this bed up from its template: it may be
    replaced when it dies or stalls (engine/heal.py), and `by` takes it down. A bed without it is a person's."""
    (bed.path / "brought-up-by").write_text(by)


def replace(bed: BedInfo, why: str, timeout: float = BOOT_TIMEOUT) -> BedInfo:
    """A fresh bed of the same name, suite and hardware in place of one that cannot be trusted any more
    (`why`: trouble() or an SSH probe that timed out); its logs are kept (keep_logs). If another process
    replaced it already (its pid changed and the new one is well), that bed is returned as it is.

    Only for beds the harness may throw away: a bed a person brought up may hold a libvirt they installed,
    and a fresh one would run another. The callers decide (plugin: beds a test session brought up)."""
    with FileLock(str(state_mod.bed_dir(bed.name)) + ".replace.lock"):     # waits: one replacement at a time
        cur = state_mod.load(bed.name)
        if cur is not None and (cur.pid, cur.started) != (bed.pid, bed.started) and not trouble(cur):
            return cur
        say(f"bed {bed.name}: {why}; replacing it with a fresh bed", warn=True)
        owner = ""
        if cur is not None:
            with exclusive(bed.name):
                marker = cur.path / "brought-up-by"
                owner = marker.read_text() if marker.exists() else ""
                for line in _cleanup(cur):
                    say(f"bed {bed.name}: {line}")
        new = up(suite=bed.suite, via=bed.via, name=bed.name, memory_mib=bed.memory_mib, cpus=bed.cpus,
                 vfs=bed.vfs, accel=bed.accel if bed.accel_reason.startswith("forced") else None,
                 timeout=timeout)
        if owner:        # the session that brought the old bed up takes this one down at its end
            mark_disposable(new, owner)
        return new


def alive(bed: BedInfo) -> bool:
    return launcher_for(bed.via).alive(bed)


def status(bed: BedInfo) -> str:
    """The bed's VM state in a few words, whatever launched it."""
    return launcher_for(bed.via).status(bed)


def find(name: str | None = None, suite: str | None = None) -> BedInfo:
    """The running bed to use: by name, else the default bed of a suite, else the only one up."""
    beds = [b for b in state_mod.all_beds() if alive(b)]
    if name:
        beds = [b for b in beds if b.name == name]
    elif suite:
        beds = [b for b in beds if b.name == default_name(suite)]
    elif len(beds) > 1:
        raise HarnessError("several beds are up: " + ", ".join(b.name for b in beds), hint="choose one with --name")
    if not beds:
        raise HarnessError("no bed is up" + (f" (name {name})" if name else f" (suite {suite})" if suite else ""),
                           hint="run 'harness bed up', or pass --libvirt-uri")
    return beds[0]
