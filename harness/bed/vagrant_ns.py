"""The Vagrant bed's private world on the host: a network namespace and a libvirtd of its own.

Why this exists: vagrant-libvirt needs a libvirtd with a NAT management network, and the host has
none of its own (PID 1 is not systemd) and must not get one. So, per bed (harness/bed/vagrant.py
drives Vagrant on top of this):

* a network namespace ``hx-vg-<bed>``: libvirtd, virtlogd, dnsmasq, QEMU and vagrant all run inside
  it, so vagrant-libvirt's management network (192.168.121.0/24 with NAT) exists only there and has
  no way out of this machine;
* private libvirt directories under the bed dir (``lv/{etc,run,lib,cache,log}``) bind-mounted over
  /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt in a private
  mount namespace for every process we start there (the ``nsexec`` wrapper in the bed dir): the
  host's libvirt config, storage and logs are never read or written. qemu.conf there has
  ``cgroup_controllers = [ ]``, ``user = "root"`` (the fw_cfg key files live under /root) and no
  security driver. The one trace on the host is an empty /run/libvirt mount point, made if missing.
  The daemons' sockets are plain files under the bed dir, so the host can talk to
  that libvirtd with ``qemu+unix:///system?socket=<bed>/lv/run/libvirt-sock`` (``extra["libvirt_uri"]``).

``kill_netns`` stops every process left in the namespace (libvirtd, virtlogd, dnsmasq, QEMU,
proxies) and deletes it.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from harness.bed.state import BedInfo
from harness.errors import HarnessError

NS_PREFIX = "hx-vg-"
#: private dir (under <bed>/lv) -> the path it is bind-mounted over inside the namespace
LV_DIRS = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt",
           "cache": "/var/cache/libvirt", "log": "/var/log/libvirt"}

LIBVIRTD_CONF = """\
# libvirt-alias-harness: private libvirtd for one Vagrant bed (network namespace {ns})
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""

QEMU_CONF = """\
# libvirt-alias-harness: private qemu.conf for one Vagrant bed.
# QEMU runs as root: the per-bed key files handed in with -fw_cfg live under the bed dir (/root/...).
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
# No systemd on the host: no cgroup or per-VM /dev namespace management.
cgroup_controllers = [ ]
namespaces = [ ]
"""

VIRTLOGD_CONF = """\
# libvirt-alias-harness: private virtlogd for one Vagrant bed
log_outputs = "3:file:/var/log/libvirt/virtlogd.log"
"""


def ns_name(name: str) -> str:
    return NS_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "-", name)


def netns_exists(ns: str) -> bool:
    return os.path.exists(f"/run/netns/{ns}")


def read_pid(f: Path) -> int:
    try:
        return int(f.read_text().strip())
    except (OSError, ValueError):
        return 0


def run(cmd: list[str], what: str, timeout: float, env: dict | None = None,
        log: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Every subprocess here is bounded; output optionally kept in a log file in the bed dir."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") if isinstance(e.stdout, bytes) else (e.stdout or "").encode()
        if log:
            log.write_bytes(out)
        tail = "\n".join(out.decode(errors="replace").strip().splitlines()[-20:])
        raise HarnessError(f"{what} timed out after {timeout:.0f} s\n{tail}") from None
    if log:
        log.write_text(p.stdout + p.stderr)
    if check and p.returncode != 0:
        # Ruby backtraces say nothing to a person: keep the message lines, drop the "from ..." frames.
        lines = [ln for ln in (p.stdout + p.stderr).strip().splitlines() if not ln.lstrip().startswith("from /")]
        tail = "\n".join(lines[-25:])
        raise HarnessError(f"{what} failed (exit {p.returncode})\n{tail}")
    return p


def lv_dir(bed: BedInfo) -> Path:
    return bed.path / "lv"


def nsexec(bed: BedInfo) -> Path:
    return bed.path / "nsexec"


