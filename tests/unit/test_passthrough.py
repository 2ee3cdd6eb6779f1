"""Real-passthrough safety, against THIS machine's real devices and against a fake machine.

Why: handing a NIC in use to a VM cuts the host off the network. harness/bed/passthrough.py must
refuse this host's own NIC (it has an address and the default route), a PCI device that is no NIC,
an address that does not exist or is malformed, and one outside the declared pool; and it must do
so for plain `vagrant up` (the Vagrantfile shells out to it) and for `harness bed up --via vagrant`
(before anything is created). On this host, devices are found from /sys at run time, never
hard-coded. What this host does not have (SR-IOV VFs, containers' network namespaces, sudo over
SSH) is built as a fake sysfs + procfs tree with canned per-namespace `ip -j` answers, fed through
the module's own collection layer (passthrough.Host) into its pure decision (passthrough.decide).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness import paths
from harness.bed import passthrough as pt
from harness.bed import passthrough_facts as pt_facts

SCRIPT = Path(pt.__file__)


@pytest.fixture(autouse=True)
def _no_declarations(monkeypatch):
    """The pool and the SSH declaration come from the environment: none unless a test sets one."""
    for k in ("HX_PASSTHROUGH", "HX_SSH_IFACE", pt._REEXEC_MARK):
        monkeypatch.delenv(k, raising=False)


def _default_route_nic() -> tuple[str, str]:
    """(PCI address, interface) of the NIC that carries this host's default route."""
    routes = json.loads(subprocess.run(["ip", "-j", "route", "show", "default"], capture_output=True,
                                       text=True, timeout=10, check=True).stdout)
    for r in routes:
        dev = r.get("dev")
        for link in glob.glob(f"/sys/class/net/{dev}/device"):
            real = os.path.realpath(link)
            # virtio puts the netdev under DEV/virtioN: walk up to the PCI function
            while real != "/" and not pt.ADDR_RE.match(os.path.basename(real)):
                real = os.path.dirname(real)
            if pt.ADDR_RE.match(os.path.basename(real)):
                return os.path.basename(real), dev
    pytest.skip(f"no PCI NIC carries this host's default route ({routes})")


def _non_nic() -> str:
    for d in sorted(glob.glob(f"{pt_facts.SYS_PCI}/*")):
        cls = Path(d, "class").read_text().strip()
        if int(cls, 16) >> 16 == 0x06:          # a bridge (host bridge, PCIe root port)
            return os.path.basename(d)
    pytest.skip("no PCI bridge on this host")


def _free_addr() -> str:
    have = {os.path.basename(d) for d in glob.glob(f"{pt_facts.SYS_PCI}/*")}
    return next(f"0000:ee:{s:02x}.0" for s in range(32) if f"0000:ee:{s:02x}.0" not in have)


def run_script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env=env, stdin=subprocess.DEVNULL)


def test_own_nic_refused_for_address_and_default_route():
    addr, dev = _default_route_nic()
    rep = pt.report([addr])[0]
    assert dev in rep["interfaces"], rep
    text = "\n".join(rep["refusals"])
    ip4 = [a for link in json.loads(subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", dev],
                                                   capture_output=True, text=True, timeout=10).stdout)
           for a in link["addr_info"]]
    assert ip4 and f"{ip4[0]['local']}/{ip4[0]['prefixlen']}" in text, text
    assert f"{addr} ({dev}) carries the default route" in text, text
    assert "routes via it" in text, text
    assert all(r.startswith(addr) for r in rep["refusals"])
    assert "pick a free NIC or remove its address" in text      # each refusal says the fix


def test_script_exit_codes_and_json():
    addr, dev = _default_route_nic()
    p = run_script(addr)
    assert p.returncode == 2, p
    assert f"{addr} ({dev}) carries" in p.stdout and "default route" in p.stdout
    p = run_script("--json", addr)
    assert p.returncode == 2
    data = json.loads(p.stdout)
    assert data[0]["addr"] == addr and data[0]["class"].startswith("0x02") and dev in data[0]["interfaces"]
    assert run_script().returncode != 0 and run_script().returncode != 2      # usage error, not a verdict


def test_ssh_connection_interface_refused():
    """SSH_CONNECTION names the session that runs the harness: its local address maps to the NIC."""
    addr, dev = _default_route_nic()
    local = json.loads(subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", dev], capture_output=True,
                                      text=True, timeout=10).stdout)[0]["addr_info"][0]["local"]
    p = run_script(addr, env={**os.environ, "SSH_CONNECTION": f"127.0.0.1 40000 {local} 22"})
    assert f"{addr} ({dev}) carries this SSH connection (127.0.0.1 -> {local})" in p.stdout, p.stdout


