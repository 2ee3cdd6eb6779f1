"""The speed levers change nothing a scenario states: which networks are shared, and the CPU-probe override."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.engine import shared_networks, xmlbuild
from harness.errors import HarnessError
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


def _domain(monkeypatch, env: str | None, scenario: str = "seed-hostdev-then-hotplug",
            firmware: str | None = None) -> ET.Element:
    for var, val in (("HX_FULL_CPU_PROBE", env), ("HX_FIRMWARE", firmware)):
        if val is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, val)
    sc = one(scenario)
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


def test_a_domain_without_guest_gets_qboot_and_keeps_its_devices(monkeypatch):
    root = _domain(monkeypatch, None)
    loader = root.find("os/loader")
    assert (loader.get("type"), loader.text) == ("rom", xmlbuild.QBOOT)
    seabios = _domain(monkeypatch, None, firmware="seabios")
    assert seabios.find("os/loader") is None
    assert ET.tostring(root.find("devices")) == ET.tostring(seabios.find("devices"))


def test_the_tiny_guest_keeps_seabios(monkeypatch):
    root = _domain(monkeypatch, None, scenario="detach-reattach-guest")
    assert root.find("os/kernel") is not None and root.find("os/loader") is None


def test_a_firmware_the_harness_does_not_know_is_refused_with_the_choices(monkeypatch):
    with pytest.raises(HarnessError) as e:
        _domain(monkeypatch, None, firmware="SeaBIOS")
    assert "HX_FIRMWARE='SeaBIOS'" in e.value.message and "HX_FIRMWARE=seabios" in e.value.hint
