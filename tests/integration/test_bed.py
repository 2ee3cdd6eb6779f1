"""The QEMU bed, for real: hardware, preconditions, pinned SSH, and every fault path of bed up/down.

These boot real VMs (minutes under TCG). The shared bed is the one the scenario catalog uses
(fixture hx_target from the plugin); lifecycle tests use beds of their own names.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import libvirt
import pytest
from filelock import FileLock

from harness.bed import guest_kernel, image, lifecycle, qemu, state, status
from harness.engine.devices import Leases
from harness.errors import HarnessError

pytestmark = [pytest.mark.bed, pytest.mark.slow]


def harness(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def qemu_pids(name: str) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f"hx-bed-{name}\0".encode() in f.read():   # the whole -name argument
                        out.append(int(pid))
            except OSError:
                pass
    return out


# ---- the shared bed: hardware and preconditions ---------------------------------------------

def test_bed_preconditions_all_hold(hx_target):
    rows = {r.name: r for r in status.checks(hx_target.bed)}
    failing = [f"{r.name}: {r.value} (want {r.want})" for r in rows.values() if not r.ok]
    assert not failing, failing
    assert int(rows["IOMMU groups"].value) >= 4
    pf_vfs = [r for n, r in rows.items() if n.startswith("PF ") and n.endswith(" VFs")]
    assert pf_vfs and int(pf_vfs[0].value) >= 4
    assert int(rows["e1000e NICs"].value) >= 2
    assert "qemu" in rows["domain types"].value.split(",")
    assert rows["libvirt-daemon version"].value.startswith("11.3.0")


def test_tiny_guest_boots_the_kernel_built_for_it(hx_target):
    """The bed holds the kernel bed/guest_kernel.py built (not Debian's), and its image says so; that it
    acknowledges unplugs is what the catalog's guest scenarios prove."""
    rows = {r.name: r for r in status.checks(hx_target.bed)}
    assert rows["tiny guest's kernel"].ok and rows["tiny guest's kernel"].value.endswith("-hx-guest")
    versions = image.image_for(hx_target.bed.suite).manifest["versions"]
    assert versions["guest_kernel"].startswith("tiny " + guest_kernel.cache_key() + " from linux-source-")


def test_vfs_registers_answer_so_the_pf_mailbox_works(hx_target):
    """The VFs' BARs lie below 4 GiB (bed/state.py: QEMU maps a VF BAR above it at the wrong address), so the
    bed's igbvf reaches the PF: rebinding a VF (what libvirt does when it hands one back) meets no mailbox
    timeout."""
    bed = hx_target.bed
    rows = {r.name: r for r in status.checks(bed)}
    bars = [r for n, r in rows.items() if n.endswith("VF BARs below 4 GiB")]
    assert bars and all(r.ok for r in bars), [(r.name, r.value) for r in bars]
    with Leases(hx_target.lock_dir, hx_target.nics, wait=300) as leases:
        vf = leases.lease("vf", "vf")       # a VF no scenario holds; left on its host driver, igbvf
        p = bed.ssh(f"cd /sys/bus/pci/drivers/igbvf && n=$(dmesg | wc -l) && echo {vf.pci} > unbind && "
                    f"echo {vf.pci} > bind && dmesg | tail -n +$((n + 1)) | grep 'igbvf {vf.pci}'",
                    timeout=60, check=True)
    # What the probe printed: with the VF out of reach, "PF still in reset state" and "PF still resetting",
    # one per 1 s mailbox timeout; with the PF answering, neither.
    assert f"igbvf {vf.pci}: Address:" in p.stdout, p.stdout
    assert "PF still" not in p.stdout, p.stdout


def test_bed_inventory_gives_each_vf_its_own_iommu_group(hx_target):
    vfs = [n for n in hx_target.nics if n.kind == "vf"]
    assert len(vfs) >= 4
    groups = [v.iommu_group for v in vfs]
    assert None not in groups and len(set(groups)) == len(groups)
    assert len([n for n in hx_target.nics if n.kind == "e1000e"]) >= 2


def test_bed_says_which_accelerator_and_why(hx_target):
    bed = hx_target.bed
    assert bed.accel in ("kvm", "tcg")
    assert bed.accel_reason
    cmdline = (bed.path / "qemu.cmdline").read_text()
    assert f"-accel {bed.accel}" in cmdline or (bed.accel == "tcg" and "-accel tcg" in cmdline)
    assert "intel-iommu,intremap=on,caching-mode=on" in cmdline
    assert "restrict=on" in cmdline and f"hostfwd=tcp:127.0.0.1:{bed.ssh_port}-:22" in cmdline


def test_status_json_lists_the_bed_with_checks(hx_target):
    p = harness("bed", "status", "--json", "--name", hx_target.bed.name, timeout=120)
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data[0]["name"] == hx_target.bed.name
    assert {c["name"] for c in data[0]["checks"]} >= {"IOMMU groups", "vfio-pci loaded", "libvirtd active"}


def test_libvirt_over_ssh_pins_the_bed_host_key(hx_target, tmp_path):
    bed = hx_target.bed
    c = libvirt.open(bed.uri)
    assert c.getLibVersion() >= 9000000
    c.close()
    # A bed presenting another host key must be refused: same config, a known_hosts with a foreign key.
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    pub = (tmp_path / "other.pub").read_text().split()
    (tmp_path / "known_hosts").write_text(f"hx-bed-{bed.name} {pub[0]} {pub[1]}\n")
    cfg = bed.ssh_config.read_text().replace(str(bed.known_hosts), str(tmp_path / "known_hosts"))
    cfg = cfg.replace("ControlMaster auto", "ControlMaster no").replace("ControlPath ", "ControlPath none\n  #")
    (tmp_path / "ssh_config").write_text(cfg)
    p = subprocess.run(["ssh", "-F", str(tmp_path / "ssh_config"), "bed", "true"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode != 0
    assert "host key" in p.stderr.lower() or "verification failed" in p.stderr.lower()


def test_no_private_key_in_image_or_repo(hx_target):
    img = image.image_for(hx_target.bed.suite)
    assert img.ready()
    # The image holds no SSH host key: every bed gets its own through fw_cfg.
    p = subprocess.run(["debugfs", "-R", "ls -l /etc/ssh", str(img.disk)], capture_output=True, text=True)
    assert p.returncode == 0
    assert "ssh_host_" not in p.stdout
    keys = subprocess.run(["git", "grep", "-lIE", "^-----BEGIN [A-Z ]*PRIVATE KEY-----$"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert keys.stdout.strip() == ""


# ---- lifecycle and faults (own bed names) ---------------------------------------------------

def test_unknown_suite_is_refused_with_the_choices():
    p = harness("bed", "up", "--suite", "potato", timeout=60)
    assert p.returncode == 2
    assert "unknown suite 'potato'" in p.stderr and "trixie" in p.stderr and "bookworm" in p.stderr
    assert "Traceback" not in p.stderr


def test_port_already_taken_is_refused_and_nothing_is_left():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = harness("bed", "up", "--name", "hx-itest-port", "--port", str(port), timeout=300)
    assert p.returncode == 2
    assert f"port 127.0.0.1:{port} is already taken" in p.stderr
    assert state.load("hx-itest-port") is None
    assert qemu_pids("hx-itest-port") == []


def test_second_bed_up_while_one_runs_is_refused():
    with FileLock(str(state.bed_dir("hx-itest-busy")) + ".lock"):
        p = harness("bed", "up", "--name", "hx-itest-busy", timeout=60)
    assert p.returncode == 2
    assert "another 'bed up' or 'bed down'" in p.stderr


def test_bed_down_with_nothing_up_says_so():
    p = harness("bed", "down", "--name", "hx-itest-nothing", timeout=60)
    assert p.returncode == 2
    assert "no bed named 'hx-itest-nothing' is up" in p.stderr


def test_missing_host_tool_is_named(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))
    p = subprocess.run([sys.executable, "-m", "harness.cli", "bed", "up", "--name", "hx-itest-tools"],
                       capture_output=True, text=True, timeout=60, env=env,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert p.returncode == 2
    assert "missing host tools" in p.stderr and "qemu-system-x86_64" in p.stderr


def test_a_bed_that_never_answers_times_out_with_the_serial_log_and_leaves_nothing():
    with pytest.raises(HarnessError) as e:
        lifecycle.up(suite="trixie", name="hx-itest-slow", timeout=8, cold=True)   # template path: test_bed_snapshot
    assert "not ready after 8 s" in e.value.message
    assert "serial log" in str(e.value)
    assert state.load("hx-itest-slow") is None
    assert not state.bed_dir("hx-itest-slow").exists()
    assert qemu_pids("hx-itest-slow") == []


def test_full_up_status_down_cycle_leaves_nothing():
    bed = lifecycle.up(suite="trixie", name="hx-itest-cycle", memory_mib=2048)
    try:
        assert qemu.alive(bed.pid)
        assert bed.ssh("systemctl is-active libvirtd", timeout=60).stdout.strip() == "active"
        port = bed.ssh_port
    finally:
        done = lifecycle.down("hx-itest-cycle")
    assert any("stopped QEMU" in d for d in done)
    assert not qemu.alive(bed.pid)
    assert qemu_pids("hx-itest-cycle") == []
    assert not bed.path.exists()          # overlay, keys, sockets, logs all gone
    assert not qemu.port_taken(port)