def test_non_nic_refused():
    addr = _non_nic()
    r = pt.refusals([addr])
    assert len(r) == 1 and r[0].startswith(f"{addr} is not a network device (class 0x06"), r


def test_nonexistent_and_malformed_refused():
    missing = _free_addr()
    r = pt.refusals([missing, "0000:03:00", "eth0", "0000:zz:00.0"])
    assert r[0].startswith(f"{missing}: no such PCI device"), r
    assert [x.split(" is not")[0] for x in r[1:]] == ["'0000:03:00'", "'eth0'", "'0000:zz:00.0'"], r
    assert all("not a PCI address" in x for x in r[1:])


def test_outside_declared_pool_refused_and_duplicates():
    addr, _ = _default_route_nic()
    other = _non_nic()
    r = pt.refusals([other], pool=[addr])
    assert r[0].startswith(f"{other} is not in the declared pool ({addr})"), r
    # short form and case normalise to the same device; in the pool, only the real facts remain
    short = addr.split(":", 1)[1].upper()
    r = pt.refusals([short], pool=[addr])
    assert not any("declared pool" in x for x in r) and any("default route" in x for x in r), r
    r = pt.refusals([addr, short])
    assert any(x.startswith(f"{addr} is declared twice") for x in r), r


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare")
def test_other_network_namespace_does_not_hide_the_nic():
    """Inside a fresh network namespace (as vagrant runs under the harness) the host's NIC is invisible;
    the check must still refuse it, never accept it for lack of an interface to look at."""
    addr, _ = _default_route_nic()
    sh = f"mount -t sysfs none /sys && exec {sys.executable} {SCRIPT} {addr}"
    p = subprocess.run(["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", sh],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p
    assert p.stdout.startswith(addr), p.stdout


# ---- the Vagrantfile and vagrant.py paths ----------------------------------------------------

def _vagrant_validate(tmp_path: Path, passthrough: str | None) -> subprocess.CompletedProcess:
    keys = tmp_path / "keys"
    keys.mkdir(exist_ok=True)
    for f in ("id_ed25519", "id_ed25519.pub", "host_ed25519", "host_ed25519.pub"):
        (keys / f).touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAGRANT_", "HX_"))}
    env.update({"VAGRANT_HOME": str(tmp_path / "vagrant-home"), "VAGRANT_CWD": str(paths.REPO),
                "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"), "VAGRANT_CHECKPOINT_DISABLE": "1",
                "VAGRANT_NO_COLOR": "1", "HX_KEY_DIR": str(keys)})
    if passthrough is not None:
        env["HX_PASSTHROUGH"] = passthrough
    return subprocess.run(["vagrant", "validate"], capture_output=True, text=True, timeout=300, env=env,
                          stdin=subprocess.DEVNULL)


@pytest.mark.skipif(not shutil.which("vagrant"), reason="vagrant not installed")
def test_vagrantfile_refuses_before_lv_pci(tmp_path):
    addr, dev = _default_route_nic()
    ok = _vagrant_validate(tmp_path, None)
    assert ok.returncode == 0, ok.stdout + ok.stderr        # the control: the Vagrantfile is fine otherwise
    p = _vagrant_validate(tmp_path, addr)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    assert "HX_PASSTHROUGH refused" in out, out
    assert f"{addr} ({dev}) carries the default route" in out, out
    p = _vagrant_validate(tmp_path, f"{addr.split(':', 1)[1]},{_non_nic()}")
    out = p.stdout + p.stderr
    assert p.returncode != 0 and f"{_non_nic()} is not a network device" in out, out


