#!/usr/bin/env python3
"""Real-passthrough safety: refuse host PCI devices that must not be handed to a VM, and say why.

Why: passing a host NIC through unbinds it from its host driver. If that NIC (or one of its SR-IOV
VFs) carries an address, a route, the default route, the SSH session that drives the harness, or a
device of a container (a VF moved into it, a macvlan/VLAN on top of it in its namespace), the
machine or that container drops off the network mid-run. So every address declared in
HX_PASSTHROUGH is checked against the live machine before anything is created: by
harness/bed/vagrant.py before ``vagrant up`` and by the Vagrantfile itself before any ``lv.pci``
(so plain ``vagrant up`` is protected too).

Stdlib only and runnable as a script, because the Vagrantfile shells out to it with the system
python3 and tests copy it into the bed:

    python3 passthrough.py [--pool A,B,...] [--i-am-on-the-console] [--json] ADDR [ADDR...]
    exit 0: every ADDR is safe; 2: refused (one line per refusal on stdout); 1: usage error

The declared pool is HX_PASSTHROUGH (the one declaration the Vagrantfile and vagrant.py both use),
read here from the environment; ``--pool`` replaces it explicitly. With neither (a manual check of
one device) there is no pool to compare against and only the facts are checked.

A device is refused when: the address is malformed, declared twice, or not in the declared pool;
no such device exists; it is not a network controller (PCI class 0x02); any network interface on
it or on one of its SR-IOV VFs (virtfnN) has an IPv4 address or a non-link-local IPv6 address, a
route (fe80::/64, local, broadcast and multicast entries excepted), the default route, an upper
device in this namespace (bridge/bond port, VLAN, macvlan/macvtap) or in any other network
namespace (a link whose IFLA_LINK is that interface), or carries the SSH connection of the
session that runs the check; when an interface of the device or of a VF lives in another network
namespace; when the device or a VF is bound to a network driver but has no interface anywhere
(DPDK, or somewhere the check cannot look); when a process holds the VFIO group or device file of
the device or a VF open (a running VM); and whenever a fact could not be collected.

The SSH session is found from SSH_CONNECTION, else (sudo drops it) from the process chain: an
ancestor's SSH_CONNECTION or an ancestor sshd's established TCP socket, else the logind session
(Remote=yes, its leader's socket or RemoteHost). Under sudo/su/doas or tmux/screen, a session
that cannot be traced (nor shown local: logind Remote=no, or a VT/serial controlling terminal) is
refused for every NIC with an interface here; HX_SSH_IFACE=IFACE[,IFACE] names the interfaces it
uses and HX_SSH_IFACE=none or --i-am-on-the-console says there is none (HX_SSH_IFACE is also taken
from the nearest ancestor that has it: vagrant.py starts vagrant without HX_* variables).

Structure: ``Host`` is the thin I/O layer (sysfs, procfs, ``ip -j``, ``nsenter``, ``loginctl``),
``collect`` gathers facts through it into plain data, ``decide`` is a pure function from those
facts to verdicts. Unit tests drive ``collect`` with a fake sysfs/procfs tree and a ``Host`` whose
``ip``/``loginctl`` answer from canned per-namespace JSON.

Facts come from the machine's initial network namespace: run inside another one (the harness runs
vagrant in a namespace of its own), the check re-runs itself through ``nsenter`` into PID 1's
network and mount namespaces when it can tell (root, /proc/1/ns readable). When it cannot tell,
the driver rule above refuses NICs whose interface it cannot see.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# The facts side. As a package module (the harness) from harness.bed; run as a script with the system
# python3 (the Vagrantfile, a copy in a bed) from the file beside this one, where harness is not importable.
try:
    from harness.bed.passthrough_facts import ADDR_RE, Host, collect, split_list
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))     # also under python3 -I
    from passthrough_facts import ADDR_RE, Host, collect, split_list  # type: ignore[no-redef]

#: PCI base classes, to say what a refused non-NIC is
CLASSES = {0x01: "storage controller", 0x03: "display controller", 0x04: "multimedia device",
           0x05: "memory controller", 0x06: "bridge", 0x07: "communication controller",
           0x08: "system peripheral", 0x0C: "serial bus controller", 0xFF: "unassigned class"}
_REEXEC_MARK = "HX_PASSTHROUGH_INIT_NS"
#: drivers that leave a NIC without a host interface on purpose (reserved for passthrough), or none
FREE_DRIVERS = ("vfio-pci", "pci-stub", None)
SSH_FIX = ("set HX_SSH_IFACE=<the interface the session uses> (HX_SSH_IFACE=none or --i-am-on-the-console "
           "when it is not over SSH), keep the variable (sudo --preserve-env=SSH_CONNECTION) or run "
           "without sudo")


def normalise(addr: str) -> str | None:
    """'03:00.0' or '0000:03:00.0' -> '0000:03:00.0' (lower case); None when malformed."""
    m = ADDR_RE.match(addr.strip())
    if not m:
        return None
    return f"{(m.group(1) or '0000').lower()}:{m.group(2).lower()}:{m.group(3).lower()}.{m.group(4)}"


def declared_pool(env: dict | None = None) -> list[str] | None:
    """The declared pool: HX_PASSTHROUGH (None when unset or empty: nothing declared)."""
    pool = split_list((os.environ if env is None else env).get("HX_PASSTHROUGH"))
    return pool or None


# ---- the decision: a pure function of the facts -----------------------------------------------------

def _is_link_local_route(r: dict) -> bool:
    dst = r.get("dst", "")
    return (r.get("type") in ("local", "broadcast", "multicast", "anycast")
            or dst.startswith("fe80::") or dst.startswith("ff00::"))


def _route_devs(r: dict) -> set[str]:
    return ({r["dev"]} if r.get("dev") else set()) | {nh["dev"] for nh in r.get("nexthops", []) if nh.get("dev")}


def _ssh_ifaces(facts: dict) -> tuple[set[str], str]:
    s = facts.get("ssh") or {}
    names = set(s.get("declared", []))
    descr = []
    for c in s.get("conns", []):
        names |= {link["ifname"] for link in facts["addrs"] for a in link.get("addr_info", [])
                  if c["local"] and a.get("local") == c["local"]}
        names |= set(c.get("route_devs", []))
        descr.append(f"{c['client']} -> {c['local'] or '?'}")
    if s.get("declared"):
        descr.append(f"HX_SSH_IFACE={','.join(s['declared'])}")
    return names, ", ".join(descr)


def _iface_refusals(addr: str, name: str, owner: str, facts: dict, ssh: tuple[set[str], str]) -> list[str]:
    """Why interface `name` (of device `addr`, or of its VF named in `owner`) is in use; [] when free."""
    who = f"{addr} ({name}{'' if owner == addr else ', ' + owner})"
    out = []
    addrs = [f"{a['local']}/{a['prefixlen']}" for link in facts["addrs"] if link.get("ifname") == name
             for a in link.get("addr_info", [])
             if a.get("family") == "inet" or (a.get("family") == "inet6" and a.get("scope") != "link")]
    if addrs:
        out.append(f"{who} carries {', '.join(addrs)}: the harness will not pass through a NIC in use; "
                   f"pick a free NIC or remove its address (ip addr flush dev {name})")
    routes = [r for r in facts["routes"] if name in _route_devs(r) and not _is_link_local_route(r)]
    default = [r for r in routes if r.get("dst") == "default"]
    if default:
        via = ", ".join(f"via {r['gateway']}" if r.get("gateway") else "direct" for r in default)
        out.append(f"{who} carries the default route ({via}): passing it through would cut this machine "
                   f"off the network; pick another NIC")
    other = sorted({r["dst"] for r in routes if r.get("dst") and r.get("dst") != "default"})
    if other:
        out.append(f"{who} has routes via it ({', '.join(other)}): the harness will not pass through a NIC "
                   f"in use; pick a free NIC or delete those routes")
    uppers = set(facts["uppers"].get(name, []))
    me = next((link for link in facts["links"] if link.get("ifname") == name), {})
    if me.get("master"):
        uppers.add(me["master"])
    uppers |= {link["ifname"] for link in facts["links"]
               if link.get("link") == name and "link_netnsid" not in link
               and (link.get("linkinfo") or {}).get("info_kind") != "veth"}
    if uppers:
        out.append(f"{who} is under {', '.join(sorted(uppers))} (bridge or bond port, VLAN or macvtap): "
                   f"traffic of those goes through it; pick a free NIC or detach it from them")
    ifindex = me.get("ifindex")
    for ns in facts["netns"]:
        for link in ns["links"]:
            # IFLA_LINK into another namespace: macvlan/macvtap/VLAN/ipvlan/vxlan whose lower is here.
            # link_netnsid is that namespace's id for the lower's one, which cannot be mapped back from
            # here: a lower in a third namespace with the same ifindex is refused too (the safe side).
            if (ifindex is not None and link.get("link_index") == ifindex and "link_netnsid" in link
                    and (link.get("linkinfo") or {}).get("info_kind") != "veth"):
                kind = (link.get("linkinfo") or {}).get("info_kind") or "device"
                out.append(f"{who} has {kind} {link.get('ifname')} on top of it in another network namespace "
                           f"({ns['label']}): traffic of that namespace goes through it; pick a free NIC or "
                           f"delete {link.get('ifname')} there")
    names, conn = ssh
    if name in names:
        out.append(f"{who} carries this SSH connection ({conn}): passing it through would cut the session "
                   f"that runs the harness; pick another NIC")
    return out


def _device_refusals(addr: str, facts: dict, ssh: tuple[set[str], str]) -> tuple[dict, list[str]]:
    f = facts["pci"][addr]
    res = {"addr": addr, "exists": f["exists"], "class": f["class"], "driver": f["driver"], "vfs": f["vfs"],
           "interfaces": [], "elsewhere": []}
    out: list[str] = []
    if not f["exists"]:
        out.append(f"{addr}: no such PCI device in {facts['pci_dir']}: list this machine's NICs with "
                   f"`lspci -D -d ::0200` and fix HX_PASSTHROUGH")
        return res, out
    cls = f["class"]
    try:
        base = int(cls or "", 16) >> 16
    except ValueError:
        base = -1
    if base != 0x02:
        what = CLASSES.get(base, "not a network controller")
        out.append(f"{addr} is not a network device (class {cls or '?'}, {what}): the harness "
                   f"passes through NICs only; pick a NIC (`lspci -D -d ::0200`)")
        return res, out
    funcs = [(addr, addr)] + [(vf, f"its VF {vf}") for vf in f["vfs"]]
    here = [(name, fn, owner) for fn, owner in funcs for name in facts["ifaces"].get(fn, [])]
    res["interfaces"] = [n for n, _, _ in here]
    if "ip" in facts["errors"] and here:
        out.append(f"{addr}: cannot check whether it is in use ({facts['errors']['ip']}): the harness refuses "
                   f"what it cannot check")
    else:
        for name, _, owner in here:
            out += _iface_refusals(addr, name, owner, facts, ssh)
    for ns in facts["netns"]:
        for link in ns["links"]:
            fn = link.get("hx_pci")
            owner = next((o for a, o in funcs if a == fn), None)
            if owner is None:
                continue
            res["elsewhere"].append({"ifname": link.get("ifname"), "of": fn, "netns": ns["label"]})
            out.append(f"{addr} ({link.get('ifname')}{'' if owner == addr else ', ' + owner}) lives in another "
                       f"network namespace ({ns['label']}): a container or another network stack uses it; pick "
                       f"another NIC or give it back to the host (ip link set {link.get('ifname')} netns 1, in "
                       f"that namespace)")
    for fn, owner in funcs:
        drv = facts["pci"].get(fn, {}).get("driver")
        found = facts["ifaces"].get(fn) or any(link.get("hx_pci") == fn for ns in facts["netns"]
                                               for link in ns["links"])
        if not found and drv not in FREE_DRIVERS:
            what = addr if owner == addr else f"{addr} ({owner})"
            out.append(f"{what} (driver {drv}) has no network interface in any network namespace this check can "
                       f"see: it is used without one (DPDK), lives where the check cannot look, or this check "
                       f"runs in a namespace of its own; run the check in the host's namespace as root, or pick "
                       f"another NIC{'' if owner == addr else ' (or bind that VF to vfio-pci)'}")
    if here and facts["netns_errors"]:
        out.append(f"{addr}: cannot look into every network namespace ({'; '.join(facts['netns_errors'][:3])}"
                   f"{'; ...' if len(facts['netns_errors']) > 3 else ''}): a macvlan or VLAN on it could live in "
                   f"one; the harness refuses what it cannot check (run as root, on the host)")
    s = facts.get("ssh") or {}
    if here and s.get("error") and not ssh[0]:
        out.append(f"{addr}: cannot tell which interface carries the SSH session that runs this check "
                   f"({s['error']}): the harness refuses what it cannot check; {SSH_FIX}")
    elif here and "ssh" in facts["errors"]:
        out.append(f"{addr}: cannot tell which interface carries this SSH connection ({facts['errors']['ssh']}): "
                   f"the harness refuses what it cannot check")
    if "holders" in facts["errors"]:
        out.append(f"{addr}: cannot check whether it is in use ({facts['errors']['holders']}): the harness "
                   f"refuses what it cannot check")
    else:
        for fn, owner in funcs:
            held = [h for p in facts["pci"].get(fn, {}).get("vfio_files", []) for h in facts["holders"].get(p, [])]
            if held:
                who = addr if owner == addr else f"{addr} ({owner})"
                out.append(f"{who} is held open by {', '.join(dict.fromkeys(held))} through VFIO: it is passed "
                           f"through to a running VM already; pick another NIC or stop that VM")
    return res, out


def decide(addrs: list[str], facts: dict, pool: list[str] | None) -> list[dict]:
    """Per address (as given): facts and refusals. Pure: reads nothing but its arguments."""
    declared = None if pool is None else {normalise(p) for p in pool} - {None}
    ssh = _ssh_ifaces(facts)
    out, seen = [], set()
    for raw in addrs:
        addr = normalise(raw)
        if addr is None:
            out.append({"addr": raw, "refusals": [f"{raw!r} is not a PCI address (want DDDD:BB:SS.F, e.g. "
                                                  f"0000:03:00.0): fix HX_PASSTHROUGH"]})
            continue
        res, refs = _device_refusals(addr, facts, ssh)
        if addr in seen:
            refs.insert(0, f"{addr} is declared twice: a device can be passed through once; "
                           f"remove the duplicate from HX_PASSTHROUGH")
        seen.add(addr)
        if declared is not None and addr not in declared:
            refs.insert(0, f"{addr} is not in the declared pool ({', '.join(sorted(declared)) or 'empty'}): "
                           f"the harness passes through only declared devices; add it to "
                           f"HX_PASSTHROUGH if it is a free NIC")
        res["refusals"] = refs
        out.append(res)
    return out


# ---- entry points -----------------------------------------------------------------------------------

def _foreign_netns() -> bool:
    """True when this process is not in PID 1's network namespace (and we can tell)."""
    try:
        return os.readlink("/proc/self/ns/net") != os.readlink("/proc/1/ns/net")
    except OSError:
        return False


