"""What a test session knows about its target: the bed (if any), the libvirt connection,
versions, host-device inventory and the domain type to use. Built once per pytest worker."""
from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt

from harness import paths
from harness.bed.state import BedInfo
from harness.engine import devices
from harness.engine.conn import Conn
from harness.errors import HarnessError


@dataclass
class Target:
    uri: str
    bed: BedInfo | None
    conn: Conn
    libvirt_version: str
    qemu_version: str
    kernel: str
    suite: str
    accelerator: str
    kvm_available: bool
    nics: list[devices.HostNic]
    lock_dir: Path
    worker: str = "gw0"
    run_tag: str = field(default_factory=lambda: secrets.token_hex(2))
    ssh_seconds: float = 0.0
    shared_networks: Any = None     # engine.shared_networks.SharedNetworks, made by the first scenario needing one
    reaper: Any = None              # engine.teardown.Reaper, made by the first teardown handed off

    @property
    def libvirt_seconds(self) -> float:
        """Time spent waiting on libvirt calls and bed shell commands (the harness's own cost is the rest)."""
        return self.conn.seconds + self.ssh_seconds

    def ssh(self, command: str, timeout: float = 60):
        if self.bed is None:
            raise HarnessError("this step needs a shell in the bed (restart-daemon, logs)",
                               hint="run against a bed (--bed), not a bare --libvirt-uri")
        t0 = time.monotonic()
        try:
            return self.bed.ssh(command, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"SSH to the bed {self.bed.name} did not finish within {timeout:.0f} s: "
                               f"{command.split(';')[0][:80]}",
                               hint=f"the bed may be hung; 'harness bed status', serial log {self.bed.serial_log}") from None
        finally:
            self.ssh_seconds += time.monotonic() - t0

    def meta(self) -> dict:
        return {"uri": self.uri.split("?")[0], "libvirt": self.libvirt_version, "qemu": self.qemu_version,
                "kernel": self.kernel, "suite": self.suite, "accelerator": self.accelerator,
                "domain_type": "kvm" if self.kvm_available else "qemu",
                "bed": self.bed.name if self.bed else None}


def _ver(v: int) -> str:
    return f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"


def open_target(uri: str | None = None, bed: BedInfo | None = None) -> Target:
    if bed is not None:
        uri = bed.uri
    if not uri:
        raise HarnessError("no target", hint="pass --bed NAME or --libvirt-uri URI")
    conn = Conn(uri)
    c = conn.virconn
    lv = _ver(conn.call(c.getLibVersion))
    qv = _ver(conn.call(c.getVersion))
    kvm = True
    try:
        conn.call(c.getDomainCapabilities, None, "x86_64", None, "kvm", 0)
    except libvirt.libvirtError:
        kvm = False
    if kvm and bed is not None and bed.accel == "tcg" and os.environ.get("HX_NESTED_KVM") != "1":
        # KVM inside a bed that QEMU itself emulates (TCG) is not what a QA host runs: on the bookworm
        # bed (kernel 6.1) a guest hangs there and the bed reboots. Test domains use TCG in such a bed;
        # HX_NESTED_KVM=1 tries nested KVM anyway. A bed under real KVM gives its domains nested KVM.
        kvm = False
    kernel = "?"
    nics: list[devices.HostNic] = []
    if bed is not None:
        p = bed.ssh("uname -r", timeout=30)
        kernel = p.stdout.strip() or "?"
        nics = devices.inventory(bed)
        lock_dir = Path(bed.dir) / "leases"
    else:
        lock_dir = paths.cache_dir() / "leases" / re.sub(r"[^A-Za-z0-9]+", "_", uri.split("?")[0])
    lock_dir.mkdir(parents=True, exist_ok=True)
    t = Target(uri=uri, bed=bed, conn=conn, libvirt_version=lv, qemu_version=qv, kernel=kernel,
               suite=bed.suite if bed else "custom", accelerator=bed.accel if bed else "?",
               kvm_available=kvm, nics=nics, lock_dir=lock_dir,
               worker=os.environ.get("PYTEST_XDIST_WORKER", "gw0"))
    conn.abandon_if = lambda: bed_trouble(t)
    return t