def test_vagrant_bed_up_refuses_before_creating_anything(monkeypatch):
    from harness.bed import lifecycle, vagrant_ns
    from harness.bed import state as state_mod
    from harness.errors import HarnessError

    if os.geteuid() != 0:
        pytest.skip("the Vagrant bed needs root")
    addr, dev = _default_route_nic()
    name = "hx-utest-passthrough-refused"
    monkeypatch.setenv("HX_PASSTHROUGH", f"{addr},{_free_addr()}")
    try:
        with pytest.raises(HarnessError) as ei:
            lifecycle.up(suite="trixie", via="vagrant", name=name)
    except HarnessError as e:                      # missing host tools: says so, before our check
        pytest.skip(str(e))
    msg = str(ei.value)
    assert "real passthrough refused, nothing was created" in msg
    assert f"{addr} ({dev}) carries the default route" in msg and "no such PCI device" in msg
    assert ei.value.hint and "HX_PASSTHROUGH" in ei.value.hint
    assert not state_mod.bed_dir(name).exists() and state_mod.load(name) is None
    assert not vagrant_ns.netns_exists(vagrant_ns.ns_name(name))
    Path(str(state_mod.bed_dir(name)) + ".lock").unlink(missing_ok=True)


def test_declared_pool_is_hx_passthrough_not_the_list_itself():
    """The CLI, as the Vagrantfile calls it (devices only, no --pool), compares with HX_PASSTHROUGH."""
    addr, _ = _default_route_nic()
    other = _non_nic()
    p = run_script(other, env={**os.environ, "HX_PASSTHROUGH": addr})
    assert p.returncode == 2 and p.stdout.startswith(f"{other} is not in the declared pool ({addr})"), p.stdout
    p = run_script(addr, env={**os.environ, "HX_PASSTHROUGH": addr.split(":", 1)[1]})
    assert p.returncode == 2 and "declared pool" not in p.stdout and "default route" in p.stdout, p.stdout


# ---- a fake machine: sysfs + procfs trees and canned per-namespace `ip -j` output ------------------

HOST_NS = "net:[4026531840]"
CONTAINER_NS = "net:[4026532500]"
PF, VF0, VF1, OTHER = "0000:03:00.0", "0000:03:10.0", "0000:03:10.2", "0000:04:00.0"


def _hexip(ip: str) -> str:
    return "".join(f"{b:02X}" for b in reversed(socket.inet_aton(ip)))


