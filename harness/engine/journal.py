"""What each running scenario has created in the bed, written down before it is created.

A run that dies without cleaning up (SIGKILL, a bed that stopped answering, a power cut) leaves
its entry behind. The next session on the bed removes exactly those objects - the domain, its
networks, and any leased PCI device still bound to vfio-pci - and says what it removed. Leftovers
that no journal entry explains are someone else's: those are refused, not swept (libvirt-tck).
"""
from __future__ import annotations

import functools
import json
import os
import re
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import libvirt

from harness.errors import HarnessError

#: a PCI address as the harness writes it (DDDD:BB:SS.F); anything else in a journal is not ours
PCI_RE = re.compile(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]")


def valid_pci(addr) -> bool:
    return isinstance(addr, str) and PCI_RE.fullmatch(addr) is not None


def _start_time(pid: int) -> str | None:
    """A live process's start time (clock ticks since boot): tells a live owner from a reused pid.

    None for a process that is gone or a zombie (dead, only not yet reaped by its parent: a killed run
    whose parent has not waited must not keep its leftovers "owned").
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else fields[19]
    except (OSError, IndexError):
        return None


@dataclass
class Entry:
    domain: str
    networks: list[str] = field(default_factory=list)
    pci: list[str] = field(default_factory=list)      # leased devices that may be bound to vfio-pci
    scenario: str = ""
    pid: int = field(default_factory=os.getpid)
    pid_start: str | None = field(default_factory=lambda: _start_time(os.getpid()))
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))

    def __post_init__(self):
        # The journal is read back from disk and its PCI addresses end up in a shell command in the
        # bed: an entry with anything else is not one this harness wrote (entries() drops it).
        bad = [a for a in self.pci if not valid_pci(a)] if isinstance(self.pci, list) else [self.pci]
        if bad:
            raise ValueError(f"journal entry {self.domain!r}: not PCI addresses: {bad!r}")

    def owner_alive(self) -> bool:
        return self.pid_start is not None and _start_time(self.pid) == self.pid_start


class Journal:
    def __init__(self, lock_dir: Path):
        self.dir = Path(lock_dir) / "journal"
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, domain: str) -> Path:
        return self.dir / f"{domain}.json"

    def write(self, e: Entry) -> None:
        tmp = self._path(e.domain).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(e)))
        os.replace(tmp, self._path(e.domain))

    def remove(self, domain: str) -> None:
        self._path(domain).unlink(missing_ok=True)

    def entries(self) -> list[Entry]:
        out = []
        for p in sorted(self.dir.glob("*.json")):
            try:
                out.append(Entry(**json.loads(p.read_text())))
            except (OSError, ValueError, TypeError):
                # a torn write of a dead run, or not a PCI address: nothing to act on (its leftovers
                # are then unexplained ones: refused, not swept)
                p.unlink(missing_ok=True)
        return out

    def orphans(self) -> list[Entry]:
        """Entries whose process is gone: their objects are safe to remove."""
        return [e for e in self.entries() if not e.owner_alive()]


#: A test domain goes with its managed save image and its snapshot metadata.
UNDEFINE_FLAGS = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA


def remove_domain(c, d, each: Callable[[str, Callable[[], object]], None] | None = None) -> None:
    """Destroy one domain if it runs, then undefine it if it is defined (UNDEFINE_FLAGS); each of the two is
    one libvirt call bounded at 120 s. `each(what, call)` runs them ("destroy", "undefine") for a caller
    that times each and goes on after a failure (a scenario's cleanup); without it a failure raises."""
    def destroy():
        return d.isActive() and d.destroy()

    def undefine():
        return d.isPersistent() and d.undefineFlags(UNDEFINE_FLAGS)

    for what, fn in (("destroy", destroy), ("undefine", undefine)):
        call = functools.partial(c.call, fn, timeout=120)
        if each is None:
            call()
        else:
            each(what, call)


def remove_network(c, n) -> None:
    if c.call(n.isActive):
        c.call(n.destroy)
    if c.call(n.isPersistent):
        c.call(n.undefine)


def kill_orphan_qemu(t, domain: str) -> list[str]:
    """Kill any QEMU in the bed still running for `domain` once libvirt has removed it (or never knew it).

    Why: a daemon that cannot read a running domain's status XML drops the domain and leaves its QEMU running,
    unmanaged, holding its VFs open (seen: libvirt 11.3.0 after a rollback from 12.8.0 under a domain 12.8.0
    had started: "Unknown qemu capabilities flag bus-floppy"). Its VFs then never go back to their driver and
    virNodeDeviceReAttach blocks. libvirt starts QEMU with `-name guest=NAME,...`; names here are hx-[a-z0-9-].
    """
    if t.bed is None:
        return []
    if not re.fullmatch(r"hx-[a-z0-9-]+", domain):
        raise HarnessError(f"not a harness domain name: {domain!r}", hint="the journal is corrupt")
    # "[g]uest": the regex matches QEMU's command line but not that of the shell running this command
    pattern = shlex.quote(f"-name [g]uest={domain},")
    p = t.ssh(f"pids=$(pgrep -f -- {pattern}); [ -n \"$pids\" ] || exit 0; kill -9 $pids; "
              "for i in $(seq 1 100); do alive=; for q in $pids; do "
              "grep -qs '^State:[[:space:]]*[^Z[:space:]]' /proc/$q/status && alive=1; done; "
              "[ -z \"$alive\" ] && break; sleep 0.1; done; echo $pids", timeout=60)
    pids = p.stdout.split()
    return [f"QEMU of {domain} (pid {q}) that libvirt no longer managed, killed" for q in pids]


def remove_objects(t, e: Entry) -> list[str]:
    """Remove one dead run's domain and networks, hand its PCI devices back to their host driver.
    Returns what was done, for the log."""
    c = t.conn
    done: list[str] = []
    try:
        d = c.call(c.virconn.lookupByName, e.domain)
    except libvirt.libvirtError:
        d = None
    if d is not None:
        remove_domain(c, d)
        done.append(f"domain {e.domain}")
    for name in e.networks:
        try:
            n = c.call(c.virconn.networkLookupByName, name)
        except libvirt.libvirtError:
            continue
        remove_network(c, n)
        done.append(f"network {name}")
    done += kill_orphan_qemu(t, e.domain)
    done += reattach_stray(t, e.pci)
    return done


def on_vfio(t, addrs: list[str]) -> list[str]:
    """Those of `addrs` (PCI devices in the bed) bound to vfio-pci right now."""
    if not addrs or t.bed is None:
        return []
    bad = [a for a in addrs if not valid_pci(a)]
    if bad:
        raise HarnessError(f"not PCI addresses: {bad!r}", hint="the journal or the device list is corrupt")
    p = t.ssh("for d in " + " ".join(shlex.quote(a) for a in addrs) +
              '; do echo "$d" $(basename "$(readlink "/sys/bus/pci/devices/$d/driver" 2>/dev/null)" 2>/dev/null);'
              ' done', timeout=30)
    return [ln.split()[0] for ln in p.stdout.splitlines() if ln.endswith(" vfio-pci")]


def stray_pci(t, addrs: list[str]) -> list[str]:
    """Those of `addrs` bound to vfio-pci that no running domain uses: a VF a dead run never gave back."""
    bound = on_vfio(t, addrs)
    if not bound:
        return []
    in_use = _pci_in_running_domains(t)
    return [a for a in bound if a not in in_use]


def reattach_stray(t, addrs: list[str]) -> list[str]:
    """Devices left on vfio-pci with no domain using them go back to their host driver
    (virNodeDeviceReAttach, what libvirt itself does for a managed hostdev)."""
    done = []
    for a in stray_pci(t, addrs):
        name = "pci_" + a.replace(":", "_").replace(".", "_")
        try:
            dev = t.conn.call(t.conn.virconn.nodeDeviceLookupByName, name)
            t.conn.call(dev.reAttach)
        except libvirt.libvirtError as err:
            raise HarnessError(f"{a} is still on vfio-pci and could not be given back: {err}",
                               hint=f"in the bed: virsh nodedev-reattach {name}") from None
        done.append(f"{a} back on its host driver")
    return done


def _pci_in_running_domains(t) -> set[str]:
    import xml.etree.ElementTree as ET
    used = set()
    for d in t.conn.call(t.conn.virconn.listAllDomains, libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        root = ET.fromstring(t.conn.call(d.XMLDesc, 0))
        for a in root.iter("address"):
            if a.get("type") == "pci" and a.get("bus") is not None and _in_source(root, a):
                used.add("%04x:%02x:%02x.%x" % tuple(int(a.get(k), 16) for k in ("domain", "bus", "slot", "function")))
    return used


def _in_source(root, addr) -> bool:
    return any(addr in list(s) for s in root.iter("source"))
