"""Real-passthrough safety inside the bed: a real machine with a NIC in use and free NICs.

Why: the bed is the one machine here with both kinds. Its management NIC carries 10.0.2.15, the
default route and the very SSH session the test runs through; its e1000e NICs are free. The
stdlib-only harness/bed/passthrough.py is copied in and run there, as the Vagrantfile runs it on a
QA host. Devices are leased like scenarios lease them, so a concurrent run never has the same one.
"""
from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from harness.bed import passthrough as pt
from harness.bed import passthrough_facts
from harness.engine.devices import Leases

pytestmark = [pytest.mark.bed]

REMOTE_DIR = "/tmp/hx-passthrough"
REMOTE = f"{REMOTE_DIR}/passthrough.py"


@pytest.fixture
def bed(hx_target):
    b = hx_target.bed
    if b is None:
        pytest.skip("needs a harness bed (SSH into it), not a bare libvirt URI")
    for mod in (pt, passthrough_facts):        # the script and the facts module it imports from beside it
        f = Path(mod.__file__)
        p = subprocess.run(b.ssh_argv(f"mkdir -p {REMOTE_DIR} && cat > {REMOTE_DIR}/{f.name}"), input=f.read_text(),
                           text=True, capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr
    yield b
    b.ssh(f"rm -rf {REMOTE_DIR}", timeout=30)


def check(bed, *args: str) -> tuple[int, list[dict]]:
    p = bed.ssh(f"python3 {REMOTE} --json " + " ".join(shlex.quote(a) for a in args), timeout=120)
    assert p.returncode in (0, 2), p.stdout + p.stderr
    return p.returncode, json.loads(p.stdout)


def sh(bed, cmd: str) -> str:
    p = bed.ssh(cmd, timeout=60)
    assert p.returncode == 0, f"{cmd}: {p.stderr}"
    return p.stdout.strip()


def test_management_nic_refused_for_every_reason(bed):
    route = json.loads(sh(bed, "ip -j route show default"))[0]
    dev = route["dev"]
    addr = Path(sh(bed, f"readlink -f /sys/class/net/{dev}/device")).name   # virtio: virtioN
    if not pt.ADDR_RE.match(addr):
        addr = Path(sh(bed, f"readlink -f /sys/class/net/{dev}/device/..")).name
    ip4 = json.loads(sh(bed, f"ip -j -4 addr show dev {dev}"))[0]["addr_info"][0]
    ssh_local = sh(bed, "echo $SSH_CONNECTION").split()[2]
    assert ssh_local == ip4["local"]                 # the session this test runs through uses that NIC
    rc, rep = check(bed, addr)
    assert rc == 2
    text = "\n".join(rep[0]["refusals"])
    assert f"{addr} ({dev}) carries {ip4['local']}/{ip4['prefixlen']}" in text, text
    assert f"{addr} ({dev}) carries the default route (via {route['gateway']}" in text, text
    assert f"{addr} ({dev}) has routes via it" in text, text
    assert f"{addr} ({dev}) carries this SSH connection" in text and ssh_local in text, text


def test_free_e1000e_accepted(bed, hx_target):
    """Only an e1000e bound to its own driver, so its interface was really looked at (not vacuous)."""
    with Leases(hx_target.lock_dir, hx_target.nics, wait=300) as leases:
        nic = None
        for _ in range(sum(1 for n in hx_target.nics if n.kind == "e1000e")):
            cand = leases.lease("free", "e1000e")
            bound = sh(bed, f"test -e /sys/bus/pci/drivers/e1000e/{cand.pci} && ls /sys/bus/pci/devices/{cand.pci}/net"
                            f" || true")
            if bound:
                nic = cand
                break
        if nic is None:
            bound_now = sh(bed, "ls /sys/bus/pci/drivers/e1000e")
            pytest.fail(f"no e1000e in the bed is bound to the e1000e driver: {bound_now}")
        rc, rep = check(bed, nic.pci)
        assert rc == 0, rep
        assert rep[0]["driver"] == "e1000e" and rep[0]["interfaces"] == [bound], rep
        assert rep[0]["refusals"] == []
        rc, _ = check(bed, "--pool", nic.pci, nic.pci)
        assert rc == 0
        rc, rep = check(bed, "--pool", "0000:00:01.0", nic.pci)
        assert rc == 2 and rep[0]["refusals"] == [
            f"{nic.pci} is not in the declared pool (0000:00:01.0): the harness passes through only declared "
            f"devices; add it to HX_PASSTHROUGH if it is a free NIC"]


def test_vfio_bound_nic_accepted_when_free_refused_when_held(bed, hx_target):
    """A NIC on vfio-pci has no interface to look at: free is fine, held open by a process is not."""
    with Leases(hx_target.lock_dir, hx_target.nics, wait=300) as leases:
        vf = leases.lease("vf", "vf")
        dev = f"/sys/bus/pci/devices/{vf.pci}"
        before = sh(bed, f"basename $(readlink -f {dev}/driver) 2>/dev/null || true")
        holder = None
        try:
            if before != "vfio-pci":
                sh(bed, f"modprobe vfio-pci; echo vfio-pci > {dev}/driver_override; "
                        f"{'echo ' + vf.pci + ' > ' + dev + '/driver/unbind; ' if before else ''}"
                        f"echo {vf.pci} > /sys/bus/pci/drivers_probe")
            group = sh(bed, f"basename $(readlink -f {dev}/iommu_group)")
            rc, rep = check(bed, vf.pci)
            assert rc == 0, rep
            assert rep[0]["driver"] == "vfio-pci" and rep[0]["interfaces"] == []
            holder = sh(bed, f"nohup python3 -c 'import os,time; os.open(\"/dev/vfio/{group}\", os.O_RDWR); "
                             f"time.sleep(120)' >/dev/null 2>&1 & echo $!")
            sh(bed, f"for i in $(seq 50); do ls -l /proc/{holder}/fd | grep -q /dev/vfio/{group} && exit 0; "
                    f"sleep 0.1; done; exit 1")
            rc, rep = check(bed, vf.pci)
            assert rc == 2
            assert rep[0]["refusals"] == [f"{vf.pci} is held open by pid {holder} (python3) through VFIO: it is "
                                          f"passed through to a running VM already; pick another NIC or stop "
                                          f"that VM"], rep
            # its PF must be refused too: passing the PF through would tear the VF out of that "VM"
            if vf.physfn:
                _, rep = check(bed, vf.physfn)
                assert f"{vf.physfn} (its VF {vf.pci}) is held open by pid {holder} (python3)" in \
                    "\n".join(rep[0]["refusals"]), rep
        finally:
            if holder:
                bed.ssh(f"kill {holder}", timeout=30)
            if before != "vfio-pci":
                bed.ssh(f"echo {vf.pci} > /sys/bus/pci/drivers/vfio-pci/unbind; echo > {dev}/driver_override; "
                        f"echo {vf.pci} > /sys/bus/pci/drivers_probe", timeout=60)
        if before and before != "vfio-pci":
            assert sh(bed, f"basename $(readlink -f {dev}/driver)") == before
