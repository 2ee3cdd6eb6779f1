"""The speed levers change nothing a scenario states: which networks are shared, and the CPU-probe override."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from harness.engine import shared_networks, xmlbuild
from harness.scenario.loader import load_file

SCEN = Path(__file__).resolve().parents[2] / "scenarios"


def one(name: str):
    (sc,) = load_file(str(SCEN / f"{name}.yaml"))
    return sc


def test_a_nat_network_only_attached_to_is_shared(monkeypatch):
    monkeypatch.delenv("HX_SHARED_NETWORKS", raising=False)
    assert shared_networks.shareable(one("seed-hostdev-then-hotplug")) == {"lan"}


def test_hostdev_pools_and_step_driven_networks_are_never_shared(monkeypatch):
    monkeypatch.delenv("HX_SHARED_NETWORKS", raising=False)
    assert shared_networks.shareable(one("pool-interface-hotplug")) == set()        # VFs leased per scenario
    assert shared_networks.shareable(one("network-lifecycle")) == set()             # network-* steps, create: false
    both = one("restart-daemon-stability")
    assert shared_networks.shareable(both) == {"lan"} and "pool" in both.networks


def test_sharing_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("HX_SHARED_NETWORKS", "0")
    assert shared_networks.shareable(one("seed-hostdev-then-hotplug")) == set()


def _domain(monkeypatch, env: str | None) -> ET.Element:
    if env is None:
        monkeypatch.delenv("HX_FULL_CPU_PROBE", raising=False)
    else:
        monkeypatch.setenv("HX_FULL_CPU_PROBE", env)
    sc = one("seed-hostdev-then-hotplug")
    r = xmlbuild.Resolved(salt="t")
    r.addrs.update({"vf1": xmlbuild.PciAddr.parse("0000:01:10.0"), "vf2": xmlbuild.PciAddr.parse("0000:01:10.2")})
    return ET.fromstring(xmlbuild.domain_xml("hx-t", sc.domain, r, "qemu", list(sc.domain.devices), "/tmp/c"))


def test_generated_domains_drop_only_the_cpu_feature_capability(monkeypatch):
    root = _domain(monkeypatch, None)
    caps = root.findall(f"{{{xmlbuild.QEMU_NS}}}capabilities/*")
    assert [(c.tag.split("}")[1], c.attrib) for c in caps] == [("del", {"capability": "cpu-unavailable-features"})]
    assert root.find("devices/interface") is not None      # the devices are untouched


def test_full_cpu_probe_keeps_libvirts_default(monkeypatch):
    assert _domain(monkeypatch, "1").find(f"{{{xmlbuild.QEMU_NS}}}capabilities") is None
