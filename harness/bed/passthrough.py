#!/usr/bin/env python3
"""Real-passthrough safety: refuse host PCI devices that must not be handed to a VM, and say why.

Why: passing a host NIC through unbinds it from its host driver. If that NIC carries an address, a
route, the default route or the SSH session that drives the harness, the machine drops off the
network mid-run. So every address declared in HX_PASSTHROUGH is checked against the live machine
before anything is created: by harness/bed/vagrant.py before ``vagrant up`` and by the Vagrantfile
itself before any ``lv.pci`` (so plain ``vagrant up`` is protected too).

Stdlib only and runnable as a script, because the Vagrantfile shells out to it and tests copy it
into the bed:

    python3 passthrough.py [--pool A,B,...] [--json] ADDR [ADDR...]
    exit 0: every ADDR is safe; 2: refused (one line per refusal on stdout); 1: usage error

A device is refused when: the address is malformed, declared twice, or not in the declared pool;
no such device exists; it is not a network controller (PCI class 0x02); any network interface on
it (or on one of its SR-IOV VFs) has an IPv4 address or a non-link-local IPv6 address, a route
(fe80::/64, local, broadcast and multicast entries excepted), the default route, an upper device
(bridge/bond port, VLAN, macvtap), or carries this process's SSH connection (SSH_CONNECTION).

A device with no network interface has nothing on this machine left to cut off only when that is
on purpose: bound to vfio-pci or pci-stub, or to no driver. It is then accepted unless a process
holds its VFIO group or device file open (a running VM has it already; for a PF, any of its VFs
too). A NIC bound to a network driver but with no interface in sight is refused: its interface
lives in another network namespace (a container's) or it is used without one (DPDK). So a NIC a
previous VM released stays usable, and a NIC a running VM or container uses is never accepted
just because there was no interface to look at.

Facts come from the machine's initial network namespace: run inside another one (the harness runs
vagrant in a namespace of its own), the check re-runs itself through ``nsenter`` into PID 1's
network and mount namespaces when it can tell (root, /proc/1/ns readable). When it cannot tell,
the driver rule above refuses NICs whose interface it cannot see.
"""
from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys

SYS_PCI = "/sys/bus/pci/devices"
ADDR_RE = re.compile(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")
#: PCI base classes, to say what a refused non-NIC is
CLASSES = {0x01: "storage controller", 0x03: "display controller", 0x04: "multimedia device",
           0x05: "memory controller", 0x06: "bridge", 0x07: "communication controller",
           0x08: "system peripheral", 0x0C: "serial bus controller", 0xFF: "unassigned class"}
_REEXEC_MARK = "HX_PASSTHROUGH_INIT_NS"
#: drivers that leave a NIC without a host interface on purpose (reserved for passthrough), or none
FREE_DRIVERS = ("vfio-pci", "pci-stub", None)


def normalise(addr: str) -> str | None:
    """'03:00.0' or '0000:03:00.0' -> '0000:03:00.0' (lower case); None when malformed."""
    m = ADDR_RE.match(addr.strip())
    if not m:
        return None
    return f"{(m.group(1) or '0000').lower()}:{m.group(2).lower()}:{m.group(3).lower()}.{m.group(4)}"


def _ip(*args: str) -> list:
    """`ip -j ARGS` as JSON; raises RuntimeError when it cannot be asked (refuse what we cannot check)."""
    try:
        p = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, timeout=15,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"ip {' '.join(args)}: {e}") from None
    if p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {p.stderr.strip()}")
    return json.loads(p.stdout or "[]")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def interfaces(dev: str) -> list[tuple[str, str]]:
    """(interface, owner) for every net interface on PCI device dir `dev` or on its SR-IOV VFs.

    Walks /sys/class/net rather than DEV/net/, because some drivers (virtio) put the interface
    one level deeper (DEV/virtio2/net/eth0)."""
    owners = [(os.path.realpath(dev), os.path.basename(dev))]
    owners += [(os.path.realpath(v), f"its VF {os.path.basename(os.path.realpath(v))}")
               for v in sorted(glob.glob(os.path.join(dev, "virtfn*")))]
    out = []
    for name in sorted(os.listdir("/sys/class/net")):
        real = os.path.realpath(f"/sys/class/net/{name}")
        for path, owner in owners:
            if real.startswith(path + "/"):
                out.append((name, owner))
    return out


def ssh_interfaces() -> tuple[set[str], str]:
    """Interfaces that carry this process's SSH connection: the one holding the local address and
    the one the replies leave by. (set(), '') when not under SSH."""
    parts = os.environ.get("SSH_CONNECTION", "").split()
    if len(parts) != 4:
        return set(), ""
    client, local = parts[0].split("%")[0], parts[2].split("%")[0]
    names = {link["ifname"] for link in _ip("addr", "show")
             for a in link.get("addr_info", []) if a.get("local") == local}
    names |= {r["dev"] for r in _ip("route", "get", client) if r.get("dev")}
    return names, f"{client} -> {local}"


