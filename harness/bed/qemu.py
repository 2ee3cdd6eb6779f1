"""Direct QEMU launcher: boots the bed image with an emulated IOMMU and SR-IOV NICs.

Hardware: q35 + intel-iommu (caching-mode, needed by libvirt for hostdev behind an emulated
IOMMU), igb PFs (SR-IOV, VFs made at boot) and e1000e NICs (plain <hostdev>), each behind its own
pcie-root-port, none with a netdev peer so nothing they send leaves the VM. Management: QEMU user
networking with restrict=on and one hostfwd on 127.0.0.1. A vmgenid device lets the guest kernel reseed
its RNG when a bed is started from a saved template (harness/bed/template.py): beds restored from one
saved RAM image would otherwise share the kernel's random state.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

from harness.bed import accel as accel_mod
from harness.bed.image import Image
from harness.bed.launcher import qemu_said
from harness.bed.qmp import QMP
from harness.bed.state import BedInfo
from harness.errors import HarnessError

MGMT_MAC = "52:54:00:00:be:d0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_taken(port: int) -> bool:
    """Whether a bed's QEMU could not listen on 127.0.0.1:`port`. Bound as QEMU's user networking binds its
    hostfwd (SO_REUSEADDR): a port whose last bed just went down still has TIME_WAIT connections for a minute,
    which stop a plain bind but not QEMU (CI: "port taken" right after `bed down`)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def command(bed: BedInfo, img: Image, overlay: str, pfs: int = 1, e1000e: int = 2,
            incoming: bool = False) -> list[str]:
    """The bed's QEMU command line. Everything that is not under the bed's folder, its name or its host
    port is hardware: a bed started from a template must have exactly the template's (template.hardware_args).
    incoming: wait for a migration stream (QMP migrate-incoming) instead of booting."""
    d = bed.path
    machine = "q35,kernel-irqchip=split"
    cpu = "max" if bed.accel == "tcg" else "host"
    cmd = ["qemu-system-x86_64", "-name", f"hx-bed-{bed.name}",
           "-machine", machine, "-accel", bed.accel if bed.accel == "kvm" else "tcg,thread=multi",
           "-cpu", cpu, "-smp", str(bed.cpus), "-m", str(bed.memory_mib),
           "-nodefaults", "-display", "none", "-no-user-config",
           # A reset ends QEMU instead of rebooting the bed: on 2026-12-06 a bed reset itself silently (no
           # console line) mid-scenario, and the run waited ~2 min for it to boot again and then ran scenarios
           # on a bed nobody had checked. A dead bed is replaced (engine/heal.py) and its logs kept.
           "-no-reboot",
           "-device", "intel-iommu,intremap=on,caching-mode=on",
           "-device", "vmgenid",
           "-kernel", str(img.kernel), "-initrd", str(img.initrd),
           # no_timer_check: a cold boot on a loaded host panicked in the kernel's IO-APIC timer check ("timer
           # doesn't work through Interrupt-remapped IO-APIC"): its vCPU got too little CPU for the test window
           "-append", "root=LABEL=hx-bed-root rw console=ttyS0 intel_iommu=on iommu=pt quiet "
                      "systemd.show_status=0 net.ifnames=1 no_timer_check",
           "-drive", f"file={overlay},if=virtio,format=qcow2,cache=unsafe,discard=unmap",
           "-netdev", f"user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:{bed.ssh_port}-:22",
           "-device", f"virtio-net-pci,netdev=mgmt,mac={MGMT_MAC}",
           "-serial", f"file:{d / 'serial.log'}",
           "-D", str(d / "qemu.log"),    # also keeps QEMU's stderr (-daemonize sends it to /dev/null otherwise)
           "-qmp", f"unix:{d / 'qmp.sock'},server=on,wait=off",
           "-pidfile", str(d / "qemu.pid"), "-daemonize",
           "-fw_cfg", f"name=opt/harness/authorized_keys,file={d / 'id_ed25519.pub'}",
           "-fw_cfg", f"name=opt/harness/ssh_host_ed25519_key,file={d / 'host_ed25519'}",
           "-fw_cfg", f"name=opt/harness/ssh_host_ed25519_key.pub,file={d / 'host_ed25519.pub'}",
           "-fw_cfg", f"name=opt/harness/vfs,string={bed.vfs}",
           "-fw_cfg", f"name=opt/harness/mgmt_mac,string={MGMT_MAC}"]
    slot = 1
    for i in range(pfs):
        cmd += ["-device", f"pcie-root-port,id=hxrp{slot},chassis={slot},slot={slot}",
                "-device", f"igb,bus=hxrp{slot},id=hxpf{i},mac=52:54:00:10:00:{i:02x}"]
        slot += 1
    for i in range(e1000e):
        cmd += ["-device", f"pcie-root-port,id=hxrp{slot},chassis={slot},slot={slot}",
                "-device", f"e1000e,bus=hxrp{slot},id=hxe{i},mac=52:54:00:20:00:{i:02x}"]
        slot += 1
    if incoming:
        cmd += ["-incoming", "defer"]
    return cmd


