"""The Vagrant bed, for real: vagrant-libvirt in a network namespace gives the same bed as direct QEMU.

Why this exists: the Vagrant path (harness/bed/vagrant.py + the top-level Vagrantfile) is only
worth having if what it boots is interchangeable with the QEMU bed: pinned SSH, libvirtd reachable
over qemu+ssh, an igb PF with VFs, IOMMU groups, two e1000e NICs; and if `down` really leaves
nothing behind (namespace, QEMU, libvirtd, virtlogd, dnsmasq). Minutes under TCG, hence slow.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.bed]

BED_NAME = "hx-itest-vagrant"


def _have_tools() -> str | None:
    missing = [t for t in ("vagrant", "libvirtd", "virtlogd", "socat", "ip", "unshare") if shutil.which(t) is None]
    if missing:
        return "missing host tools: " + ", ".join(missing)
    if os.geteuid() != 0:
        return "needs root (network namespace, libvirtd)"
    return None


def _procs_mentioning(text: str) -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and str(os.getpid()) != pid:
            out.append(f"{pid}: {cmd[:200]}")
    return out


@pytest.fixture(scope="module")
def vagrant_bed():
    why = _have_tools()
    if why:
        pytest.skip(why)
    from harness.bed import lifecycle
    from harness.bed import state as state_mod

    t0 = time.monotonic()
    try:
        # Through the lead's dispatcher, as `harness bed up --via vagrant` does it.
        bed = lifecycle.up(suite="trixie", via="vagrant", name=BED_NAME, cpus=2, vfs=4,
                           timeout=900)
    except BaseException:
        if state_mod.load(BED_NAME):
            lifecycle.down(BED_NAME)
        raise
    up_seconds = time.monotonic() - t0
    state = {"bed": bed, "up_seconds": up_seconds, "removed": None, "down_seconds": None}
    try:
        yield state
    finally:
        if state["removed"] is None and state_mod.load(BED_NAME):
            lifecycle.down(BED_NAME)


def test_ssh_with_pinned_host_key(vagrant_bed):
    bed = vagrant_bed["bed"]
    cfg = bed.ssh_config.read_text()
    assert "StrictHostKeyChecking yes" in cfg
    assert "ProxyCommand ip netns exec" in cfg
    p = bed.ssh("cat /etc/ssh/ssh_host_ed25519_key.pub", timeout=60)
    assert p.returncode == 0, p.stderr
    ours = (bed.path / "host_ed25519.pub").read_text().split()[1]
    assert p.stdout.split()[1] == ours
    # A wrong pinned key must make SSH fail, never silently accept.
    good = bed.known_hosts.read_text()
    try:
        other = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(bed.path / "wrong")],
                               capture_output=True, timeout=30)
        assert other.returncode == 0
        wrong = (bed.path / "wrong.pub").read_text().split()
        bed.known_hosts.write_text(f"hx-bed-{bed.name} {wrong[0]} {wrong[1]}\n")
        p = subprocess.run(["ssh", "-F", str(bed.ssh_config), "-o", "ControlMaster=no", "-o", "ControlPath=none",
                            "bed", "true"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert p.returncode != 0
    finally:
        bed.known_hosts.write_text(good)


def test_libvirt_over_qemu_ssh(vagrant_bed):
    import libvirt

    bed = vagrant_bed["bed"]
    conn = libvirt.open(bed.uri)
    try:
        assert conn.getLibVersion() > 0
        assert conn.getType() == "QEMU"
    finally:
        conn.close()


def test_igb_pf_has_vfs(vagrant_bed):
    bed = vagrant_bed["bed"]
    p = bed.ssh("for f in /sys/class/net/*/device/sriov_numvfs; do "
                "echo $(basename $(readlink -f $(dirname $f)/driver)) $(cat $f); done", timeout=60)
    assert p.returncode == 0, p.stderr
    igb = [line.split() for line in p.stdout.splitlines() if line.startswith("igb ")]
    assert igb, p.stdout
    assert max(int(n) for _, n in igb) >= 4, p.stdout


def test_iommu_groups(vagrant_bed):
    bed = vagrant_bed["bed"]
    p = bed.ssh("ls /sys/kernel/iommu_groups | wc -l; cat /proc/cmdline", timeout=60)
    assert p.returncode == 0, p.stderr
    groups, cmdline = p.stdout.splitlines()[0], p.stdout.splitlines()[1]
    assert int(groups) > 4
    assert "intel_iommu=on" in cmdline and "iommu=pt" in cmdline


def test_two_e1000e(vagrant_bed):
    bed = vagrant_bed["bed"]
    p = bed.ssh("for d in /sys/bus/pci/devices/*; do echo $(cat $d/vendor):$(cat $d/device); done", timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split().count("0x8086:0x10d3") == 2, p.stdout    # 82574L = QEMU e1000e


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")    # dead, awaiting reaping
    except OSError:
        return True


def test_down_leaves_nothing(vagrant_bed):
    from harness.bed import lifecycle, vagrant

    bed = vagrant_bed["bed"]
    ns = bed.extra["netns"]
    assert vagrant.alive(bed)
    in_ns = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=20).stdout.split()
    comms = set()
    for pid in in_ns:
        try:
            comms.add(open(f"/proc/{pid}/comm").read().strip())
        except OSError:
            pass
    assert {"libvirtd", "virtlogd", "dnsmasq"} <= comms and any(c.startswith("qemu") for c in comms), comms
    t0 = time.monotonic()
    removed = lifecycle.down(bed.name)
    vagrant_bed["removed"] = removed
    vagrant_bed["down_seconds"] = time.monotonic() - t0
    print(f"\nvagrant bed: up {vagrant_bed['up_seconds']:.0f} s, down {vagrant_bed['down_seconds']:.0f} s;",
          *removed, sep="\n  ")
    assert not os.path.exists(f"/run/netns/{ns}")
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20).stdout
    assert ns not in netns
    assert not bed.path.exists()
    # Nothing of ours left: every process we start names the bed dir (pid files, fw_cfg key files,
    # the libvirt socket) or the namespace.
    assert _procs_mentioning(str(bed.path)) == []
    assert _procs_mentioning(ns) == []
    # ... and every process that lived in the namespace (libvirtd, virtlogd, dnsmasq, QEMU) is gone.
    assert [p for p in in_ns if not _gone(int(p))] == []
    assert not vagrant.alive(bed)
