"""Bed lifecycle in one place: up, wait until libvirtd answers, down (leaving nothing behind)."""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path

from filelock import FileLock, Timeout

from harness.bed import image as image_mod
from harness.bed import qemu
from harness.bed import state as state_mod
from harness.bed.state import BedInfo
from harness.errors import HarnessError
from harness.progress import say

BOOT_TIMEOUT = 420.0


def default_name(suite: str, via: str = "qemu") -> str:
    return suite if via == "qemu" else f"{suite}-{via}"


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


def _make_keys(d: Path) -> None:
    for name in ("id_ed25519", "host_ed25519"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"hx-{name}", "-f", str(d / name)],
                       check=True, capture_output=True)


def up(suite: str = "trixie", via: str = "qemu", name: str | None = None, memory_mib: int = 4096,
       cpus: int = 2, vfs: int = 4, port: int | None = None, accel: str | None = None,
       timeout: float = BOOT_TIMEOUT) -> BedInfo:
    image_mod.check_suite(suite)
    if via == "vagrant":
        from harness.bed import vagrant
        return vagrant.up(suite=suite, name=name, memory_mib=memory_mib, cpus=cpus, vfs=vfs, timeout=timeout,
                          accel=accel)
    if via != "qemu":
        raise HarnessError(f"unknown launcher {via!r}", hint="use --via qemu or --via vagrant")
    image_mod.require_tools("qemu-system-x86_64", "qemu-img", "ssh", "ssh-keygen")
    name = name or default_name(suite, via)
    with exclusive(name):
        existing = state_mod.load(name)
        if existing and qemu.alive(existing.pid):
            say(f"bed {name}: already up (pid {existing.pid}, port {existing.ssh_port}); reusing")
            wait_ready(existing, timeout=60)
            return existing
        if existing:
            _cleanup(existing)
        if port is not None and qemu.port_taken(port):
            raise HarnessError(f"port 127.0.0.1:{port} is already taken", hint="pick another --port or omit it")
        img = image_mod.build(suite)
        d = state_mod.bed_dir(name)
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        d.chmod(0o700)
        _make_keys(d)
        bed = BedInfo(name=name, suite=suite, via="qemu", dir=str(d), ssh_port=port or qemu.free_port(),
                      memory_mib=memory_mib, cpus=cpus, vfs=vfs, image_key=img.key,
                      started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        bed.accel, bed.accel_reason = qemu.detect_accel(img, accel)
        say(f"bed {name}: accelerator {bed.accel} ({bed.accel_reason})")
        host_pub = (d / "host_ed25519.pub").read_text().split()
        bed.known_hosts.write_text(f"hx-bed-{name} {host_pub[0]} {host_pub[1]}\n")
        bed.write_ssh_files()
        try:
            qemu.start(bed, img)
            bed.save()
            say(f"bed {name}: QEMU pid {bed.pid}, SSH on 127.0.0.1:{bed.ssh_port}; booting")
            wait_ready(bed, timeout=timeout)
        except BaseException:
            _cleanup(bed)
            raise
        return bed


def wait_ready(bed: BedInfo, timeout: float = BOOT_TIMEOUT) -> None:
    """Wait for SSH and then libvirtd; on timeout, fail with the serial log's tail."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    stage = "ssh"
    last = ""
    while time.monotonic() < deadline:
        if bed.via == "qemu" and not qemu.alive(bed.pid):
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


def serial_tail(bed: BedInfo, lines: int = 20) -> str:
    try:
        text = bed.serial_log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no serial log)"
    return "--- serial log tail ---\n" + "\n".join(text[-lines:])


def _cleanup(bed: BedInfo) -> list[str]:
    """Remove everything a bed left: process, overlay, control sockets, state. Returns what was done."""
    done = []
    if bed.via == "vagrant":
        from harness.bed import vagrant
        done += vagrant.down(bed)
    elif qemu.stop(bed):
        done.append(f"stopped QEMU pid {bed.pid}")
    subprocess.run(["ssh", "-F", str(bed.ssh_config), "-O", "exit", "bed"], capture_output=True, timeout=10)
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


def alive(bed: BedInfo) -> bool:
    if bed.via == "vagrant":
        from harness.bed import vagrant
        return vagrant.alive(bed)
    return qemu.alive(bed.pid)


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
