"""Bed lifecycle in one place: up, wait until libvirtd answers, down (leaving nothing behind).

A QEMU bed starts from the saved template of its hardware when there is one (seconds; see
harness/bed/template.py), else it boots cold and, once ready, is saved as that template for the next
beds. HX_BED_COLD=1 (or up(cold=True)) boots cold and saves nothing.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from filelock import FileLock, Timeout

from harness.bed import image as image_mod
from harness.bed import qemu
from harness.bed import state as state_mod
from harness.bed import template as template_mod
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


def cold_forced(cold: bool | None = None) -> bool:
    """A cold boot (no template used, none saved) when asked, or when HX_BED_COLD is set (not 0)."""
    if cold is not None:
        return cold
    return os.environ.get("HX_BED_COLD", "").strip() not in ("", "0")


def up(suite: str = "trixie", via: str = "qemu", name: str | None = None, memory_mib: int = 4096,
       cpus: int = 2, vfs: int = 4, port: int | None = None, accel: str | None = None,
       timeout: float = BOOT_TIMEOUT, cold: bool | None = None) -> BedInfo:
    """Bring a bed up (or reuse the running one) and wait until libvirtd answers. QEMU beds start from
    the template of their hardware if there is one; `cold` (or HX_BED_COLD=1) forces a cold boot."""
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
        d = _new_bed_dir(name)
        _make_keys(d)
        bed = BedInfo(name=name, suite=suite, via="qemu", dir=str(d), ssh_port=port or qemu.free_port(),
                      memory_mib=memory_mib, cpus=cpus, vfs=vfs, image_key=img.key,
                      started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        bed.accel, bed.accel_reason = qemu.detect_accel(img, accel)
        say(f"bed {name}: accelerator {bed.accel} ({bed.accel_reason})")
        host_pub = (d / "host_ed25519.pub").read_text().split()
        bed.known_hosts.write_text(f"hx-bed-{name} {host_pub[0]} {host_pub[1]}\n")
        bed.write_ssh_files()
        force_cold = cold_forced(cold)
        t0 = time.monotonic()
        try:
            if not force_cold and _up_from_template(bed, img, t0, timeout):
                return bed
            qemu.start(bed, img)
            bed.save()
            say(f"bed {name}: QEMU pid {bed.pid}, SSH on 127.0.0.1:{bed.ssh_port}; booting")
            wait_ready(bed, timeout=timeout)
            secs = time.monotonic() - t0
            bed.extra["boot"] = {"path": "cold", "seconds": round(secs, 1)}
            say(f"bed {name}: up by a cold boot in {secs:.1f} s" + (" (HX_BED_COLD: no template used or saved)"
                                                                   if force_cold else ""))
            if not force_cold:
                cap = template_mod.capture(bed, img, qemu.command(bed, img, qemu.overlay_path(bed)))
                if cap:
                    bed.extra["boot"]["saved_template"] = cap
                    say(f"bed {name}: saved as template {cap['template']} for the next beds "
                        f"(bed paused {cap['paused_s']:.1f} s, {cap['state_bytes'] >> 20} MiB of RAM state)")
            bed.save()
        except BaseException:
            _cleanup(bed)
            raise
        return bed


def _up_from_template(bed: BedInfo, img: image_mod.Image, t0: float, timeout: float) -> bool:
    """Start the bed from its hardware's template. False (and the bed folder ready for a cold boot) if
    there is none or it failed; a template that failed is discarded, so the next bed makes a fresh one."""
    cmd = qemu.command(bed, img, qemu.overlay_path(bed), incoming=True)
    tpl, why = template_mod.find(bed, img, cmd)
    if tpl is None:
        say(f"bed {bed.name}: {why}; cold boot")
        return False
    say(f"bed {bed.name}: starting from template {tpl.key} (SSH on 127.0.0.1:{bed.ssh_port})")
    try:
        t = template_mod.restore(bed, img, tpl, deadline=t0 + timeout)
    except template_mod.RestoreTimedOut as e:     # the caller's timeout, not the template's fault: kept
        bed.extra.pop("template_created", None)
        raise HarnessError(f"bed {bed.name}: not ready after {timeout:.0f} s (starting from template {tpl.key}: "
                           f"{e.message})\n{serial_tail(bed)}", hint=f"serial log: {bed.serial_log}") from None
    except (HarnessError, OSError, ValueError, subprocess.SubprocessError) as e:
        broken = getattr(e, "broken", True)
        say(f"bed {bed.name}: start from template {tpl.key} failed ({getattr(e, 'message', None) or e}); "
            + ("discarding the template and " if broken else "") + "booting cold", warn=True)
        _reset_for_cold(bed)
        created = bed.extra.pop("template_created", None)
        if broken:
            template_mod.discard(tpl, created=created)
        return False
    secs = time.monotonic() - t0
    bed.extra.pop("template_created", None)
    bed.extra["boot"] = {"path": "template", "template": tpl.key, "seconds": round(secs, 1), **t}
    bed.save()
    say(f"bed {bed.name}: up from template {tpl.key} in {secs:.1f} s (RAM loaded in {t['load_s']:.1f} s, "
        f"own keys in {t['keys_s']:.1f} s, libvirtd + {t['vfs']} VFs in {t['ready_s']:.1f} s)")
    return True


def _reset_for_cold(bed: BedInfo) -> None:
    """After a failed restore: no QEMU, no overlay, no template login files; the bed's keys stay."""
    qemu.stop(bed, grace=3)
    subprocess.run(["ssh", "-F", str(bed.ssh_config), "-O", "exit", "bed"], capture_output=True, timeout=10)
    for f in ("overlay.qcow2", "qmp.sock", "qemu.pid", "qemu.cmdline", "serial.log", "cm",
              "ssh_config.template", "known_hosts.template", "state.json"):
        with contextlib.suppress(OSError):
            (bed.path / f).unlink()
    bed.pid = 0
    bed.extra.pop("boot", None)


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
