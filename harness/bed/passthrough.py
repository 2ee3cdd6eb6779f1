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

import ipaddress
import json
import os
import re
import socket
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
#: where named network namespaces are bind-mounted (iproute2, docker); processes give the rest
NETNS_DIRS = ("/run/netns", "/var/run/netns", "/run/docker/netns")
#: ancestors after which SSH_CONNECTION no longer says where the session comes from
SWITCH_COMMS = {"sudo", "sudo-rs", "su", "su-rs", "doas", "pkexec", "run0", "runuser"}
DETACH_COMMS = {"tmux", "tmux: server", "tmux: client", "screen", "SCREEN", "dtach", "abduco", "zellij"}
SWITCH_ENV = ("SUDO_USER", "SUDO_UID", "DOAS_USER", "PKEXEC_UID")
SSH_FIX = ("set HX_SSH_IFACE=<the interface the session uses> (HX_SSH_IFACE=none or --i-am-on-the-console "
           "when it is not over SSH), keep the variable (sudo --preserve-env=SSH_CONNECTION) or run "
           "without sudo")


def normalise(addr: str) -> str | None:
    """'03:00.0' or '0000:03:00.0' -> '0000:03:00.0' (lower case); None when malformed."""
    m = ADDR_RE.match(addr.strip())
    if not m:
        return None
    return f"{(m.group(1) or '0000').lower()}:{m.group(2).lower()}:{m.group(3).lower()}.{m.group(4)}"


