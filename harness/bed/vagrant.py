"""Vagrant launcher: the same bed as harness/bed/launch_qemu.py, brought up by vagrant-libvirt.

Why this exists: QA hosts that standardise on Vagrant get the bed through the repo's top-level
Vagrantfile; this module drives that path on the harness's own machines and gives back the same
BedInfo the QEMU path does, so nothing outside harness/bed can tell the two apart.

How, without touching anything global on the host: every bed has a network namespace and a private
libvirtd of its own (harness/bed/vagrant_ns.py), and

* one VAGRANT_HOME for all beds under the cache (``vagrant-home``, holds the added boxes), the
  machine's ``.vagrant`` dir in the bed dir (VAGRANT_DOTFILE_PATH), Vagrant Cloud checks off;
* SSH from the host: ``ProxyCommand ip netns exec hx-vg-<bed> socat - TCP:%h:%p`` to the guest's
  DHCP address on the management network, with the per-bed host key pinned exactly as for the QEMU
  bed (``StrictHostKeyChecking yes``, ``HostKeyAlias``). ``bed.ssh()`` and ``bed.uri`` (qemu+ssh via
  the ssh wrapper) work unchanged. No address, route or port is added on the host side.

Vagrant's own SSH (during ``vagrant up`` only) logs in as root with the per-bed key and, as Vagrant
always does, without checking the host key; it runs inside the bed's namespace towards a VM started a
second earlier. Everything the harness does afterwards goes through the pinned ssh_config.

For people: ``<bed>/vagrant status`` / ``<bed>/vagrant ssh`` run Vagrant with this bed's environment;
``<bed>/nsexec CMD`` runs CMD in its namespace (e.g. ``virsh list``).

``down`` leaves nothing: vagrant destroy, every process left in the namespace stopped (libvirtd,
virtlogd, dnsmasq, QEMU, proxies), the namespace deleted, the bed dir removed.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from filelock import FileLock

from harness import paths
from harness.bed import accel as accel_mod
from harness.bed import box as box_mod
from harness.bed import image as image_mod
from harness.bed import passthrough, qemu
from harness.bed.launcher import Launcher, UpOptions, keep_logs
from harness.bed.state import BedInfo
from harness.bed.vagrant_ns import (
    kill_netns,
    libvirt_uri,
    lv_dir,
    netns_exists,
    ns_name,
    nsexec,
    read_pid,
    run,
    start_daemons,
)
from harness.errors import HarnessError
from harness.progress import say

VAGRANTFILE_DIR = paths.REPO
TOOLS = ("vagrant", "ip", "unshare", "libvirtd", "virtlogd", "virsh", "socat", "ssh", "ssh-keygen")


def vagrant_home() -> Path:
    p = paths.cache_dir() / "vagrant-home"
    p.mkdir(parents=True, exist_ok=True)
    return p


# --- vagrant ------------------------------------------------------------------------------------

def _vagrant_env(bed: BedInfo) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAGRANT_", "HX_"))}
    env.update({
        "VAGRANT_HOME": str(vagrant_home()),
        "VAGRANT_CWD": str(VAGRANTFILE_DIR),
        "VAGRANT_DOTFILE_PATH": str(bed.path / ".vagrant"),
        "VAGRANT_DEFAULT_PROVIDER": "libvirt",
        "VAGRANT_CHECKPOINT_DISABLE": "1",
        "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1",
        "VAGRANT_NO_COLOR": "1",
        "LIBVIRT_DEFAULT_URI": "qemu:///system",
        "HX_BOX": bed.extra.get("box", ""),
        "HX_KEY_DIR": str(bed.path),
        "HX_MEMORY": str(bed.memory_mib),
        "HX_CPUS": str(bed.cpus),
        "HX_VFS": str(bed.vfs),
        "HX_DRIVER": "kvm" if bed.accel == "kvm" else "qemu",
        "HX_PREFIX": f"{ns_name(bed.name)}-",
        "HX_SERIAL_LOG": str(bed.serial_log),
        "HX_BOOT_TIMEOUT": str(int(bed.extra.get("boot_timeout", 600))),
        "HX_URI": "qemu:///system",
    })
    if bed.extra.get("passthrough"):     # checked in up(); the Vagrantfile checks again before lv.pci
        env["HX_PASSTHROUGH"] = ",".join(bed.extra["passthrough"])
    return env


# --- real passthrough ---------------------------------------------------------------------------

def passthrough_addrs() -> list[str]:
    """The declared pool of real host NICs (HX_PASSTHROUGH, comma-separated PCI addresses)."""
    return [a.strip() for a in os.environ.get("HX_PASSTHROUGH", "").split(",") if a.strip()]


def check_passthrough(addrs: list[str], pool: list[str] | None = None) -> None:
    """Refuse (HarnessError, every reason listed) unless each address is a free host NIC in the pool.

    Runs in the harness's own process, i.e. in the host's network namespace, where the host's
    interfaces are visible; see harness/bed/passthrough.py for the facts it reads."""
    if not addrs:
        return
    bad = passthrough.refusals(addrs, pool=passthrough_addrs() if pool is None else pool)
    if bad:
        raise HarnessError("real passthrough refused, nothing was created:\n" + "\n".join(f"  {r}" for r in bad),
                           hint="HX_PASSTHROUGH lists host PCI devices to hand to the bed; list only free NICs "
                                "(`python3 harness/bed/passthrough.py ADDR` checks one), or unset it")


#: vagrant output lines worth a progress line (the rest goes to the log only)
_PHASES = re.compile(r"==> \S+: (Uploading base box image|Creating image \(snapshot|Starting domain|"
                     r"Waiting for domain to get an IP|Waiting for machine to boot|Machine booted and ready|"
                     r"Removing domain|Deleting the machine folder)")


def _vagrant(bed: BedInfo, *args: str, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    """vagrant ARGS in the bed's namespace; its output goes to <bed>/vagrant-ARG.log with timestamps."""
    log = bed.path / f"vagrant-{args[0]}.log"
    what = f"vagrant {' '.join(args)}"
    t0 = time.monotonic()
    lines: list[str] = []
    with open(log, "w") as logf:
        proc = subprocess.Popen([str(nsexec(bed)), "vagrant", *args], env=_vagrant_env(bed), text=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        timer = threading.Timer(timeout, lambda: _kill_group(proc))
        timer.start()
        try:
            for line in proc.stdout:
                line = line.rstrip("\n")
                lines.append(line)
                logf.write(f"[{time.monotonic() - t0:7.1f}] {line}\n")
                logf.flush()
                if _PHASES.search(line):
                    say(f"bed {bed.name}: {line.split(': ', 1)[1]} (+{time.monotonic() - t0:.0f} s)")
            rc = proc.wait()
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            timer.cancel()
    if time.monotonic() - t0 >= timeout:
        raise HarnessError(f"{what} timed out after {timeout:.0f} s", hint=f"log: {log}")
    p = subprocess.CompletedProcess([what], rc, "\n".join(lines), "")
    if check and rc != 0:
        # Ruby backtraces say nothing to a person: keep the message lines, drop the "from ..." frames.
        msg = [ln for ln in lines if not ln.lstrip().startswith("from /") and "-> value=" not in ln]
        raise HarnessError(f"{what} failed (exit {rc})\n" + "\n".join(msg[-25:]), hint=f"log: {log}")
    return p


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _write_vagrant_wrapper(bed: BedInfo) -> None:
    """<bed>/vagrant ARGS: for people debugging a bed (vagrant status, vagrant ssh) with the right env."""
    env = {k: v for k, v in _vagrant_env(bed).items() if k.startswith(("VAGRANT_", "HX_", "LIBVIRT_"))}
    lines = [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    w = bed.path / "vagrant"
    w.write_text("#!/bin/sh\n# Vagrant for this bed only: its namespace, private libvirt, VAGRANT_HOME.\n"
                 + "\n".join(lines) + f'\nexec "{nsexec(bed)}" vagrant "$@"\n')
    w.chmod(0o755)


def _box_added(name: str) -> bool:
    return any((vagrant_home() / "boxes" / name).glob("*/libvirt/box.img"))


def ensure_box(img: image_mod.Image) -> str:
    """Build the box (cached) and add it to the harness's VAGRANT_HOME once. Returns its name."""
    boxf = box_mod.build_box(img)
    name = box_mod.box_name(img)
    with FileLock(str(vagrant_home()) + ".lock"):
        if _box_added(name):
            return name
        t0 = time.monotonic()
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAGRANT_")}
        env.update({"VAGRANT_HOME": str(vagrant_home()), "VAGRANT_CHECKPOINT_DISABLE": "1"})
        # Run from a directory without a Vagrantfile: box add must not load the repo's one.
        run(["vagrant", "box", "add", "--force", "--name", name, str(boxf)], "vagrant box add", timeout=600,
             env={**env, "VAGRANT_CWD": str(vagrant_home())})
        # Boxes of older images/recipes are of no further use.
        for old in (vagrant_home() / "boxes").glob("hx-*"):
            if old.name != name and old.name.startswith(f"hx-{img.suite}-"):
                shutil.rmtree(old, ignore_errors=True)
        say(f"vagrant box {name}: added to {vagrant_home()} in {time.monotonic() - t0:.0f} s")
    return name


def _domain(bed: BedInfo) -> str | None:
    p = subprocess.run(["virsh", "-c", libvirt_uri(bed), "list", "--all", "--name"], capture_output=True,
                       text=True, timeout=30, stdin=subprocess.DEVNULL)
    names = [n.strip() for n in p.stdout.splitlines() if n.strip()]
    return names[0] if names else None


def _guest_ip(bed: BedInfo, dom: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        p = subprocess.run(["virsh", "-c", libvirt_uri(bed), "domifaddr", dom, "--source", "lease"],
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        m = re.search(r"ipv4\s+(\d+\.\d+\.\d+\.\d+)/", p.stdout)
        if m:
            return m.group(1)
        if time.monotonic() > deadline:
            raise HarnessError(f"no DHCP lease for {dom} on the management network: {p.stderr.strip()}")
        time.sleep(2)




# --- the launcher -------------------------------------------------------------------------------

class VagrantLauncher(Launcher):
    via = "vagrant"

    def check(self, opts: UpOptions) -> None:
        image_mod.require_tools(*TOOLS)
        if os.geteuid() != 0:
            raise HarnessError("the Vagrant bed needs root (network namespace, libvirtd, bind mounts)")

    def prepare(self, name: str, opts: UpOptions) -> dict:
        # A NIC in use is never handed to a VM. (Not for a live bed reused: its passed-through NICs are
        # held by its own QEMU and would be refused.)
        addrs = passthrough_addrs()
        check_passthrough(addrs)
        return {"netns": ns_name(name), "boot_timeout": int(opts.timeout),
                **({"passthrough": addrs} if addrs else {})}

    def clear_leftovers(self, name: str) -> None:
        if netns_exists(ns_name(name)):
            kill_netns(ns_name(name))

    def up(self, bed: BedInfo, img: image_mod.Image, opts: UpOptions) -> None:
        bed.ssh_host, bed.ssh_port = "", 22
        bed.serial_log.write_text("")
        bed.save()       # from here on, down() can find and remove whatever exists
        bed.extra["box"] = ensure_box(img)
        ns = bed.extra["netns"]
        bed.accel, bed.accel_reason = accel_mod.detect(img.kernel, opts.accel)
        say(f"bed {bed.name}: vagrant-libvirt driver {'kvm' if bed.accel == 'kvm' else 'qemu (TCG)'} "
            f"({bed.accel_reason})")
        t0 = time.monotonic()
        start_daemons(bed, ns)
        _write_vagrant_wrapper(bed)
        bed.extra["libvirt_uri"] = libvirt_uri(bed)
        bed.save()
        say(f"bed {bed.name}: libvirtd + virtlogd up in netns {ns}; vagrant up (box upload + boot, minutes under TCG)")
        _vagrant(bed, "up", "--provider=libvirt", "--no-provision", timeout=opts.timeout + 180)
        t_up = time.monotonic() - t0
        dom = _domain(bed)
        if not dom:
            raise HarnessError("vagrant up returned but the bed's libvirtd has no domain")
        bed.extra["domain"] = dom
        bed.ssh_host = _guest_ip(bed, dom)
        bed.extra["ssh_proxy_command"] = f"ip netns exec {ns} socat - TCP:%h:%p"
        bed.extra["vagrant_up_seconds"] = round(t_up, 1)
        bed.write_ssh_files()
        bed.save()
        say(f"bed {bed.name}: vagrant up done in {t_up:.0f} s; guest {bed.ssh_host} (via netns {ns})")
        self.wait_ready(bed, timeout=max(60.0, opts.timeout - t_up))
        bed.extra["ready_seconds"] = round(time.monotonic() - t0, 1)
        bed.save()

    def failed(self, bed: BedInfo) -> None:
        kept = keep_logs(bed, "vagrant up failed", extra=(
            *bed.path.glob("vagrant-*.log"), *(lv_dir(bed) / "log").glob("*.log"),
            *(lv_dir(bed) / "log" / "qemu").glob("*.log")))
        if kept:
            say(f"bed {bed.name}: up failed; logs kept in {kept}", warn=True)

    def down(self, bed: BedInfo) -> list[str]:
        return down(bed)

    def alive(self, bed: BedInfo) -> bool:
        return alive(bed)

    def status(self, bed: BedInfo) -> str:
        return status(bed)

    def describe(self, bed: BedInfo) -> str:
        return f"{bed.ssh_host} in netns {bed.extra.get('netns')}"


def alive(bed: BedInfo) -> bool:
    """True when the bed's namespace, libvirtd and domain are there and the domain runs."""
    return status(bed) == "running"


def status(bed: BedInfo) -> str:
    ns = bed.extra.get("netns") or ns_name(bed.name)
    if not netns_exists(ns):
        return "not running (no netns)"
    if not qemu.pid_alive(read_pid(bed.path / "libvirtd.pid")):
        return "not running (no libvirtd)"
    dom = bed.extra.get("domain")
    if not dom:
        return "starting"
    try:
        p = subprocess.run(["virsh", "-c", libvirt_uri(bed), "domstate", dom], capture_output=True, text=True,
                           timeout=20, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "libvirtd not answering"
    return p.stdout.strip() or f"unknown ({p.stderr.strip()})"

def _forget_machine(bed: BedInfo) -> None:
    """Drop the machine from VAGRANT_HOME's index if vagrant destroy could not (its data dir is gone)."""
    idx = vagrant_home() / "data" / "machine-index" / "index"
    if not idx.exists():
        return
    with FileLock(str(idx.parent / "index.lock")):      # the lock file Vagrant itself flocks
        try:
            data = json.loads(idx.read_text())
        except (OSError, ValueError):
            return
        machines = data.get("machines", {})
        keep = {k: v for k, v in machines.items()
                if not str(v.get("local_data_path", "")).startswith(str(bed.path))}
        if len(keep) != len(machines):
            data["machines"] = keep
            idx.write_text(json.dumps(data))


def down(bed: BedInfo) -> list[str]:
    """Remove everything the Vagrant bed made. Returns what was removed, for people."""
    done: list[str] = []
    ns = bed.extra.get("netns") or ns_name(bed.name)
    t0 = time.monotonic()
    libvirtd_up = netns_exists(ns) and qemu.pid_alive(read_pid(bed.path / "libvirtd.pid"))
    if libvirtd_up and (bed.path / ".vagrant").exists():
        try:
            p = _vagrant(bed, "destroy", "-f", timeout=300, check=False)
            if p.returncode == 0:
                done.append(f"vagrant destroy: domain {bed.extra.get('domain', '?')} and its volumes")
            else:
                done.append(f"WARNING: vagrant destroy exit {p.returncode} (see below; forced removal follows)")
        except HarnessError as e:
            done.append(f"WARNING: {e.message.splitlines()[0]} (forced removal follows)")
    if libvirtd_up:
        try:
            dom = _domain(bed)
        except subprocess.TimeoutExpired:
            dom = None
        if dom:
            subprocess.run(["virsh", "-c", libvirt_uri(bed), "destroy", dom], capture_output=True, timeout=60)
            subprocess.run(["virsh", "-c", libvirt_uri(bed), "undefine", dom, "--nvram"], capture_output=True,
                           timeout=60)
            done.append(f"forced: virsh destroy + undefine {dom}")
    _forget_machine(bed)
    if bed.ssh_config.exists():
        subprocess.run(["ssh", "-F", str(bed.ssh_config), "-O", "exit", "bed"], capture_output=True, timeout=10)
    done += kill_netns(ns)
    if bed.path.exists():
        shutil.rmtree(bed.path, ignore_errors=True)
        done.append(f"removed {bed.path} (keys, private libvirt dirs and volumes, logs)")
    bed.extra["down_seconds"] = round(time.monotonic() - t0, 1)
    done.append(f"down took {bed.extra['down_seconds']:.0f} s")
    return done
