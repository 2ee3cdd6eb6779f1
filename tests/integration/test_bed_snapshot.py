"""Beds started from a saved template, for real: two beds from one template, each with its own keys and
its own overlay over the frozen template disk, VFs and libvirtd working, nothing left after down; and a
broken template falls back to a cold boot.

Uses beds of 2048 MiB (as test_bed's cycle test) so the template is shared with it; the template is made
by a cold boot of a bed of its own if the cache has none yet.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import libvirt
import pytest

from harness.bed import image, lifecycle, qemu, state, template, template_store
from harness.errors import HarnessError
from harness.libvirt_build.source import _sha256 as sha256
from test_bed import qemu_pids  # one /proc scan for both bed test modules

pytestmark = [pytest.mark.bed, pytest.mark.slow]

MEM = 2048
ORIGIN, A, B, FALLBACK = "hx-itest-snap-origin", "hx-itest-snap-a", "hx-itest-snap-b", "hx-itest-snap-fallback"
REPO = Path(__file__).resolve().parent.parent.parent


def fingerprint(pub: str) -> str:
    return subprocess.run(["ssh-keygen", "-lf", "-"], input=pub, capture_output=True, text=True,
                          check=True).stdout.split()[1]


def served_host_key(bed) -> str:
    p = subprocess.run(["ssh-keyscan", "-T", "20", "-t", "ed25519", "-p", str(bed.ssh_port), "127.0.0.1"],
                       capture_output=True, text=True, timeout=60)
    line = next(ln for ln in p.stdout.splitlines() if not ln.startswith("#") and "ssh-ed25519" in ln)
    return " ".join(line.split()[1:3])


def login_with(bed, key: Path, known_host_pub: str, tmp: Path) -> subprocess.CompletedProcess:
    """SSH to `bed` with another client key and/or another pinned host key (no shared master)."""
    kh = tmp / f"kh-{bed.name}-{key.name}"
    kh.write_text(f"pinned {known_host_pub}\n")
    return subprocess.run(
        ["ssh", "-F", "/dev/null", "-p", str(bed.ssh_port), "-i", str(key), "-o", "IdentitiesOnly=yes",
         "-o", f"UserKnownHostsFile={kh}", "-o", "HostKeyAlias=pinned", "-o", "StrictHostKeyChecking=yes",
         "-o", "GlobalKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
         "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "LogLevel=ERROR", "root@127.0.0.1", "true"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def suite(request):
    return request.config.getoption("hx_suite")


@pytest.fixture(scope="module")
def tpl(suite):
    img = image.build(suite)
    accel = qemu.detect_accel(img, None)[0]
    t = template_store.for_hardware(img, memory_mib=MEM, accel=accel)
    if not t.ready():
        bed = lifecycle.up(suite=suite, name=ORIGIN, memory_mib=MEM)
        try:
            assert bed.extra["boot"]["path"] == "cold"
            assert bed.extra["boot"]["saved_template"]["template"] == t.key
            # the origin bed keeps running on its own overlay after the pause, its clock set again, and
            # it no longer accepts the template's key (authorized only for the saved moment)
            assert bed.ssh("virsh -c qemu:///system version --daemon", timeout=60).returncode == 0
            assert abs(float(bed.ssh("date +%s.%N", timeout=60).stdout) - time.time()) < 5
            r = template.template_key_refused(bed, t)
            assert r.returncode == 255 and "permission denied" in r.stderr.lower(), r.stderr
            assert t.client_key.read_text() != bed.key_file.read_text()
        finally:
            lifecycle.down(ORIGIN)
    assert t.ready()
    return t


@pytest.fixture(scope="module")
def pair(suite, tpl):
    before = {"disk": (sha256(tpl.disk), tpl.disk.stat().st_mtime_ns),
              "state": (sha256(tpl.state), tpl.state.stat().st_mtime_ns)}
    beds = []
    try:
        for name in (A, B):
            t0 = time.monotonic()
            bed = lifecycle.up(suite=suite, name=name, memory_mib=MEM)
            bed.extra["test_up_s"] = time.monotonic() - t0
            beds.append(bed)
        if not tpl.key.startswith(image.cache_key(suite) + "-"):
            pytest.skip(f"the image recipe changed while the test ran (now {image.cache_key(suite)}, template "
                        f"{tpl.key}): a concurrent edit of harness/bed; rerun")
        yield {"beds": beds, "before": before}
    finally:
        for name in (A, B):
            if state.load(name) is not None:
                lifecycle.down(name)


def test_both_beds_started_from_the_same_template(pair, tpl):
    for bed in pair["beds"]:
        boot = bed.extra["boot"]
        assert boot["path"] == "template" and boot["template"] == tpl.key, boot
        assert boot["vfs"] >= 4
        assert bed.extra["test_up_s"] < 60        # a cold boot takes 50-110 s here
    a, b = pair["beds"]
    assert a.ssh_port != b.ssh_port and a.pid != b.pid
    assert not (a.path / "known_hosts.template").exists() and not (a.path / "ssh_config.template").exists()


def test_each_bed_has_its_own_host_key_pinned(pair, tpl, tmp_path):
    a, b = pair["beds"]
    keys = {}
    for bed in (a, b):
        own = " ".join((bed.path / "host_ed25519.pub").read_text().split()[:2])
        assert served_host_key(bed) == own                              # what the bed presents
        pinned = bed.known_hosts.read_text().split()
        assert pinned[0] == f"hx-bed-{bed.name}" and " ".join(pinned[1:3]) == own  # what we pin
        assert bed.ssh("true", timeout=60).returncode == 0             # StrictHostKeyChecking yes
        keys[bed.name] = fingerprint(own)
    tpl_fp = fingerprint(tpl.host_pub.read_text())
    assert len({*keys.values(), tpl_fp}) == 3, (keys, tpl_fp)
    # the template's host key is no longer presented by either bed
    tpl_pub = " ".join(tpl.host_pub.read_text().split()[:2])
    for bed in (a, b):
        p = login_with(bed, bed.key_file, tpl_pub, tmp_path)
        assert p.returncode == 255 and "verification failed" in p.stderr.lower(), p.stderr


def test_the_template_client_key_is_refused_by_both_and_each_key_only_by_its_bed(pair, tpl, tmp_path):
    a, b = pair["beds"]
    for bed in (a, b):
        p = template.template_key_refused(bed, tpl)
        assert p.returncode == 255 and "permission denied" in p.stderr.lower(), p.stderr
        authorized = bed.ssh("cat /root/.ssh/authorized_keys", timeout=60).stdout.split("\n")
        authorized = [ln for ln in authorized if ln.strip()]
        assert authorized == [(bed.path / "id_ed25519.pub").read_text().strip()]
        mode = bed.ssh("stat -c %a /etc/ssh/ssh_host_ed25519_key /root/.ssh/authorized_keys", timeout=60).stdout
        assert mode.split() == ["600", "600"]
    for bed, other in ((a, b), (b, a)):
        own_pub = " ".join((bed.path / "host_ed25519.pub").read_text().split()[:2])
        p = login_with(bed, other.key_file, own_pub, tmp_path)
        assert p.returncode == 255 and "permission denied" in p.stderr.lower(), p.stderr


def test_overlays_are_the_beds_own_over_the_frozen_template_disk(pair, tpl):
    a, b = pair["beds"]
    inodes = set()
    for bed in (a, b):
        ov = bed.path / "overlay.qcow2"
        inodes.add(ov.stat().st_ino)
        info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(ov)], capture_output=True,
                              text=True, check=True).stdout
        data = json.loads(info)
        assert data["full-backing-filename"] == str(tpl.disk)
        assert data["backing-filename-format"] == "qcow2"
        assert f"file={ov}," in (bed.path / "qemu.cmdline").read_text()
    assert len(inodes) == 2 and tpl.disk.stat().st_ino not in inodes
    assert oct(tpl.disk.stat().st_mode & 0o777) == "0o444" and oct(tpl.state.stat().st_mode & 0o777) == "0o444"


def test_vfs_iommu_groups_vfio_and_libvirtd_work_after_the_restore(pair):
    for bed in pair["beds"]:
        out = bed.ssh("cat /sys/class/net/*/device/sriov_numvfs | sort -n | tail -1; "
                      "for v in /sys/class/net/*/device/virtfn*; do basename $(readlink -f $v/iommu_group); done",
                      timeout=60).stdout.split()
        assert int(out[0]) == 4
        assert len(out[1:]) == 4 and len(set(out[1:])) == 4          # each VF in its own IOMMU group
        c = libvirt.open(bed.uri)
        try:
            assert c.getLibVersion() >= 9000000
            assert c.listAllDomains() == []                           # nothing from the template's past
            assert not [n.name() for n in c.listAllNetworks() if n.name().startswith("hx-")]
            vfs = [d for d in c.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_PCI_DEV)
                   if "<capability type='phys_function'>" in d.XMLDesc()]
            assert len(vfs) == 4
            vf = vfs[0]
            vf.dettach()
            addr = vf.name()[4:].replace("_", ":", 2).replace("_", ".")   # pci_0000_01_10_0 -> 0000:01:10.0
            drv = bed.ssh(f"basename $(readlink /sys/bus/pci/devices/{addr}/driver)", timeout=60).stdout.strip()
            vf.reAttach()
            assert drv == "vfio-pci"
        finally:
            c.close()


def test_guest_clock_rng_and_seed_scenario(pair, tmp_path):
    a, b = pair["beds"]
    for bed in (a, b):
        t = float(bed.ssh("date +%s.%N", timeout=60).stdout)
        assert abs(t - time.time()) < 5
        # vmgenid: the guest kernel reseeded its RNG when started from the saved RAM
        assert "crng reseeded due to virtual machine fork" in bed.ssh("dmesg", timeout=60).stdout
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "scenarios", "-q",
                        "-k", "seed-hostdev", "--bed", a.name, "--no-bed-up", "--results-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=900, cwd=REPO)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "1 passed" in p.stdout


def test_down_leaves_nothing_and_the_template_unchanged(pair, tpl):
    for bed in pair["beds"]:
        done = lifecycle.down(bed.name)
        assert any("stopped QEMU" in d for d in done)
        assert qemu_pids(bed.name) == [] and not qemu.alive(bed.pid)
        assert not bed.path.exists()
        assert not qemu.port_taken(bed.ssh_port)
    assert (sha256(tpl.disk), tpl.disk.stat().st_mtime_ns) == pair["before"]["disk"]
    assert (sha256(tpl.state), tpl.state.stat().st_mtime_ns) == pair["before"]["state"]
    assert tpl.ready()


def test_a_restore_slower_than_the_callers_timeout_fails_cleanly_and_keeps_the_template(suite, tpl):
    name = "hx-itest-snap-slow"
    with pytest.raises(HarnessError) as e:
        lifecycle.up(suite=suite, name=name, memory_mib=MEM, timeout=2)
    assert f"bed {name}: not ready after 2 s (starting from template {tpl.key}" in e.value.message
    assert state.load(name) is None and not state.bed_dir(name).exists()
    assert qemu_pids(name) == []
    assert tpl.ready()                        # the caller's timeout is not the template's fault


def test_a_broken_template_falls_back_to_a_cold_boot_and_is_discarded(suite, tpl, monkeypatch, capsys):
    """A copy of the template with a damaged stream (same size and mtime, so it passes the cheap checks):
    QEMU refuses it, the bed says so, boots cold, and the broken copy is removed; the real one stays."""
    broken = template_store.templates_dir() / f".itest-broken-{os.getpid()}"     # not a name prune() looks at
    shutil.rmtree(broken, ignore_errors=True)
    shutil.copytree(tpl.dir, broken, copy_function=shutil.copy2)
    os.chmod(broken / "state.mig", 0o644)
    st = (broken / "state.mig").stat()
    with open(broken / "state.mig", "r+b") as f:
        f.write(b"\0" * 4096)
    os.utime(broken / "state.mig", ns=(st.st_atime_ns, st.st_mtime_ns))
    bad = template_store.Template(key=tpl.key, dir=broken)
    real_find = template.find
    monkeypatch.setattr(template, "find", lambda bed, img, cmd: (bad, "") if bed.name == FALLBACK
                        else real_find(bed, img, cmd))
    real_before = sha256(tpl.disk)
    try:
        bed = lifecycle.up(suite=suite, name=FALLBACK, memory_mib=MEM)
        err = capsys.readouterr().err
        assert f"bed {FALLBACK}: start from template {tpl.key} failed" in err, err
        assert "booting cold" in err
        assert bed.extra["boot"]["path"] == "cold"
        assert "saved_template" not in bed.extra["boot"]        # the real template was there already
        assert not broken.exists()
        assert bed.ssh("virsh -c qemu:///system version --daemon", timeout=60).returncode == 0
        pub = " ".join((bed.path / "host_ed25519.pub").read_text().split()[:2])
        assert served_host_key(bed) == pub
    finally:
        if state.load(FALLBACK) is not None:
            lifecycle.down(FALLBACK)
        shutil.rmtree(broken, ignore_errors=True)
    assert qemu_pids(FALLBACK) == []
    assert tpl.ready() and sha256(tpl.disk) == real_before