def _in_init_ns(addrs: list[str], pool: list[str] | None, console: bool) -> list[dict]:
    """Run this file in PID 1's network + mount namespaces (nsenter) and return its --json report."""
    cmd = ["nsenter", "--net=/proc/1/ns/net", "--mount=/proc/1/ns/mnt", "--", sys.executable or "python3",
           os.path.abspath(__file__), "--json", *(["--pool", ",".join(pool)] if pool is not None else []),
           *(["--i-am-on-the-console"] if console else []), "--", *addrs]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                           env={**os.environ, _REEXEC_MARK: "1"})
        return json.loads(p.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError) as e:
        why = f"{e}" if not isinstance(e, ValueError) else (p.stderr.strip()[-300:] or "no report")
        return [{"addr": a, "refusals": [f"{a}: cannot check from this machine's own network namespace "
                                         f"(nsenter: {why}): the harness refuses what it cannot check; "
                                         f"run it outside network namespaces"]} for a in addrs]


def report(addrs: list[str], pool: list[str] | None = None, *, console: bool = False,
           host: Host | None = None) -> list[dict]:
    """Per address: facts read from this machine and its refusals (see the module docstring).
    `pool` None: the declared pool, HX_PASSTHROUGH of `host`'s environment."""
    if host is None:
        if _foreign_netns() and not os.environ.get(_REEXEC_MARK):
            return _in_init_ns(list(addrs), pool, console)
        host = Host()
    if pool is None:
        pool = declared_pool(host.env)
    facts = collect([a for a in map(normalise, addrs) if a], host, console=console)
    return decide(list(addrs), facts, pool)