def _is_link_local_route(r: dict) -> bool:
    dst = r.get("dst", "")
    return (r.get("type") in ("local", "broadcast", "multicast", "anycast")
            or dst.startswith("fe80::") or dst.startswith("ff00::"))


def iface_refusals(addr: str, name: str, owner: str, ssh: tuple[set[str], str]) -> list[str]:
    """Why interface `name` (on device `addr`) is in use; [] when it is free."""
    who = f"{addr} ({name}{'' if owner == addr else ', ' + owner})"
    out = []
    addrs = [f"{a['local']}/{a['prefixlen']}" for link in _ip("addr", "show", "dev", name)
             for a in link.get("addr_info", [])
             if a.get("family") == "inet" or (a.get("family") == "inet6" and a.get("scope") != "link")]
    if addrs:
        out.append(f"{who} carries {', '.join(addrs)}: the harness will not pass through a NIC in use; "
                   f"pick a free NIC or remove its address (ip addr flush dev {name})")
    routes = [r for fam in ("-4", "-6") for r in _ip(fam, "route", "show", "table", "all", "dev", name)
              if not _is_link_local_route(r)]
    default = [r for r in routes if r.get("dst") == "default"]
    if default:
        via = ", ".join(f"via {r['gateway']}" if r.get("gateway") else "direct" for r in default)
        out.append(f"{who} carries the default route ({via}): passing it through would cut this machine "
                   f"off the network; pick another NIC")
    other = [r["dst"] for r in routes if r.get("dst") != "default"]
    if other:
        out.append(f"{who} has routes via it ({', '.join(other)}): the harness will not pass through a NIC "
                   f"in use; pick a free NIC or delete those routes")
    uppers = [os.path.basename(u)[len("upper_"):] for u in glob.glob(f"/sys/class/net/{name}/upper_*")]
    if uppers:
        out.append(f"{who} is under {', '.join(sorted(uppers))} (bridge or bond port, VLAN or macvtap): "
                   f"traffic of those goes through it; pick a free NIC or detach it from them")
    names, conn = ssh
    if name in names:
        out.append(f"{who} carries this SSH connection ({conn}): passing it through would cut the session "
                   f"that runs the harness; pick another NIC")
    return out


def vfio_holders(dev: str) -> list[str]:
    """'pid (comm)' of every process holding the device's VFIO group or device file open."""
    files = set()
    if os.path.exists(os.path.join(dev, "iommu_group")):
        files.add("/dev/vfio/" + os.path.basename(os.path.realpath(os.path.join(dev, "iommu_group"))))
    files |= {"/dev/vfio/devices/" + os.path.basename(p) for p in glob.glob(os.path.join(dev, "vfio-dev", "vfio*"))}
    holders = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except PermissionError:
            raise RuntimeError("cannot read other processes' open files (run as root)") from None
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in files:
                    holders.append(f"pid {pid} ({_read(f'/proc/{pid}/comm')})")
                    break
            except OSError:
                continue
    return holders


def check(addr: str, ssh: tuple[set[str], str]) -> dict:
    """Facts and refusals for one normalised address."""
    dev = os.path.join(SYS_PCI, addr)
    res = {"addr": addr, "exists": os.path.isdir(dev), "class": None, "driver": None, "interfaces": [],
           "refusals": []}
    if not res["exists"]:
        res["refusals"].append(f"{addr}: no such PCI device in {SYS_PCI}: list this machine's NICs with "
                               f"`lspci -D -d ::0200` and fix HX_PASSTHROUGH")
        return res
    cls = _read(os.path.join(dev, "class"))
    res["class"] = cls
    drv = os.path.join(dev, "driver")
    res["driver"] = os.path.basename(os.path.realpath(drv)) if os.path.exists(drv) else None
    base = int(cls, 16) >> 16 if cls else -1
    if base != 0x02:
        what = CLASSES.get(base, "not a network controller")
        res["refusals"].append(f"{addr} is not a network device (class {cls or '?'}, {what}): the harness "
                               f"passes through NICs only; pick a NIC (`lspci -D -d ::0200`)")
        return res
    try:
        ifs = interfaces(dev)
        res["interfaces"] = [n for n, _ in ifs]
        for name, owner in ifs:
            res["refusals"] += iface_refusals(addr, name, owner, ssh)
        if not ifs and res["driver"] not in FREE_DRIVERS:
            res["refusals"].append(f"{addr} (driver {res['driver']}) has no network interface in this network "
                                   f"namespace: it lives in another one (a container's, or this check runs in "
                                   f"one) or is used without one (DPDK); run the check in the host's namespace "
                                   f"or pick another NIC")
    except (RuntimeError, ValueError) as e:
        res["refusals"].append(f"{addr}: cannot check whether it is in use ({e}): the harness refuses what "
                               f"it cannot check")
    try:
        for fn, owner in [(dev, addr)] + [(v, f"its VF {os.path.basename(os.path.realpath(v))}")
                                          for v in sorted(glob.glob(os.path.join(dev, "virtfn*")))]:
            held = vfio_holders(fn)
            if held:
                who = addr if owner == addr else f"{addr} ({owner})"
                res["refusals"].append(f"{who} is held open by {', '.join(held)} through VFIO: it is passed "
                                       f"through to a running VM already; pick another NIC or stop that VM")
    except (RuntimeError, ValueError) as e:
        res["refusals"].append(f"{addr}: cannot check whether it is in use ({e}): the harness refuses what "
                               f"it cannot check")
    return res