class Machine:
    """A fake /sys and /proc under tmp_path, plus what `ip -j` says in each network namespace."""

    def __init__(self, root: Path):
        self.root = root
        self.sys, self.proc, self.netns = root / "sys", root / "proc", root / "netns"
        for d in ("bus/pci/devices", "devices/pci0000:00", "devices/virtual/net", "class/net", "bus/pci/drivers",
                  "kernel/iommu_groups"):
            (self.sys / d).mkdir(parents=True)
        self.proc.mkdir()
        self.netns.mkdir()
        self.ns_ip: dict[str | None, dict[str, list]] = {None: {}}
        self.route_get: dict[str, list] = {}
        self.logind: dict[str, dict] = {}
        self.links: list[dict] = []          # this namespace's `ip -d -j link show`
        self.addrs: list[dict] = []
        self.routes4: list[dict] = []
        self._ifindex = 1
        self.process(1, "systemd", 0)
        self.process(300, "python3", 1)      # the check itself (re-parented in tests)
        (self.proc / "self").symlink_to("300")

    # -- sysfs
    def device(self, addr: str, driver: str | None = "igb", cls: str = "0x020000", group: int | None = None,
               ifname: str | None = None, physfn: str | None = None) -> Path:
        d = self.sys / "devices/pci0000:00" / addr
        d.mkdir()
        (d / "class").write_text(cls + "\n")
        if driver:
            (self.sys / "bus/pci/drivers" / driver).mkdir(exist_ok=True)
            (d / "driver").symlink_to(f"../../../bus/pci/drivers/{driver}")
        if group is not None:
            (self.sys / "kernel/iommu_groups" / str(group)).mkdir()
            (d / "iommu_group").symlink_to(f"../../../kernel/iommu_groups/{group}")
        (self.sys / "bus/pci/devices" / addr).symlink_to(f"../../../devices/pci0000:00/{addr}")
        if physfn:
            pf = self.sys / "devices/pci0000:00" / physfn
            n = len(list(pf.glob("virtfn*")))
            (pf / f"virtfn{n}").symlink_to(f"../{addr}")
            (d / "physfn").symlink_to(f"../{physfn}")
        if ifname:
            self.iface(ifname, f"devices/pci0000:00/{addr}/net/{ifname}")
        return d

    def iface(self, name: str, where: str | None = None, **link) -> dict:
        """An interface in this namespace: sysfs entry + its `ip -d -j link` record."""
        where = where or f"devices/virtual/net/{name}"
        (self.sys / where).mkdir(parents=True)
        (self.sys / "class/net" / name).symlink_to(f"../../{where}")
        self._ifindex += 1
        rec = {"ifindex": self._ifindex, "ifname": name, "link_type": "ether", **link}
        self.links.append(rec)
        self.addrs.append({"ifindex": self._ifindex, "ifname": name, "addr_info": []})
        return rec

    def upper(self, lower: str, upper: str, kind: str) -> None:
        """A device on top of `lower` in this namespace (macvlan, VLAN: IFLA_LINK; bridge: master)."""
        if kind == "bridge":
            self.iface(upper, linkinfo={"info_kind": "bridge"})
            next(l for l in self.links if l["ifname"] == lower)["master"] = upper
        else:
            self.iface(upper, link=lower, linkinfo={"info_kind": kind})
        (self.sys / "class/net" / lower / f"upper_{upper}").symlink_to(f"../../{upper}")

    def address(self, name: str, ip: str, prefix: int = 24) -> None:
        rec = next(a for a in self.addrs if a["ifname"] == name)
        rec["addr_info"].append({"family": "inet", "local": ip, "prefixlen": prefix, "scope": "global"})
        net = ".".join(ip.split(".")[:3]) + ".0"
        self.routes4.append({"dst": f"{net}/{prefix}", "dev": name, "protocol": "kernel", "prefsrc": ip})

    def ifindex(self, name: str) -> int:
        return next(l["ifindex"] for l in self.links if l["ifname"] == name)

    # -- procfs
    def process(self, pid: int, comm: str, ppid: int, netns: str = HOST_NS, environ: dict | None = None,
                tty: int = 0, fds: dict | None = None, tcp: list[str] | None = None) -> Path:
        d = self.proc / str(pid)
        (d / "ns").mkdir(parents=True, exist_ok=True)
        (d / "fd").mkdir(exist_ok=True)
        (d / "net").mkdir(exist_ok=True)
        (d / "comm").write_text(comm + "\n")
        (d / "status").write_text(f"Name:\t{comm}\nState:\tS (sleeping)\nPPid:\t{ppid}\n")
        (d / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} {tty} -1 4194560 0 0 0 0\n")
        (d / "environ").write_bytes(b"".join(f"{k}={v}\0".encode() for k, v in (environ or {}).items()))
        link = d / "ns" / "net"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(netns)
        for fd, target in (fds or {}).items():
            (d / "fd" / str(fd)).symlink_to(target)
        header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        (d / "net" / "tcp").write_text(header + "".join(tcp or []))
        return d

    def sshd(self, pid: int, ppid: int, client: str, local: str, inode: int = 5555) -> None:
        """An sshd session process holding the established connection client -> local:22."""
        line = (f"   0: {_hexip(local)}:0016 {_hexip(client)}:D431 01 00000000:00000000 02:000A7214 00000000"
                f"     0        0 {inode} 4 0000000000000000 20 4 1 10 -1\n")
        listen = (f"   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000"
                  f"     0        0 {inode + 1} 1 0000000000000000 100 0 0 10 0\n")
        self.process(pid, "sshd-session", ppid, fds={3: f"socket:[{inode}]", 4: f"socket:[{inode + 1}]"},
                     tcp=[line, listen])

    def container(self, pid: int = 500, links: list[dict] | None = None, named: str | None = None) -> str:
        """Another network namespace, held by a process (or only bind-mounted: `named`); returns the
        path the check enters it by."""
        if named:
            path = self.netns / named
            path.write_text("")
        else:
            self.process(pid, "containerd-shim", 1, netns=CONTAINER_NS)
            path = self.proc / str(pid) / "ns" / "net"
        self.ns_ip[str(path)] = {"-d link show": [{"ifindex": 1, "ifname": "lo", "link_type": "loopback"},
                                                  *(links or [])]}
        return str(path)

    def host(self, env: dict | None = None) -> "FakeHost":
        self.ns_ip[None] = {"-d link show": self.links, "addr show": self.addrs,
                            "-4 route show table all": self.routes4, "-6 route show table all": []}
        return FakeHost(self, env or {})


class FakeHost(pt.Host):
    def __init__(self, m: Machine, env: dict):
        super().__init__(sys_root=str(m.sys), proc_root=str(m.proc), netns_dirs=[str(m.netns)], env=env)
        self.m = m
        self.calls: list[tuple] = []

    def ip(self, args, ns=None):
        self.calls.append((ns, " ".join(args)))
        if args[:2] == ["route", "get"]:
            return self.m.route_get.get(args[2], [])
        if ns not in self.m.ns_ip:
            raise RuntimeError(f"nsenter --net={ns}: No such file or directory")
        return self.m.ns_ip[ns].get(" ".join(args), [])

    def loginctl(self, session):
        return self.m.logind.get(session, {})