def split_list(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def declared_pool(env: dict | None = None) -> list[str] | None:
    """The declared pool: HX_PASSTHROUGH (None when unset or empty: nothing declared)."""
    pool = split_list((os.environ if env is None else env).get("HX_PASSTHROUGH"))
    return pool or None


# ---- the I/O layer -------------------------------------------------------------------------------

class Host:
    """Everything the check reads from the machine. Tests give it a fake sysfs/procfs root and
    override ``ip`` and ``loginctl``; nothing else in this module touches the machine."""

    def __init__(self, sys_root: str = "/sys", proc_root: str = "/proc", netns_dirs=NETNS_DIRS,
                 env: dict | None = None):
        self.sys = sys_root.rstrip("/") or "/"
        self.proc = proc_root.rstrip("/") or "/"
        self.netns_dirs = tuple(netns_dirs)
        self.env = dict(os.environ if env is None else env)

    @property
    def pci_dir(self) -> str:
        return os.path.join(self.sys, "bus", "pci", "devices")

    def read(self, path: str) -> str:
        try:
            with open(path, errors="replace") as f:
                return f.read().strip()
        except OSError:
            return ""

    def ip(self, args: list[str], ns: str | None = None) -> list:
        """`ip -j ARGS` as JSON, in network namespace file `ns` (None: this one); RuntimeError when it
        cannot be asked (the caller refuses what it cannot check)."""
        cmd = ["ip", "-j", *args]
        if ns is not None:
            cmd = ["nsenter", f"--net={ns}", "--", *cmd]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=15, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise RuntimeError(f"{' '.join(cmd)}: {e}") from None
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip()[-300:]}")
        try:
            return json.loads(p.stdout or "[]")
        except ValueError as e:
            raise RuntimeError(f"{' '.join(cmd)}: not JSON ({e})") from None

    def loginctl(self, session: str) -> dict:
        """logind's Remote/RemoteHost/Leader of a session ({} when logind cannot be asked)."""
        try:
            p = subprocess.run(["loginctl", "show-session", session, "-p", "Remote", "-p", "RemoteHost",
                                "-p", "Leader", "-p", "Service"], capture_output=True, text=True, timeout=10,
                               stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return {}
        if p.returncode != 0:
            return {}
        return dict(ln.split("=", 1) for ln in p.stdout.splitlines() if "=" in ln)


# ---- collection: facts as plain data --------------------------------------------------------------

def _pci_of(path: str) -> str | None:
    """The PCI function a sysfs device path belongs to (nearest DDDD:BB:SS.F component)."""
    for part in reversed(path.split("/")):
        if ADDR_RE.match(part) and ":" in part[:5]:
            return part
    return None


def _device_facts(host: Host, addr: str) -> dict:
    dev = os.path.join(host.pci_dir, addr)
    f = {"exists": os.path.isdir(dev), "class": None, "driver": None, "vfs": [], "path": None,
         "vfio_files": []}
    if not f["exists"]:
        return f
    f["path"] = os.path.realpath(dev)
    f["class"] = host.read(os.path.join(dev, "class")) or None
    drv = os.path.join(dev, "driver")
    f["driver"] = os.path.basename(os.path.realpath(drv)) if os.path.exists(drv) else None
    try:
        names = os.listdir(dev)
    except OSError:
        names = []
    vfs = [n for n in names if re.fullmatch(r"virtfn\d+", n)]
    f["vfs"] = [os.path.basename(os.path.realpath(os.path.join(dev, n)))
                for n in sorted(vfs, key=lambda n: int(n[6:]))]
    grp = os.path.join(dev, "iommu_group")
    if os.path.lexists(grp):
        f["vfio_files"].append("/dev/vfio/" + os.path.basename(os.path.realpath(grp)))
    vdir = os.path.join(dev, "vfio-dev")
    if os.path.isdir(vdir):
        f["vfio_files"] += ["/dev/vfio/devices/" + n for n in sorted(os.listdir(vdir)) if n.startswith("vfio")]
    return f


def _net_ifaces(host: Host, pci: dict) -> dict[str, list[str]]:
    """PCI address -> names of its net interfaces in this namespace. Walks /sys/class/net rather
    than DEV/net/, because some drivers (virtio) put the interface deeper (DEV/virtio2/net/eth0)."""
    out: dict[str, list[str]] = {a: [] for a in pci}
    cls = os.path.join(host.sys, "class", "net")
    paths = {a: f["path"] for a, f in pci.items() if f.get("path")}
    for name in sorted(os.listdir(cls)) if os.path.isdir(cls) else []:
        real = os.path.realpath(os.path.join(cls, name))
        for a, path in paths.items():
            if real.startswith(path + "/"):
                out[a].append(name)
    return out


def _holders(host: Host, files: set[str]) -> dict[str, list[str]]:
    """/dev/vfio file -> 'pid N (comm)' of each process holding it open. One pass over /proc."""
    out: dict[str, list[str]] = {}
    if not files:
        return out
    for pid in sorted(filter(str.isdigit, os.listdir(host.proc)), key=int):
        fd_dir = os.path.join(host.proc, pid, "fd")
        try:
            fds = os.listdir(fd_dir)
        except PermissionError:
            raise RuntimeError("cannot read other processes' open files (run as root)") from None
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if target in files:
                who = f"pid {pid} ({host.read(os.path.join(host.proc, pid, 'comm'))})"
                if who not in out.setdefault(target, []):
                    out[target].append(who)
    return out


def _namespaces(host: Host) -> tuple[str | None, list[dict], list[str]]:
    """(this process's netns id, every other netns as {id, path, label}, what could not be read)."""
    try:
        own = os.readlink(os.path.join(host.proc, "self", "ns", "net"))
    except OSError as e:
        return None, [], [f"own network namespace: {e.strerror or e}"]
    seen: dict[str, dict] = {}
    errors = []
    for pid in sorted(filter(str.isdigit, os.listdir(host.proc)), key=int):
        path = os.path.join(host.proc, pid, "ns", "net")
        try:
            nsid = os.readlink(path)
        except FileNotFoundError:
            continue                      # gone, or a zombie (no namespaces left)
        except OSError as e:
            if os.path.isdir(os.path.join(host.proc, pid)):
                errors.append(f"pid {pid} ({host.read(os.path.join(host.proc, pid, 'comm'))}): "
                              f"{e.strerror or e}")
            continue
        if nsid != own and nsid not in seen:
            seen[nsid] = {"id": nsid, "path": path,
                          "label": f"pid {pid} ({host.read(os.path.join(host.proc, pid, 'comm'))})"}
    for d in host.netns_dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for name in names:
            path = os.path.join(d, name)
            try:
                nsid = f"net:[{os.stat(path).st_ino}]"
            except OSError:
                continue
            if nsid == own:
                continue
            if nsid in seen:
                if path not in seen[nsid]["label"]:
                    seen[nsid]["label"] += f", {path}"
            else:
                seen[nsid] = {"id": nsid, "path": path, "label": path}
    return own, list(seen.values()), errors


def _tcp_endpoints(host: Host, pid: str) -> list[tuple[str, str]]:
    """(remote, local) IP of every established TCP socket process `pid` holds."""
    inodes = set()
    fd_dir = os.path.join(host.proc, pid, "fd")
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return []
    for fd in fds:
        try:
            m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(os.path.join(fd_dir, fd)))
        except OSError:
            continue
        if m:
            inodes.add(m.group(1))
    out = []
    for table in ("tcp", "tcp6"):
        for line in host.read(os.path.join(host.proc, pid, "net", table)).splitlines()[1:]:
            f = line.split()
            if len(f) < 10 or f[3] != "01" or f[9] not in inodes:      # 01: ESTABLISHED
                continue
            try:
                out.append((_hex_ip(f[2].split(":")[0]), _hex_ip(f[1].split(":")[0])))
            except ValueError:
                continue
    return out