def _write_nsexec(bed: BedInfo, ns: str) -> None:
    """<bed>/nsexec CMD...: run CMD in the bed's netns with the bed's private libvirt dirs."""
    mounts = "\n".join(f"mount --bind '{lv_dir(bed) / k}' '{v}'" for k, v in LV_DIRS.items())
    nsexec(bed).write_text(
        "#!/bin/sh\n"
        f"# Runs a command in network namespace {ns} with this bed's private libvirt directories.\n"
        f"exec ip netns exec '{ns}' unshare --mount --propagation private -- /bin/sh -ec '\n"
        f"{mounts}\n"
        "exec \"$@\"' hx-nsexec \"$@\"\n")
    nsexec(bed).chmod(0o755)


def libvirt_uri(bed: BedInfo) -> str:
    """URI of the bed's own (outer) libvirtd, usable from the host."""
    return f"qemu+unix:///system?socket={lv_dir(bed) / 'run' / 'libvirt-sock'}"


def start_daemons(bed: BedInfo, ns: str) -> None:
    """The namespace, the private libvirt dirs, virtlogd and libvirtd in it; returns once libvirtd answers."""
    for k in LV_DIRS:
        (lv_dir(bed) / k).mkdir(parents=True, exist_ok=True)
    for target in LV_DIRS.values():
        # Mount points must exist on the host; /run/libvirt is the only one the packages may not
        # have made. An empty directory, nothing is ever written to it outside our namespaces.
        os.makedirs(target, exist_ok=True)
    (lv_dir(bed) / "etc" / "libvirtd.conf").write_text(LIBVIRTD_CONF.format(ns=ns))
    (lv_dir(bed) / "etc" / "qemu.conf").write_text(QEMU_CONF)
    (lv_dir(bed) / "etc" / "virtlogd.conf").write_text(VIRTLOGD_CONF)
    _write_nsexec(bed, ns)
    if not netns_exists(ns):
        run(["ip", "netns", "add", ns], f"ip netns add {ns}", timeout=20)
    run(["ip", "-n", ns, "link", "set", "lo", "up"], "loopback up", timeout=20)
    run([str(nsexec(bed)), "virtlogd", "--daemon", "--pid-file", str(bed.path / "virtlogd.pid")],
         "virtlogd start", timeout=30)
    run([str(nsexec(bed)), "libvirtd", "--daemon", "--pid-file", str(bed.path / "libvirtd.pid")],
         "libvirtd start", timeout=60)
    deadline = time.monotonic() + 60
    last = ""
    while time.monotonic() < deadline:
        p = subprocess.run(["virsh", "-c", libvirt_uri(bed), "version"], capture_output=True, text=True,
                           timeout=30, stdin=subprocess.DEVNULL)
        if p.returncode == 0:
            bed.extra["libvirtd_pid"] = read_pid(bed.path / "libvirtd.pid")
            bed.extra["virtlogd_pid"] = read_pid(bed.path / "virtlogd.pid")
            return
        last = p.stderr.strip()
        time.sleep(1)
    raise HarnessError(f"the bed's libvirtd in netns {ns} does not answer: {last}",
                       hint=f"log: {lv_dir(bed) / 'log' / 'libvirtd.log'}")




def kill_netns(ns: str, grace: float = 15.0) -> list[str]:
    """Stop every process in the namespace (TERM, then KILL), then delete it."""
    done = []
    if not netns_exists(ns):
        return done

    def pids() -> list[int]:
        p = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=20)
        return [int(x) for x in p.stdout.split() if x.isdigit()]

    first = pids()
    names = []
    for pid in first:
        try:
            names.append(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            pass
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        left = pids()
        if not left:
            break
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        t = time.monotonic() + wait
        while time.monotonic() < t and pids():
            time.sleep(0.3)
    left = pids()
    if first:
        done.append(f"stopped {len(first) - len(left)} process(es) in netns {ns}: {', '.join(sorted(set(names)))}")
    if left:
        done.append(f"WARNING: could not stop pids {left} in netns {ns}")
    p = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True, timeout=20)
    done.append(f"deleted netns {ns}" if p.returncode == 0 else f"WARNING: ip netns del {ns}: {p.stderr.strip()}")
    return done