def overlay_path(bed: BedInfo) -> str:
    return str(bed.path / "overlay.qcow2")


def create_overlay(overlay: str, backing: str, backing_fmt: str) -> None:
    """A new qcow2 overlay of its own for this bed; the backing file is only ever read."""
    p = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", backing_fmt, "-b", backing, overlay],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise HarnessError(f"qemu-img create {overlay} failed: {(p.stderr or p.stdout).strip()[-400:]}")


def launch(bed: BedInfo, cmd: list[str]) -> None:
    d = bed.path
    (d / "serial.log").write_text("")
    (d / "qemu.log").write_text("")
    (d / "qemu.cmdline").write_text(" ".join(cmd) + "\n")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        said = (p.stderr.strip() or qemu_said(bed, 10))[-800:]
        raise HarnessError(f"QEMU did not start (exit {p.returncode}): {said}",
                           hint=f"full command line in {d / 'qemu.cmdline'}")
    bed.pid = int((d / "qemu.pid").read_text().strip())


def start(bed: BedInfo, img: Image) -> None:
    """Cold boot: a new overlay on the image, then the kernel boots."""
    overlay = overlay_path(bed)
    create_overlay(overlay, str(img.disk), "raw")
    launch(bed, command(bed, img, overlay))


def pid_alive(pid: int, needle: bytes | None = None) -> bool:
    """True if pid runs (not a zombie: its cmdline is empty) and, if given, its cmdline has needle."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return bool(cmd) and (needle is None or needle in cmd)


def alive(pid: int) -> bool:
    return pid_alive(pid, b"qemu-system")


def stop(bed: BedInfo, grace: float = 10.0) -> bool:
    """Stop the bed's QEMU: quit over QMP, then SIGTERM, then SIGKILL. True if one was running."""
    if not alive(bed.pid):
        return False
    try:
        with QMP(str(bed.path / "qmp.sock"), timeout=3) as q:
            q.cmd("quit")
    except (OSError, ValueError):
        pass
    for sig, wait in ((None, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if sig is not None and alive(bed.pid):
            try:
                os.kill(bed.pid, sig)
            except ProcessLookupError:
                pass
        t = time.monotonic() + wait
        while time.monotonic() < t and alive(bed.pid):
            time.sleep(0.2)
        if not alive(bed.pid):
            break
    return True


def status(bed: BedInfo) -> str:
    if not alive(bed.pid):
        return "not running"
    try:
        with QMP(str(bed.path / "qmp.sock"), timeout=3) as q:
            return q.cmd("query-status").get("return", {}).get("status", "?")
    except (OSError, ValueError) as e:
        return f"running (QMP: {e})"


def detect_accel(img: Image, forced: str | None) -> tuple[str, str]:
    return accel_mod.detect(img.kernel, forced)