def fake_report(m: Machine, addrs: list[str], env: dict | None = None, **kw) -> list[dict]:
    return pt.report(addrs, host=m.host(env), **kw)


@pytest.fixture
def m(tmp_path) -> Machine:
    """A QA host: eth0 (management, address + default route) on 0000:00:19.0; an igb PF with two VFs,
    all free, bound to their network drivers; an e1000e on vfio-pci."""
    mc = Machine(tmp_path)
    mc.device("0000:00:19.0", "e1000e", group=1, ifname="eth0")
    mc.address("eth0", "10.0.0.2")
    mc.routes4.append({"dst": "default", "gateway": "10.0.0.1", "dev": "eth0"})
    mc.device(PF, "igb", group=10, ifname="enp3s0f0")
    mc.device(VF0, "igbvf", group=11, ifname="enp3s16", physfn=PF)
    mc.device(VF1, "igbvf", group=12, ifname="enp3s16f2", physfn=PF)
    mc.device(OTHER, "vfio-pci", group=13)
    mc.device("0000:00:00.0", None, cls="0x060000")
    return mc


def test_fake_free_pf_with_free_vfs_and_vfio_nic_accepted(m):
    rep = fake_report(m, [PF, OTHER, VF1])
    assert [r["refusals"] for r in rep] == [[], [], []], rep
    assert rep[0]["vfs"] == [VF0, VF1] and rep[0]["interfaces"] == ["enp3s0f0", "enp3s16", "enp3s16f2"]
    assert rep[1]["driver"] == "vfio-pci" and rep[1]["interfaces"] == []


def test_fake_own_nic_refused_and_non_nic(m):
    text = "\n".join(r for res in fake_report(m, ["0000:00:19.0", "0000:00:00.0"]) for r in res["refusals"])
    assert "0000:00:19.0 (eth0) carries 10.0.0.2/24" in text
    assert "0000:00:19.0 (eth0) carries the default route (via 10.0.0.1)" in text
    assert "0000:00:00.0 is not a network device (class 0x060000, bridge)" in text


def test_fake_vf_in_another_namespace_refuses_its_pf(m):
    """A container got VF0's interface (ip link set enp3s16 netns ...): gone from this namespace's
    sysfs, visible only in the container's `ip -d -j link` (IFLA_PARENT_DEV_NAME)."""
    (m.sys / "class/net/enp3s16").unlink()
    m.links = [l for l in m.links if l["ifname"] != "enp3s16"]
    m.container(links=[{"ifindex": 7, "ifname": "eth1", "link_type": "ether", "parentbus": "pci",
                        "parentdev": VF0}])
    rep = fake_report(m, [PF])[0]
    assert rep["refusals"] == [
        f"{PF} (eth1, its VF {VF0}) lives in another network namespace (pid 500 (containerd-shim)): a container "
        f"or another network stack uses it; pick another NIC or give it back to the host (ip link set eth1 "
        f"netns 1, in that namespace)"], rep
    assert rep["elsewhere"] == [{"ifname": "eth1", "of": VF0, "netns": "pid 500 (containerd-shim)"}]
    # the VF itself, asked for directly, too
    assert fake_report(m, [VF0])[0]["refusals"][0].startswith(f"{VF0} (eth1) lives in another network namespace")


def test_fake_vf_on_a_network_driver_without_any_interface_refuses_its_pf(m):
    """No parent-device attribute to go by (older kernel, DPDK): a VF on igbvf with no interface
    anywhere is in use somewhere the check cannot see."""
    (m.sys / "class/net/enp3s16").unlink()
    m.links = [l for l in m.links if l["ifname"] != "enp3s16"]
    m.container(links=[{"ifindex": 7, "ifname": "eth1", "link_type": "ether"}])
    r = fake_report(m, [PF])[0]["refusals"]
    assert len(r) == 1 and r[0].startswith(f"{PF} (its VF {VF0}) (driver igbvf) has no network interface in any "
                                           f"network namespace this check can see"), r
    # bound to vfio-pci instead, it is free again
    drv = m.sys / "devices/pci0000:00" / VF0 / "driver"
    drv.unlink()
    (m.sys / "bus/pci/drivers/vfio-pci").mkdir(exist_ok=True)
    drv.symlink_to("../../../bus/pci/drivers/vfio-pci")
    assert fake_report(m, [PF])[0]["refusals"] == []


