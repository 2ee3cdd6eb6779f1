"""QEMU launcher: the bed as a QEMU process of ours, SSH forwarded from a host port.

A QEMU bed starts from the saved template of its hardware when there is one (seconds; see
harness/bed/template.py), else it boots cold and, once ready, is saved as that template for the next
beds. HX_BED_COLD=1 (or up(cold=True)) boots cold and saves nothing. The QEMU process itself
(command line, start, stop, QMP status) is harness/bed/qemu.py.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import time

from harness.bed import image as image_mod
from harness.bed import qemu, template_store
from harness.bed import template as template_mod
from harness.bed.image import Image
from harness.bed.launcher import Launcher, UpOptions, serial_tail
from harness.bed.state import BedInfo
from harness.errors import HarnessError
from harness.progress import say


def cold_forced(cold: bool | None = None) -> bool:
    """A cold boot (no template used, none saved) when asked, or when HX_BED_COLD is set (not 0)."""
    if cold is not None:
        return cold
    return os.environ.get("HX_BED_COLD", "").strip() not in ("", "0")


class QemuLauncher(Launcher):
    via = "qemu"

    def check(self, opts: UpOptions) -> None:
        image_mod.require_tools("qemu-system-x86_64", "qemu-img", "ssh", "ssh-keygen")

    def prepare(self, name: str, opts: UpOptions) -> dict:
        if opts.port is not None and qemu.port_taken(opts.port):
            raise HarnessError(f"port 127.0.0.1:{opts.port} is already taken", hint="pick another --port or omit it")
        return {}

    def up(self, bed: BedInfo, img: Image, opts: UpOptions) -> None:
        bed.ssh_port = opts.port or qemu.free_port()
        bed.accel, bed.accel_reason = qemu.detect_accel(img, opts.accel)
        say(f"bed {bed.name}: accelerator {bed.accel} ({bed.accel_reason})")
        bed.write_ssh_files()
        force_cold = cold_forced(opts.cold)
        t0 = time.monotonic()
        if not force_cold and _up_from_template(bed, img, t0, opts.timeout):
            return
        qemu.start(bed, img)
        bed.save()
        say(f"bed {bed.name}: QEMU pid {bed.pid}, SSH on 127.0.0.1:{bed.ssh_port}; booting")
        self.wait_ready(bed, timeout=opts.timeout)
        secs = time.monotonic() - t0
        bed.extra["boot"] = {"path": "cold", "seconds": round(secs, 1)}
        say(f"bed {bed.name}: up by a cold boot in {secs:.1f} s" + (" (HX_BED_COLD: no template used or saved)"
                                                                   if force_cold else ""))
        if not force_cold:
            cap = template_mod.capture(bed, img, qemu.command(bed, img, qemu.overlay_path(bed)))
            if cap:
                bed.extra["boot"]["saved_template"] = cap
                say(f"bed {bed.name}: saved as template {cap['template']} for the next beds "
                    f"(bed paused {cap['paused_s']:.1f} s, {cap['state_bytes'] >> 20} MiB of RAM state)")
        bed.save()

    def down(self, bed: BedInfo) -> list[str]:
        return [f"stopped QEMU pid {bed.pid}"] if qemu.stop(bed) else []

    def alive(self, bed: BedInfo) -> bool:
        return qemu.alive(bed.pid)

    def died(self, bed: BedInfo) -> bool:
        return not qemu.alive(bed.pid)

    def status(self, bed: BedInfo) -> str:
        return qemu.status(bed)

    def describe(self, bed: BedInfo) -> str:
        return f"pid {bed.pid}, port {bed.ssh_port}"


def _up_from_template(bed: BedInfo, img: Image, t0: float, timeout: float) -> bool:
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
            template_store.discard(tpl, created=created)
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
    for f in ("overlay.qcow2", "qmp.sock", "qemu.pid", "qemu.cmdline", "serial.log", "qemu.log", "cm",
              "ssh_config.template", "known_hosts.template", "state.json"):
        with contextlib.suppress(OSError):
            (bed.path / f).unlink()
    bed.pid = 0
    bed.extra.pop("boot", None)
