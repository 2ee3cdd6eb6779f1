"""Real-passthrough safety against THIS machine's real devices (no mocked facts).

Why: handing a NIC in use to a VM cuts the host off the network. harness/bed/passthrough.py must
refuse this host's own NIC (it has an address and the default route), a PCI device that is no NIC,
an address that does not exist or is malformed, and one outside the declared pool; and it must do
so for plain `vagrant up` (the Vagrantfile shells out to it) and for `harness bed up --via vagrant`
(before anything is created). Devices are found from /sys at run time, never hard-coded.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import paths
from harness.bed import passthrough as pt

SCRIPT = Path(pt.__file__)


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
    for d in sorted(glob.glob(f"{pt.SYS_PCI}/*")):
        cls = Path(d, "class").read_text().strip()
        if int(cls, 16) >> 16 == 0x06:          # a bridge (host bridge, PCIe root port)
            return os.path.basename(d)
    pytest.skip("no PCI bridge on this host")


def _free_addr() -> str:
    have = {os.path.basename(d) for d in glob.glob(f"{pt.SYS_PCI}/*")}
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
    from harness.bed import state as state_mod
    from harness.bed import vagrant
    from harness.errors import HarnessError

    if os.geteuid() != 0:
        pytest.skip("the Vagrant bed needs root")
    addr, dev = _default_route_nic()
    name = "hx-utest-passthrough-refused"
    monkeypatch.setenv("HX_PASSTHROUGH", f"{addr},{_free_addr()}")
    try:
        with pytest.raises(HarnessError) as ei:
            vagrant.up(suite="trixie", name=name)
    except HarnessError as e:                      # missing host tools: says so, before our check
        pytest.skip(str(e))
    msg = str(ei.value)
    assert "real passthrough refused, nothing was created" in msg
    assert f"{addr} ({dev}) carries the default route" in msg and "no such PCI device" in msg
    assert ei.value.hint and "HX_PASSTHROUGH" in ei.value.hint
    assert not state_mod.bed_dir(name).exists() and state_mod.load(name) is None
    assert not vagrant.netns_exists(vagrant.ns_name(name))
    Path(str(state_mod.bed_dir(name)) + ".lock").unlink(missing_ok=True)