@pytest.mark.parametrize("kind", ["macvlan", "vlan", "macvtap"])
def test_fake_upper_device_in_another_namespace_refused(m, kind):
    """macvlan/VLAN made on the PF's interface, then moved into a container: no upper_* link is left
    here; the container's link has IFLA_LINK = our ifindex in another namespace (link_netnsid)."""
    idx = m.ifindex("enp3s0f0")
    m.container(links=[{"ifindex": 3, "ifname": "eth0", "link_index": idx, "link_netnsid": 0,
                        "link_type": "ether", "linkinfo": {"info_kind": kind}}])
    r = fake_report(m, [PF])[0]["refusals"]
    assert r == [f"{PF} (enp3s0f0) has {kind} eth0 on top of it in another network namespace (pid 500 "
                 f"(containerd-shim)): traffic of that namespace goes through it; pick a free NIC or delete eth0 "
                 f"there"], r


def test_fake_upper_on_a_vf_in_a_named_namespace_without_processes_refused(m):
    """`ip netns add blue` + a VLAN on VF1 moved there: no process holds that namespace, only the
    bind mount in /run/netns does."""
    idx = m.ifindex("enp3s16f2")
    path = m.container(named="blue", links=[{"ifindex": 2, "ifname": "v100", "link_index": idx,
                                              "link_netnsid": 0, "linkinfo": {"info_kind": "vlan"}}])
    host = m.host()
    r = pt.refusals([PF], host=host)
    assert r == [f"{PF} (enp3s16f2, its VF {VF1}) has vlan v100 on top of it in another network namespace "
                 f"({path}): traffic of that namespace goes through it; pick a free NIC or delete v100 there"], r
    assert (path, "-d link show") in host.calls


def test_fake_other_namespaces_links_elsewhere_are_not_ours(m):
    """Controls: a veth peer pointing at our ifindex, a macvlan on the container's own NIC (no
    link_netnsid) and one on another ifindex in another namespace do not refuse the PF."""
    idx = m.ifindex("enp3s0f0")
    m.container(links=[
        {"ifindex": 2, "ifname": "eth0", "link_index": idx, "link_netnsid": 0, "linkinfo": {"info_kind": "veth"}},
        {"ifindex": 3, "ifname": "mv0", "link_index": idx, "linkinfo": {"info_kind": "macvlan"}},
        {"ifindex": 4, "ifname": "mv1", "link_index": idx + 50, "link_netnsid": 0,
         "linkinfo": {"info_kind": "macvlan"}}])
    assert fake_report(m, [PF])[0]["refusals"] == []


def test_fake_upper_in_this_namespace_refused(m):
    m.upper("enp3s16", "br0", "bridge")
    m.upper("enp3s0f0", "mv0", "macvlan")
    text = "\n".join(pt.refusals([PF], host=m.host()))
    assert f"{PF} (enp3s16, its VF {VF0}) is under br0" in text and f"{PF} (enp3s0f0) is under mv0" in text


def test_fake_unreadable_namespace_refused_when_the_nic_has_an_interface(m):
    link = m.proc / "500"
    m.container()
    (link / "ns" / "net").unlink()                       # readlink fails: EACCES in real life
    (link / "ns" / "net").mkdir()
    r = fake_report(m, [PF, OTHER])
    assert r[0]["refusals"] and r[0]["refusals"][0].startswith(f"{PF}: cannot look into every network namespace"), r
    assert r[1]["refusals"] == []                        # vfio-pci, no interface: nothing could sit on it


def test_fake_vfio_holder_of_a_vf_refuses_the_pf(m):
    m.process(700, "qemu-system-x86", 1, fds={20: "/dev/vfio/11"})
    r = fake_report(m, [PF])[0]["refusals"]
    assert r == [f"{PF} (its VF {VF0}) is held open by pid 700 (qemu-system-x86) through VFIO: it is passed "
                 f"through to a running VM already; pick another NIC or stop that VM"], r


