"""Bed preconditions, checked with testinfra on the bed itself and shown as a table.

Each check is one line on testinfra's `host` object; a failing one says what to fix.
"""
from __future__ import annotations

from dataclasses import dataclass

import testinfra

from harness.bed.image import GUEST_DIR
from harness.bed.state import LOW_MEMORY_MAX_MIB, BedInfo


@dataclass
class Check:
    name: str
    ok: bool
    value: str
    want: str


def host_for(bed: BedInfo):
    return testinfra.get_host("ssh://bed", ssh_config=str(bed.ssh_config), connection_timeout=20)


def checks(bed: BedInfo) -> list[Check]:
    host = host_for(bed)
    out: list[Check] = []

    def add(name, ok, value, want):
        out.append(Check(name, bool(ok), str(value), want))

    groups = host.check_output("ls /sys/kernel/iommu_groups | wc -l")
    add("IOMMU groups", int(groups) > 0, groups, "> 0 (intel_iommu=on)")
    add("vfio-pci loaded", host.file("/sys/module/vfio_pci").is_directory, "yes" if host.file(
        "/sys/module/vfio_pci").is_directory else "no", "yes")
    pfs = host.check_output(
        "for n in /sys/class/net/*; do [ -e $n/device/sriov_numvfs ] && echo ${n##*/}; done || true").split()
    add("igb PF present", len(pfs) >= 1, ",".join(pfs) or "none", ">= 1")
    for pf in pfs:
        up = "UP" in host.check_output(f"ip -br link show {pf}")
        add(f"PF {pf} link", up, "up" if up else "down", "up (needed to configure VFs)")
        n = host.file(f"/sys/class/net/{pf}/device/sriov_numvfs").content_string.strip()
        add(f"PF {pf} VFs", int(n) >= bed.vfs, n, f">= {bed.vfs}")
        top = vf_bar_top(host.check_output(f"cat /sys/class/net/{pf}/device/virtfn*/resource 2>/dev/null || true"))
        add(f"PF {pf} VF BARs below 4 GiB", top is not None and top < 1 << 32, "none" if top is None else hex(top),
            f"< 0x100000000: QEMU maps a VF BAR above 4 GiB at the wrong address; bed RAM <= "
            f"{LOW_MEMORY_MAX_MIB} MiB keeps it below (bed/state.py)")
    e1000e = host.check_output("lspci -n | grep -c 8086:10d3 || true")
    add("e1000e NICs", int(e1000e) >= 2, e1000e, ">= 2")
    svc = host.service("libvirtd")
    add("libvirtd active", svc.is_running, "running" if svc.is_running else "not running", "running")
    for pkg in ("libvirt-daemon", "qemu-system-x86"):
        p = host.package(pkg)
        add(f"{pkg} version", p.is_installed, p.version if p.is_installed else "missing", "installed")
    add("bed kernel", True, host.check_output("uname -r"), "-")
    guest = host.check_output(f"grep -a -o -m1 'Linux version [^ ]*' {GUEST_DIR}/vmlinux || true").strip()
    add("tiny guest's kernel", guest.startswith("Linux version "), guest.removeprefix("Linux version ") or "missing",
        "*-hx-guest (built by bed/guest_kernel.py; Debian's with HX_GUEST_KERNEL=debian)")
    types = [t for t in ("kvm", "qemu")
             if host.run(f"virsh -c qemu:///system domcapabilities --virttype {t}").rc == 0]
    add("domain types", "qemu" in types, ",".join(types) or "none", "qemu (kvm when nested KVM works)")
    add("accelerator (bed VM)", True, f"{bed.accel}: {bed.accel_reason}", "-")
    return out


def vf_bar_top(resource_files: str) -> int | None:
    """The highest end address of any memory BAR in the VFs' sysfs `resource` files (None: no BAR).
    Each line is 'start end flags' in hex; unused BARs are all zero."""
    ends = [int(f[1], 16) for f in (line.split() for line in resource_files.splitlines())
            if len(f) == 3 and int(f[1], 16) > 0 and int(f[2], 16) & 0x200]       # IORESOURCE_MEM
    return max(ends) if ends else None


def table(rows: list[Check]) -> str:
    w = max(len(r.name) for r in rows)
    lines = [f"{'check'.ljust(w)}  ok    value  (want)"]
    for r in rows:
        lines.append(f"{r.name.ljust(w)}  {'ok  ' if r.ok else 'FAIL'}  {r.value}  ({r.want})")
    return "\n".join(lines)