def refusals(addrs: list[str], pool: list[str] | None = None, **kw) -> list[str]:
    """Every reason to refuse passing `addrs` through on this machine; [] means all are safe."""
    return [r for res in report(addrs, pool, **kw) for r in res["refusals"]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Refuse host PCI devices that are unsafe to pass through.")
    ap.add_argument("addrs", nargs="+", metavar="ADDR", help="PCI address, DDDD:BB:SS.F")
    ap.add_argument("--pool", help="comma-separated declared pool (default: HX_PASSTHROUGH); "
                                   "addresses outside it are refused")
    ap.add_argument("--i-am-on-the-console", dest="console", action="store_true",
                    help="this session is not over SSH (needed under sudo when that cannot be traced)")
    ap.add_argument("--json", action="store_true", help="print the facts and refusals as JSON")
    try:
        a = ap.parse_args(argv)
    except SystemExit as e:           # argparse exits 2 on usage errors; 2 means "refused" here
        return 1 if e.code else 0
    pool = None if a.pool is None else split_list(a.pool)
    rep = report(a.addrs, pool, console=a.console)
    if a.json:
        print(json.dumps(rep, indent=1))
    else:
        for r in (r for res in rep for r in res["refusals"]):
            print(r)
    return 2 if any(res["refusals"] for res in rep) else 0


if __name__ == "__main__":
    sys.exit(main())