def test_fake_device_outside_the_real_declared_pool_refused(m):
    """The pool is HX_PASSTHROUGH, read by the check itself; the caller passes only what it attaches."""
    env = {"HX_PASSTHROUGH": f"{PF}, {VF1}"}
    rep = fake_report(m, [OTHER, PF], env=env)
    assert rep[0]["refusals"] == [
        f"{OTHER} is not in the declared pool ({PF}, {VF1}): the harness passes through only declared devices; "
        f"add it to HX_PASSTHROUGH if it is a free NIC"], rep
    assert rep[1]["refusals"] == []
    # an explicit pool (--pool) replaces the declaration; nothing declared at all: a manual check
    assert fake_report(m, [OTHER], env=env, pool=[OTHER])[0]["refusals"] == []
    assert fake_report(m, [OTHER], env={})[0]["refusals"] == []
    assert fake_report(m, ["3:00.0"], env={"HX_PASSTHROUGH": "03:00.0"})[0]["refusals"][0].startswith("'3:00.0'")


def _sudo_chain(m: Machine, shell_env: dict | None = None, tty: int = 34816) -> None:
    """python3 (300) <- sudo (200) <- bash (150) <- PPID; no SSH_CONNECTION in the check's env."""
    m.process(150, "bash", 1, environ=shell_env, tty=tty)
    m.process(200, "sudo", 150, tty=tty)
    m.process(300, "python3", 200, tty=34817)


SUDO_ENV = {"SUDO_USER": "qa", "SUDO_UID": "1000", "PATH": "/usr/bin"}


def test_fake_sudo_without_a_traceable_ssh_origin_refused(m):
    """sudo dropped SSH_CONNECTION, no sshd up the chain (tmux, CI agent), logind does not know: the
    check cannot tell which NIC the session rides on, so every NIC with an interface is refused."""
    _sudo_chain(m)
    rep = fake_report(m, [PF, OTHER], env=SUDO_ENV)
    r = rep[0]["refusals"]
    assert len(r) == 1 and r[0].startswith(f"{PF}: cannot tell which interface carries the SSH session"), r
    assert "SUDO_USER=qa" in r[0] and "HX_SSH_IFACE=" in r[0] and "--i-am-on-the-console" in r[0]
    assert "run without sudo" in r[0]
    assert rep[1]["refusals"] == []                      # vfio-pci: carries no session either way
    # the fixes it names
    assert fake_report(m, [PF], env={**SUDO_ENV, "HX_SSH_IFACE": "none"})[0]["refusals"] == []
    assert fake_report(m, [PF], env=SUDO_ENV, console=True)[0]["refusals"] == []
    assert fake_report(m, [PF], env={**SUDO_ENV, "HX_SSH_IFACE": "eth0"})[0]["refusals"] == []
    r = fake_report(m, [PF], env={**SUDO_ENV, "HX_SSH_IFACE": "enp3s0f0"})[0]["refusals"]
    assert r == [f"{PF} (enp3s0f0) carries this SSH connection (HX_SSH_IFACE=enp3s0f0): passing it through "
                 f"would cut the session that runs the harness; pick another NIC"], r


def test_fake_su_detected_from_the_chain_without_sudo_variables(m):
    m.process(150, "bash", 1, tty=34816)
    m.process(200, "su", 150, tty=34816)
    m.process(300, "python3", 200, tty=34816)
    r = fake_report(m, [PF], env={})[0]["refusals"]
    assert len(r) == 1 and "su (pid 200)" in r[0] and "cannot tell which interface" in r[0], r


def test_fake_sudo_over_ssh_traced_through_the_sshd_socket(m):
    """python3 <- sudo <- bash <- sshd-session: its established socket says 192.0.2.9 -> 10.0.0.2 (eth0)."""
    m.sshd(120, 1, client="192.0.2.9", local="10.0.0.2")
    m.process(150, "bash", 120, tty=34816)
    m.process(200, "sudo", 150, tty=34816)
    m.process(300, "python3", 200, tty=34817)
    m.route_get["192.0.2.9"] = [{"dst": "192.0.2.9", "gateway": "10.0.0.1", "dev": "eth0", "prefsrc": "10.0.0.2"}]
    host = m.host(SUDO_ENV)
    assert pt.refusals([PF], host=host) == []            # the session is on eth0, not on the PF
    assert (None, "route get 192.0.2.9") in host.calls
    r = pt.refusals(["0000:00:19.0"], host=m.host(SUDO_ENV))
    assert ("0000:00:19.0 (eth0) carries this SSH connection (192.0.2.9 -> 10.0.0.2): passing it through would "
            "cut the session that runs the harness; pick another NIC") in r, r


