"""Host devices in the bed: inventory, and exclusive leases across pytest-xdist workers.

A scenario names devices symbolically ("any free VF", "an e1000e", "a PF with its VFs"); at run
time each symbol is leased to one PCI address with a file lock (filelock), so two workers never
pass the same NIC through. Leases are always released, even when the scenario fails.
"""
from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from harness.engine.xmlbuild import PciAddr
from harness.errors import HarnessError

# One shell call lists every NIC with its driver, PF link and netdev name.
INVENTORY_CMD = r"""python3 - <<'EOF'
import json, os, glob
out = []
for d in sorted(glob.glob('/sys/bus/pci/devices/*')):
    try:
        cls = open(d + '/class').read().strip()
    except OSError:
        continue
    if not cls.startswith('0x0200'):
        continue
    rd = lambda f: open(os.path.join(d, f)).read().strip() if os.path.exists(os.path.join(d, f)) else None
    drv = os.path.basename(os.path.realpath(d + '/driver')) if os.path.exists(d + '/driver') else None
    net = os.listdir(d + '/net') if os.path.isdir(d + '/net') else []
    pf = os.path.basename(os.path.realpath(d + '/physfn')) if os.path.exists(d + '/physfn') else None
    grp = os.path.basename(os.path.realpath(d + '/iommu_group')) if os.path.exists(d + '/iommu_group') else None
    out.append(dict(pci=os.path.basename(d), vendor=rd('vendor'), device=rd('device'), driver=drv,
                    ifname=net[0] if net else None, physfn=pf, totalvfs=rd('sriov_totalvfs'),
                    numvfs=rd('sriov_numvfs'), iommu_group=grp))
print(json.dumps(out))
EOF"""

IGB_PF, IGB_VF, E1000E = ("0x8086", "0x10c9"), ("0x8086", "0x10ca"), ("0x8086", "0x10d3")


@dataclass
class HostNic:
    pci: str
    kind: str            # pf | vf | e1000e | other
    ifname: str | None
    physfn: str | None
    iommu_group: str | None


def classify(entries: list[dict]) -> list[HostNic]:
    out = []
    for e in entries:
        ident = (e.get("vendor"), e.get("device"))
        kind = {IGB_PF: "pf", IGB_VF: "vf", E1000E: "e1000e"}.get(ident, "other")
        out.append(HostNic(e["pci"], kind, e.get("ifname"), e.get("physfn"), e.get("iommu_group")))
    return out


def inventory(bed, refresh: bool = False) -> list[HostNic]:
    """The bed's NICs, cached in the bed folder (PCI addresses do not move while a bed is up)."""
    cache = Path(bed.dir) / "inventory.json"
    if cache.exists() and not refresh:
        return [HostNic(**d) for d in json.loads(cache.read_text())]
    p = bed.ssh(INVENTORY_CMD, timeout=60)
    if p.returncode != 0:
        raise HarnessError(f"cannot list the bed's NICs: {p.stderr.strip()[-300:]}")
    nics = classify(json.loads(p.stdout))
    cache.write_text(json.dumps([n.__dict__ for n in nics]))
    return nics


def counts(nics: list[HostNic]) -> dict[str, int]:
    c = {"vf": 0, "pf": 0, "e1000e": 0}
    for n in nics:
        if n.kind in c:
            c[n.kind] += 1
    return c


class Leases:
    """Exclusive leases on host devices for one scenario; use as a context manager."""

    def __init__(self, lock_dir: Path, nics: list[HostNic], wait: float = 900.0):
        self.dir = lock_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.nics = nics
        self.wait = wait
        self.stack = ExitStack()
        self.held: dict[str, HostNic] = {}

    def _try(self, pci: str) -> FileLock | None:
        # thread_local=False: a passed scenario's leases are released by its teardown thread
        # (engine/teardown.py); a thread-local lock released there would stay held.
        lk = FileLock(str(self.dir / f"{pci}.lock"), thread_local=False)
        try:
            lk.acquire(timeout=0)
            return lk
        except Timeout:
            return None

    def _take_one(self, kind: str) -> list[FileLock] | None:
        for n in self.nics:
            if n.kind != kind or n.pci in self.held:
                continue
            locks = []
            group = [n.pci] + ([v.pci for v in self.nics if v.physfn == n.pci] if kind == "pf" else [])
            for pci in group:
                lk = self._try(pci)
                if lk is None:
                    break
                locks.append(lk)
            else:
                return locks
            for lk in locks:
                lk.release()
        return None

    def lease(self, sym: str, kind: str) -> HostNic:
        deadline = time.monotonic() + self.wait
        while True:
            got = self._take_one(kind)
            if got:
                for lk in got:
                    self.stack.callback(lk.release)
                nic = next(n for n in self.nics if n.pci == Path(got[0].lock_file).stem)
                self.held[nic.pci] = nic
                if kind == "pf":
                    for v in self.nics:
                        if v.physfn == nic.pci:
                            self.held[v.pci] = v
                return nic
            total = sum(1 for n in self.nics if n.kind == kind)
            if total == 0:
                raise HarnessError(f"device {sym!r}: the bed has no {kind} device",
                                   hint="check 'harness bed status' (VF count, e1000e)")
            if time.monotonic() > deadline:
                raise HarnessError(f"device {sym!r}: all {total} {kind} devices stayed leased for {self.wait:.0f} s")
            time.sleep(0.5)

    def lease_index(self, prefix: str, limit: int) -> int:
        """A small integer exclusive to this lease holder (e.g. a NAT network's subnet)."""
        deadline = time.monotonic() + self.wait
        while True:   # always try once: with a short (or zero) wait the old loop never looked at a slot
            for i in range(limit):
                lk = self._try(f"{prefix}-{i}")
                if lk is not None:
                    self.stack.callback(lk.release)
                    return i
            if time.monotonic() > deadline:
                raise HarnessError(f"no free {prefix} slot among {limit} for {self.wait:.0f} s")
            time.sleep(0.5)

    def __enter__(self) -> "Leases":
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()
        self.held.clear()

    @staticmethod
    def addr(nic: HostNic) -> PciAddr:
        return PciAddr.parse(nic.pci)
