"""Real-passthrough facts: what this machine says about host PCI devices, as plain data.

Why a module of its own: harness/bed/passthrough.py judges (a pure function of facts) and is the
script the Vagrantfile runs; this is the I/O side it reads the machine through. ``Host`` is the thin
layer (sysfs, procfs, ``ip -j``, ``nsenter``, ``loginctl``) unit tests replace with a fake tree and
canned JSON; ``collect`` gathers every fact the rules need. Stdlib only, like passthrough.py, and
copied beside it wherever it runs.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import subprocess

SYS_PCI = "/sys/bus/pci/devices"
ADDR_RE = re.compile(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")
#: where named network namespaces are bind-mounted (iproute2, docker); processes give the rest
NETNS_DIRS = ("/run/netns", "/var/run/netns", "/run/docker/netns")
#: ancestors after which SSH_CONNECTION no longer says where the session comes from
SWITCH_COMMS = {"sudo", "sudo-rs", "su", "su-rs", "doas", "pkexec", "run0", "runuser"}
DETACH_COMMS = {"tmux", "tmux: server", "tmux: client", "screen", "SCREEN", "dtach", "abduco", "zellij"}
SWITCH_ENV = ("SUDO_USER", "SUDO_UID", "DOAS_USER", "PKEXEC_UID")


def split_list(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


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