def test_fake_sudo_over_ssh_on_the_pf_refused(m):
    """The session arrives on the PF's interface: only the sshd socket (not the environment) says so,
    and the reply route leaves by the PF too."""
    m.address("enp3s0f0", "172.16.0.5")
    m.sshd(120, 1, client="172.16.0.77", local="172.16.0.5")
    _sudo_chain(m)
    m.process(150, "bash", 120, tty=34816)
    m.route_get["172.16.0.77"] = [{"dst": "172.16.0.77", "dev": "enp3s0f0", "prefsrc": "172.16.0.5"}]
    r = fake_report(m, [PF], env=SUDO_ENV)[0]["refusals"]
    assert f"{PF} (enp3s0f0) carries this SSH connection (172.16.0.77 -> 172.16.0.5): passing it through would " \
           f"cut the session that runs the harness; pick another NIC" in r, r


def test_fake_sudo_ssh_origin_from_an_ancestors_environment(m):
    """The shell sshd started still has SSH_CONNECTION in its environment (sshd itself not visible)."""
    _sudo_chain(m, shell_env={"SSH_CONNECTION": "172.16.0.77 51000 172.16.0.5 22"})
    m.address("enp3s0f0", "172.16.0.5")
    r = fake_report(m, [PF], env=SUDO_ENV)[0]["refusals"]
    assert any("carries this SSH connection (172.16.0.77 -> 172.16.0.5)" in x for x in r), r
    assert not any("cannot tell" in x for x in r), r


def test_fake_hx_ssh_iface_from_an_ancestor_reaches_the_vagrantfile_check(m):
    """vagrant.py starts vagrant without HX_* variables: the declaration made for the harness counts."""
    _sudo_chain(m)
    m.process(250, "python3", 200, environ={"HX_SSH_IFACE": "none"})     # the harness
    m.process(260, "ruby", 250)                                           # vagrant, the Vagrantfile
    m.process(300, "python3", 260)
    assert fake_report(m, [PF], env=SUDO_ENV)[0]["refusals"] == []


def test_fake_sudo_logind_session(m):
    """No sshd in the chain (tmux): logind's session says remote (its leader holds the socket) or local."""
    m.sshd(120, 1, client="172.16.0.77", local="172.16.0.5")
    m.address("enp3s0f0", "172.16.0.5")
    _sudo_chain(m)
    (m.proc / "300" / "cgroup").write_text("0::/user.slice/user-1000.slice/session-7.scope\n")
    m.logind["7"] = {"Remote": "yes", "RemoteHost": "172.16.0.77", "Leader": "120", "Service": "sshd"}
    r = fake_report(m, [PF], env=SUDO_ENV)[0]["refusals"]
    assert any("carries this SSH connection (172.16.0.77 -> 172.16.0.5)" in x for x in r), r
    m.logind["7"] = {"Remote": "no", "Service": "login"}
    r = fake_report(m, [PF], env=SUDO_ENV)[0]["refusals"]
    assert r and not any("SSH" in x for x in r), r       # only its address is left against it


def test_fake_sudo_on_a_virtual_console_is_local(m):
    _sudo_chain(m, tty=(4 << 8) | 1)                     # bash and sudo on /dev/tty1
    assert fake_report(m, [PF], env=SUDO_ENV)[0]["refusals"] == []


def test_fake_no_sudo_no_ssh_is_not_refused(m):
    """Run by a service or cron (no SSH_CONNECTION, no sudo, no sshd above): nothing to cut off."""
    assert fake_report(m, [PF], env={"PATH": "/usr/bin"})[0]["refusals"] == []


def test_decide_is_a_pure_function_of_json_facts(m):
    idx = m.ifindex("enp3s0f0")
    m.container(links=[{"ifindex": 3, "ifname": "eth0", "link_index": idx, "link_netnsid": 0,
                        "linkinfo": {"info_kind": "macvlan"}}])
    _sudo_chain(m)
    facts = pt.collect([PF, OTHER], m.host(SUDO_ENV))
    again = json.loads(json.dumps(facts))
    assert pt.decide([PF, OTHER, "bogus"], again, None) == pt.decide([PF, OTHER, "bogus"], facts, None)
    r = pt.decide([PF], again, [OTHER])[0]["refusals"]
    assert [x.split(" ", 3)[1:3] for x in r] == [["is", "not"], ["(enp3s0f0)", "has"], ["cannot", "tell"]], r