def _foreign_netns() -> bool:
    """True when this process is not in PID 1's network namespace (and we can tell)."""
    try:
        return os.readlink("/proc/self/ns/net") != os.readlink("/proc/1/ns/net")
    except OSError:
        return False


def _in_init_ns(addrs: list[str], pool: list[str] | None) -> list[dict]:
    """Run this file in PID 1's network + mount namespaces (nsenter) and return its --json report."""
    cmd = ["nsenter", "--net=/proc/1/ns/net", "--mount=/proc/1/ns/mnt", "--", sys.executable or "python3",
           os.path.abspath(__file__), "--json", *(["--pool", ",".join(pool)] if pool is not None else []),
           "--", *addrs]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                           env={**os.environ, _REEXEC_MARK: "1"})
        return json.loads(p.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError) as e:
        why = f"{e}" if not isinstance(e, ValueError) else (p.stderr.strip()[-300:] or "no report")
        return [{"addr": a, "refusals": [f"{a}: cannot check from this machine's own network namespace "
                                         f"(nsenter: {why}): the harness refuses what it cannot check; "
                                         f"run it outside network namespaces"]} for a in addrs]


def report(addrs: list[str], pool: list[str] | None = None) -> list[dict]:
    """Per address: facts read from this machine and its refusals (see the module docstring)."""
    if _foreign_netns() and not os.environ.get(_REEXEC_MARK):
        return _in_init_ns(list(addrs), pool)
    declared = None if pool is None else {normalise(p) for p in pool} - {None}
    try:
        ssh = ssh_interfaces()
        ssh_err = None
    except (RuntimeError, ValueError) as e:
        ssh, ssh_err = (set(), ""), str(e)
    out, seen = [], set()
    for raw in addrs:
        addr = normalise(raw)
        if addr is None:
            out.append({"addr": raw, "refusals": [f"{raw!r} is not a PCI address (want DDDD:BB:SS.F, e.g. "
                                                  f"0000:03:00.0): fix HX_PASSTHROUGH"]})
            continue
        res = check(addr, ssh)
        if addr in seen:
            res["refusals"].insert(0, f"{addr} is declared twice: a device can be passed through once; "
                                      f"remove the duplicate from HX_PASSTHROUGH")
        seen.add(addr)
        if declared is not None and addr not in declared:
            res["refusals"].insert(0, f"{addr} is not in the declared pool ({', '.join(sorted(declared)) or 'empty'}): "
                                      f"the harness passes through only declared devices; add it to "
                                      f"HX_PASSTHROUGH if it is a free NIC")
        if ssh_err and res.get("interfaces"):
            res["refusals"].append(f"{addr}: cannot tell which interface carries this SSH connection "
                                   f"({ssh_err}): the harness refuses what it cannot check")
        out.append(res)
    return out


def refusals(addrs: list[str], pool: list[str] | None = None) -> list[str]:
    """Every reason to refuse passing `addrs` through on this machine; [] means all are safe."""
    return [r for res in report(addrs, pool) for r in res["refusals"]]


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="Refuse host PCI devices that are unsafe to pass through.")
    ap.add_argument("addrs", nargs="+", metavar="ADDR", help="PCI address, DDDD:BB:SS.F")
    ap.add_argument("--pool", help="comma-separated declared pool; addresses outside it are refused")
    ap.add_argument("--json", action="store_true", help="print the facts and refusals as JSON")
    try:
        a = ap.parse_args(argv)
    except SystemExit as e:           # argparse exits 2 on usage errors; 2 means "refused" here
        return 1 if e.code else 0
    pool = None if a.pool is None else [p.strip() for p in a.pool.split(",") if p.strip()]
    rep = report(a.addrs, pool)
    if a.json:
        print(json.dumps(rep, indent=1))
    else:
        for r in (r for res in rep for r in res["refusals"]):
            print(r)
    return 2 if any(res["refusals"] for res in rep) else 0


if __name__ == "__main__":
    sys.exit(main())