def _hex_ip(h: str) -> str:
    """/proc/net/tcp{,6} address (host byte order per 32-bit word) -> text; IPv4-mapped -> IPv4."""
    if len(h) == 8:
        return socket.inet_ntoa(bytes.fromhex(h)[::-1])
    if len(h) != 32:
        raise ValueError(h)
    a = ipaddress.IPv6Address(b"".join(bytes.fromhex(h[i:i + 8])[::-1] for i in range(0, 32, 8)))
    return str(a.ipv4_mapped or a)


def _stat_fields(host: Host, pid: str) -> list[str]:
    return host.read(os.path.join(host.proc, pid, "stat")).rsplit(")", 1)[-1].split()


def _local_tty(tty_nr: int) -> bool:
    """A virtual console, a serial line or /dev/console: someone at the machine, not over SSH."""
    major, minor = (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    return (major == 4 and 1 <= minor) or (major == 5 and minor == 1)


def _ssh_facts(host: Host, console: bool) -> dict:
    """Where the SSH session that runs this check comes from: facts for `decide`."""
    f = {"conns": [], "declared": [], "console": console, "local": None, "switch": None, "error": None}
    env = host.env
    decl: list[str] | None = None

    def declare(text: str) -> None:
        nonlocal decl
        decl = split_list(text)
        if [d.lower() for d in decl] == ["none"]:
            f["console"] = True
        else:
            f["declared"] = decl

    if "HX_SSH_IFACE" in env:
        declare(env["HX_SSH_IFACE"])

    def conn(text: str, how: str) -> None:
        parts = text.split()
        if len(parts) == 4:
            c = {"client": parts[0].split("%")[0], "local": parts[2].split("%")[0], "how": how}
            if all((c["client"], c["local"]) != (x["client"], x["local"]) for x in f["conns"]):
                f["conns"].append(c)

    if env.get("SSH_CONNECTION"):
        conn(env["SSH_CONNECTION"], "SSH_CONNECTION")
    if any(env.get(k) for k in SWITCH_ENV):
        f["switch"] = next(f"{k}={env[k]}" for k in SWITCH_ENV if env.get(k))
    # the process chain: sudo (and su, doas) drop SSH_CONNECTION; the shell and sshd above still know
    try:
        pid = os.readlink(os.path.join(host.proc, "self"))
    except OSError:
        pid = str(os.getpid())
    chain, tty_local = [], False
    for _ in range(128):
        if not pid.isdigit() or pid == "0":
            break
        comm = host.read(os.path.join(host.proc, pid, "comm"))
        chain.append(f"{pid} ({comm})")
        if comm in SWITCH_COMMS and not f["switch"]:
            f["switch"] = f"{comm} (pid {pid})"
        if comm in DETACH_COMMS and not f["switch"]:
            f["switch"] = f"{comm} (pid {pid}), whose sessions are not its children"
        st = _stat_fields(host, pid)
        try:
            tty_local = tty_local or _local_tty(int(st[4]))
        except (IndexError, ValueError):
            pass
        if pid != "1":
            try:
                with open(os.path.join(host.proc, pid, "environ"), "rb") as fh:
                    for item in fh.read().split(b"\0"):
                        key, _, val = item.decode(errors="replace").partition("=")
                        if key == "SSH_CONNECTION":
                            conn(val, f"environment of pid {pid} ({comm})")
                        elif key == "HX_SSH_IFACE" and decl is None:
                            declare(val)        # set for the harness, which starts vagrant without it
            except OSError:
                pass
            if comm.startswith("sshd"):
                for remote, local in _tcp_endpoints(host, pid):
                    conn(f"{remote} 0 {local} 0", f"socket of pid {pid} ({comm})")
        ppid = next((ln.split(":", 1)[1].strip() for ln in host.read(os.path.join(host.proc, pid, "status"))
                     .splitlines() if ln.startswith("PPid:")), "0")
        if ppid == pid:
            break
        pid = ppid
    f["chain"] = chain
    if f["conns"] or f["console"] or f["declared"] or not f["switch"]:
        return f
    # sudo/su/tmux in the way and nothing found: ask logind about the login session
    cg = host.read(os.path.join(host.proc, "self", "cgroup"))
    m = re.search(r"/session-([^/.\s]+)\.scope", cg)
    sid = m.group(1) if m else host.read(os.path.join(host.proc, "self", "sessionid"))
    if sid and sid != "4294967295":
        s = host.loginctl(sid)
        if s.get("Remote") == "yes":
            leader = s.get("Leader", "")
            for remote, local in (_tcp_endpoints(host, leader) if leader.isdigit() else []):
                conn(f"{remote} 0 {local} 0", f"socket of logind session {sid} leader pid {leader}")
            if not f["conns"] and s.get("RemoteHost"):
                f["conns"].append({"client": s["RemoteHost"], "local": "", "how": f"logind session {sid}"})
        elif s.get("Remote") == "no":
            f["local"] = f"logind session {sid} is local ({s.get('Service') or 'no service'})"
    if not f["conns"] and not f["local"] and tty_local:
        f["local"] = "a process of this session has a console or serial line as its terminal"
    if not f["conns"] and not f["local"]:
        f["error"] = (f"run through {f['switch']}, which drops SSH_CONNECTION, and neither the process chain "
                      f"({' <- '.join(chain[:8])}) nor logind shows where the session comes from")
    return f


def collect(addrs: list[str], host: Host, console: bool = False) -> dict:
    """Facts about normalised `addrs` (and their VFs) on `host`, as plain data for `decide`."""
    facts: dict = {"pci_dir": host.pci_dir, "pci": {}, "ifaces": {}, "links": [], "addrs": [], "routes": [],
                   "uppers": {}, "netns": [], "netns_errors": [], "ssh": None, "holders": {}, "errors": {}}
    pci = facts["pci"]
    for a in addrs:
        if a not in pci:
            pci[a] = _device_facts(host, a)
        for vf in pci[a]["vfs"]:
            if vf not in pci:
                pci[vf] = _device_facts(host, vf)

    def is_nic(f: dict) -> bool:
        try:
            return f["exists"] and int(f["class"] or "", 16) >> 16 == 0x02
        except ValueError:
            return False

    if not any(is_nic(pci[a]) for a in addrs):
        return facts                       # nothing more is needed to refuse all of them
    files = {p for f in pci.values() for p in f["vfio_files"]}
    try:
        facts["holders"] = _holders(host, files)
    except RuntimeError as e:
        facts["errors"]["holders"] = str(e)
    facts["ifaces"] = _net_ifaces(host, pci)
    mine = sorted({n for names in facts["ifaces"].values() for n in names})
    cls = os.path.join(host.sys, "class", "net")
    for name in mine:
        try:
            facts["uppers"][name] = sorted(n[len("upper_"):] for n in os.listdir(os.path.join(cls, name))
                                           if n.startswith("upper_"))
        except OSError:
            facts["uppers"][name] = []
    try:
        facts["links"] = host.ip(["-d", "link", "show"])
        if mine:
            facts["addrs"] = host.ip(["addr", "show"])
            facts["routes"] = [r for fam in ("-4", "-6") for r in host.ip([fam, "route", "show", "table", "all"])]
    except (RuntimeError, ValueError) as e:
        facts["errors"]["ip"] = str(e)
    own, others, errors = _namespaces(host)
    facts["netns_self"], facts["netns_errors"] = own, errors
    paths = {a: f["path"] for a, f in pci.items() if f.get("path")}
    for ns in others:
        try:
            links = host.ip(["-d", "link", "show"], ns=ns["path"])
        except (RuntimeError, ValueError) as e:
            if os.path.lexists(ns["path"]):
                facts["netns_errors"].append(f"{ns['label']}: {e}")
            continue                       # the process left; its namespace with it (or another has it)
        for link in links:
            # which PCI function the interface belongs to (IFLA_PARENT_DEV_*: pci, or virtio under pci)
            bus, parent = link.get("parentbus"), link.get("parentdev")
            if bus and parent:
                real = (os.path.join(host.pci_dir, parent) if bus == "pci"
                        else os.path.join(host.sys, "bus", bus, "devices", parent))
                real = os.path.realpath(real)
                link["hx_pci"] = next((a for a, p in paths.items() if real == p or real.startswith(p + "/")),
                                      _pci_of(real))
        facts["netns"].append({**ns, "links": links})
    try:
        facts["ssh"] = _ssh_facts(host, console)
    except (RuntimeError, ValueError, OSError) as e:
        facts["ssh"] = {"conns": [], "declared": [], "console": False, "local": None, "switch": None,
                        "error": f"cannot read the process chain ({e})"}
    for c in facts["ssh"]["conns"]:
        if c["client"]:
            try:
                c["route_devs"] = sorted({r["dev"] for r in host.ip(["route", "get", c["client"]]) if r.get("dev")})
            except (RuntimeError, ValueError) as e:
                facts["errors"]["ssh"] = f"ip route get {c['client']}: {e}"
    return facts


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
    import argparse
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