def bed_trouble(t: Target) -> str:
    """'' or why the target's bed failed (its VM is gone, its kernel complained): a libvirt call or a cleanup
    waiting on it then stops waiting (Conn.abandon_if), a stalled bed answers nothing more."""
    if t.bed is None:
        return ""
    from harness.bed import lifecycle  # here: the engine loads without the bed's launchers
    return lifecycle.trouble(t.bed)


def rebind(t: Target, bed: BedInfo) -> None:
    """Point a target, in place (runs, fixtures and the reaper hold it), at `bed`: a fresh bed that replaced
    its broken one (lifecycle.replace). Refuses a bed whose software differs: the run folder's verdicts are
    about one libvirt, and a scenario retried on another would answer for the wrong one."""
    if t.reaper is not None:      # its teardowns were of the old bed; its own connection goes with it
        t.reaper.close()
        t.reaper = None
    t.shared_networks = None      # they lived in the old bed; the next scenario makes them again
    t.conn.close()
    t.bed, t.uri, t.conn.uri = bed, bed.uri, bed.uri
    t.conn.connect()
    c = t.conn.virconn
    lv, qv = _ver(t.conn.call(c.getLibVersion)), _ver(t.conn.call(c.getVersion))
    kernel = bed.ssh("uname -r", timeout=30).stdout.strip() or "?"
    if (lv, qv, kernel) != (t.libvirt_version, t.qemu_version, t.kernel):
        raise HarnessError(f"the bed {bed.name} that replaced the broken one runs libvirt {lv}, QEMU {qv}, kernel "
                           f"{kernel}; this run began on libvirt {t.libvirt_version}, QEMU {t.qemu_version}, kernel "
                           f"{t.kernel}", hint="start a new run on the new bed")
    t.nics = devices.inventory(bed)
    t.lock_dir = Path(bed.dir) / "leases"
    t.lock_dir.mkdir(parents=True, exist_ok=True)


def _live_owned(t: Target) -> set[str]:
    """Names of domains and networks that a running session (any process) is using right now."""
    from harness.engine.journal import Journal
    owned: set[str] = set()
    for e in Journal(t.lock_dir).entries():
        if e.owner_alive():
            owned |= {e.domain, *e.networks}
    return owned


def _unowned(t: Target, owned: set[str]):
    """("domain" or "network", object) for each domain, then each network, of earlier runs (name prefix
    hx-) that no running session owns. Networks are listed once the domains have been walked."""
    c = t.conn.virconn
    for kind, listing in (("domain", c.listAllDomains), ("network", c.listAllNetworks)):
        for o in t.conn.call(listing, 0):
            if o.name().startswith(paths.PREFIX) and o.name() not in owned:
                yield kind, o


def _passthrough_pci(t: Target) -> list[str]:
    """The target's devices that a run may leave on vfio-pci."""
    return [n.pci for n in t.nics if n.kind in ("vf", "e1000e")]


def leftovers(t: Target) -> list[str]:
    """Domains and networks of earlier runs (name prefix hx-) that no running session owns."""
    owned = _live_owned(t)
    out = [f"{kind} {o.name()}" for kind, o in _unowned(t, owned)]
    if not owned:   # a live run may hold a VF on vfio-pci between its unplug and libvirt's reattach
        from harness.engine.journal import stray_pci
        out += [f"device {a} left on vfio-pci" for a in stray_pci(t, _passthrough_pci(t))]
    return out


def sweep_orphans(t: Target) -> list[str]:
    """Remove what runs that died (journal entries whose process is gone) left; returns what was done."""
    from harness.engine.journal import Journal, remove_objects
    j = Journal(t.lock_dir)
    done = []
    for e in j.orphans():
        what = remove_objects(t, e)
        j.remove(e.domain)
        if what:
            done.append(f"{', '.join(what)} (left by {e.scenario or 'a run'}, pid {e.pid}, {e.created})")
    return done


def sweep(t: Target) -> list[str]:
    """Remove every domain and network of earlier runs - never those a running session owns - and
    give stray vfio-pci devices back to their host driver; returns what was removed."""
    from harness.engine.journal import reattach_stray, remove_domain, remove_network
    done = sweep_orphans(t)
    remove = {"domain": remove_domain, "network": remove_network}
    for kind, o in _unowned(t, _live_owned(t)):
        remove[kind](t.conn, o)
        done.append(f"{kind} {o.name()}")
    done += reattach_stray(t, _passthrough_pci(t))
    return done
