"""harness/engine/xmlbuild.py (and the plain model it builds from): every XML the harness writes,
placeholders, escaping of hostile values, deterministic MACs."""
from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness import oracle
from harness.engine import xmlbuild
from harness.engine.xmlbuild import GUEST_INITRD, GUEST_KERNEL, PciAddr, Resolved, fill
from harness.errors import HarnessError
from harness.scenario.model import Device, Domain, Mark, Network, Step

HOSTILE = [
    'a"<b>$(x)',
    "it's & \"quoted\"",
    "'/><evil/><x a='",
    '"/><evil/><x a="',
    "]]> &amp; &#x41; <!-- -->",
    "$(reboot) `id` ; rm -rf /",
    "tab\there",
]


def resolved(**kw) -> Resolved:
    r = Resolved(salt="run-1", **kw)
    r.addrs.update({"vf1": PciAddr.parse("0000:01:10.0"), "vf2": PciAddr.parse("0000:01:10.2"),
                    "pf1": PciAddr.parse("0000:01:00.0"), "e1": PciAddr.parse("0000:02:00.0")})
    r.ifnames.update({"pf1": "enp1s0"})
    r.networks.update({"lan": "hx-run-lan", "pool": "hx-run-pool"})
    r.bridges.update({"lan": "virbr7"})
    return r


def iface(dev_id: str, **spec) -> Device:
    return Device(dev_id, "interface", {"id": dev_id, **spec})


def build(dev: Device, r: Resolved | None = None) -> ET.Element:
    """device_xml as text, parsed back: what libvirt would read."""
    return ET.fromstring(xmlbuild.device_xml(dev, r or resolved()))


MAC_RE = re.compile(r"^52:54:00(:[0-9a-f]{2}){3}$")


# ---- PciAddr -----------------------------------------------------------------------------------------

def test_pci_addr_round_trip():
    a = PciAddr.parse("0000:01:10.2")
    assert (a.domain, a.bus, a.slot, a.function) == (0, 1, 0x10, 2)
    assert str(a) == "0000:01:10.2"
    assert a.attrs() == {"domain": "0x0000", "bus": "0x01", "slot": "0x10", "function": "0x2"}
    assert str(PciAddr.parse("ABCD:ef:1f.7")) == "abcd:ef:1f.7"


@pytest.mark.parametrize("bad", ["0000:01:10", "01:10.0", "0000:01:10.8", "0000:1:10.0", "0000:01:10.0 ", "x"])
def test_pci_addr_rejects(bad):
    with pytest.raises(ValueError):
        PciAddr.parse(bad)


# ---- every interface type ------------------------------------------------------------------------------

def test_interface_hostdev():
    r = resolved()
    el = build(iface("hn0", type="hostdev", device="vf1"), r)
    assert (el.tag, el.get("type"), el.get("managed")) == ("interface", "hostdev", "yes")
    assert el.find("mac").get("address") == r.macs["hn0"]
    assert el.find("source/address").attrib == {"type": "pci", "domain": "0x0000", "bus": "0x01",
                                                "slot": "0x10", "function": "0x0"}
    assert el.find("model") is None          # no model for a passthrough NIC
    assert el.find("alias") is None
    assert [c.tag for c in el] == ["mac", "source"]


def test_interface_hostdev_unmanaged():
    assert build(iface("hn0", type="hostdev", device="vf2", managed=False)).get("managed") == "no"


def test_interface_network_uses_the_real_name():
    el = build(iface("n1", type="network", network="lan"))
    assert el.get("type") == "network" and el.get("managed") is None
    assert el.find("source").attrib == {"network": "hx-run-lan"}
    assert el.find("model").get("type") == "virtio"


def test_interface_network_on_the_pool():
    el = build(iface("p1", type="network", network="pool"))
    assert el.find("source").get("network") == "hx-run-pool"


def test_interface_bridge_uses_the_started_networks_bridge_else_the_name():
    assert build(iface("b1", type="bridge", bridge="lan")).find("source").attrib == {"bridge": "virbr7"}
    assert build(iface("b2", type="bridge", bridge="virbr0")).find("source").attrib == {"bridge": "virbr0"}


@pytest.mark.parametrize("itype", ["user", "ethernet"])
def test_interface_without_source(itype):
    el = build(iface("u1", type=itype))
    assert el.get("type") == itype
    assert el.find("source") is None
    assert [c.tag for c in el] == ["mac", "model"]


def test_interface_direct_uses_the_ifname_of_a_leased_pf_else_the_name():
    assert build(iface("d1", type="direct", dev="pf1")).find("source").attrib == {"dev": "enp1s0", "mode": "bridge"}
    assert build(iface("d2", type="direct", dev="enp9s0")).find("source").attrib == {"dev": "enp9s0", "mode": "bridge"}


@pytest.mark.parametrize("model", ["virtio", "e1000e", "rtl8139", "usb-net"])
def test_interface_model(model):
    assert build(iface("u1", type="user", model=model)).find("model").attrib == {"type": model}


@pytest.mark.parametrize("itype, extra", [("hostdev", {"device": "vf1"}), ("network", {"network": "pool"}),
                                          ("user", {}), ("bridge", {"bridge": "lan"})])
def test_interface_user_alias_is_the_last_element(itype, extra):
    el = build(iface("x1", type=itype, alias="ua-mine", **extra))
    assert el.find("alias").attrib == {"name": "ua-mine"}
    assert el[-1].tag == "alias"


def test_plain_hostdev():
    el = build(Device("h0", "hostdev", {"id": "h0", "device": "e1", "alias": "ua-e1"}))
    assert el.tag == "hostdev"
    assert el.attrib == {"mode": "subsystem", "type": "pci", "managed": "yes"}
    assert el.find("source/address").attrib == {"domain": "0x0000", "bus": "0x02", "slot": "0x00", "function": "0x0"}
    assert el.find("mac") is None
    assert el.find("alias").get("name") == "ua-e1"


# how libvirt 11.3.0 reports that hostdev's source (tests/data/xml/restart-01-start-live.xml)
LIBVIRT_E1 = ("<hostdev mode='subsystem' type='pci' managed='yes'><source>"
              "<address domain='0x0000' bus='0x02' slot='0x00' function='0x0'/></source></hostdev>")


def test_plain_hostdev_key_is_its_source_address():
    key = oracle.key_of(build(Device("h0", "hostdev", {"id": "h0", "device": "e1"})))
    assert key.startswith("pci:")
    assert key == oracle.key_of(ET.fromstring(LIBVIRT_E1))
    assert key != oracle.key_of(build(Device("h1", "hostdev", {"id": "h1", "device": "vf1"})))


def test_interface_key_is_its_mac():
    r = resolved()
    el = build(iface("n1", type="network", network="lan"), r)
    assert oracle.key_of(el) == "mac:" + r.macs["n1"]


# ---- hostile values stay data ----------------------------------------------------------------------------

@pytest.mark.parametrize("evil", HOSTILE)
def test_hostile_values_in_device_attributes_round_trip(evil):
    r = resolved()
    r.networks["lan"] = evil
    for dev, path, attr in [
        (iface("b1", type="bridge", bridge=evil), "source", "bridge"),
        (iface("d1", type="direct", dev=evil), "source", "dev"),
        (iface("n1", type="network", network="lan"), "source", "network"),    # the real name
        (iface("n2", type="network", network=evil), "source", "network"),     # an unresolved sym
        (iface("u1", type="user", alias=evil), "alias", "name"),
        (iface("u2", type="user", mac=evil), "mac", "address"),
        (iface("u3", type="user", model=evil), "model", "type"),
    ]:
        text = xmlbuild.device_xml(dev, r)
        el = ET.fromstring(text)
        assert el.find(path).get(attr) == evil, (dev.id, text)
        assert el.find(".//evil") is None and len(list(el.iter())) <= 4, text   # no element smuggled in


@pytest.mark.parametrize("evil", HOSTILE)
def test_hostile_names_in_domain_xml(evil):
    text = xmlbuild.domain_xml(evil, Domain(devices=[iface("b1", type="bridge", bridge=evil)]), resolved(),
                               "qemu", [], evil)
    root = ET.fromstring(text)
    assert root.find("name").text == evil
    assert root.find("devices/serial/source").get("path") == evil
    assert root.find("devices/interface/source").get("bridge") == evil
    assert root.find(".//evil") is None


@pytest.mark.parametrize("evil", HOSTILE)
def test_hostile_names_in_network_xml(evil):
    r = resolved()
    r.ifnames["pf1"] = evil
    for net in (Network("lan", "nat"), Network("pool", "hostdev", pf="pf1")):
        root = ET.fromstring(xmlbuild.network_xml(evil, net, r, 3))
        assert root.find("name").text == evil
        assert root.find(".//evil") is None
    assert ET.fromstring(xmlbuild.network_xml("n", Network("pool", "hostdev", pf="pf1"), r)).find(
        "forward/pf").get("dev") == evil


def test_escaping_is_visible_in_the_text():
    text = xmlbuild.device_xml(iface("b1", type="bridge", bridge='a"<b>$(x)&'), resolved())
    assert 'bridge="a&quot;&lt;b&gt;$(x)&amp;"' in text


# ---- placeholders -----------------------------------------------------------------------------------------

def test_fill_every_kind_of_placeholder():
    r = resolved()
    mac = r.mac_for("n1")
    text = ("<x a='{vf1.pci}' {vf1.address} net='{pool.name}' mac='{n1.mac}' if='{pf1.ifname}'"
            " k='{guest.kernel}' i='{guest.initrd}'/>")
    out = fill(text, r)
    assert out == ("<x a='0000:01:10.0' domain='0x0000' bus='0x01' slot='0x10' function='0x0'"
                   f" net='hx-run-pool' mac='{mac}' if='enp1s0' k='{GUEST_KERNEL}' i='{GUEST_INITRD}'/>")


def test_fill_address_is_usable_inside_an_address_element():
    el = ET.fromstring(fill("<address type='pci' {vf2.address}/>", resolved()))
    assert el.attrib == {"type": "pci", "domain": "0x0000", "bus": "0x01", "slot": "0x10", "function": "0x2"}


@pytest.mark.parametrize("text, out", [
    ("{{", "{"), ("}}", "}"), ("{{}}", "{}"),
    ("{{vf1.address}}", "{vf1.address}"),          # escaped: stays literal, not filled
    ("a{{b}}c", "a{b}c"),
    ("{{{vf1.pci}}}", "{0000:01:10.0}"),
    ("no braces", "no braces"),
    ("", ""),
])
def test_fill_literal_braces(text, out):
    assert fill(text, resolved()) == out


def test_fill_is_one_pass():
    # a value that looks like a placeholder is data, not expanded again
    r = resolved()
    r.networks["lan"] = "{vf1.pci}"
    assert fill("{lan.name}", r) == "{vf1.pci}"


@pytest.mark.parametrize("ph", ["{vf9.address}", "{lan.mac}", "{nobody.mac}", "{vf1.ifname}", "{guest.cmdline}"])
def test_fill_unknown_placeholder_raises_naming_it(ph):
    with pytest.raises(HarnessError) as ei:
        fill(f"<x a='{ph}'/>", resolved(), "device d7")
    assert ei.value.message == f"device d7: placeholder {ph} has no value in this run"
    assert "vf1.address" in ei.value.hint and "lan.name" in ei.value.hint


def test_raw_xml_device_is_filled_and_kept():
    r = resolved()
    r.mac_for("pv")
    dev = Device("pv", "xml", {"xml": "<interface type='network'><mac address='{pv.mac}'/>"
                                      "<source network='{pool.name}'/><vlan><tag id='42'/></vlan></interface>"})
    el = build(dev, r)
    assert el.find("mac").get("address") == r.macs["pv"]
    assert el.find("source").get("network") == "hx-run-pool"
    assert el.find("vlan/tag").get("id") == "42"


def test_raw_xml_device_with_unknown_placeholder():
    dev = Device("pv", "xml", {"xml": "<interface type='network'><source network='{pol.name}'/></interface>"})
    with pytest.raises(HarnessError, match=r"device pv: placeholder \{pol.name\} has no value"):
        xmlbuild.device_element(dev, resolved())


def test_raw_xml_that_does_not_parse():
    with pytest.raises(HarnessError, match="device bad: raw XML does not parse"):
        xmlbuild.device_element(Device("bad", "xml", {"xml": "<interface type='user'>"}), resolved())


def test_raw_interface_without_mac_gets_the_runs_mac():
    # without it libvirt invents a MAC and the oracle (interfaces are known by MAC) never finds the
    # device: every attach of it failed with "absent"
    r = resolved()
    el = build(Device("uv", "xml", {"xml": "<interface type='user'><model type='virtio'/></interface>"}), r)
    assert el[0].tag == "mac" and el[0].get("address") == r.macs["uv"]
    assert oracle.key_of(el) == "mac:" + r.macs["uv"]
    # detach builds the XML again: same MAC, same key
    assert build(Device("uv", "xml", {"xml": "<interface type='user'/>"}), r).find("mac").get("address") == r.macs["uv"]


def test_raw_non_interface_gets_no_mac():
    el = build(Device("h", "xml", {"xml": "<hostdev mode='subsystem' type='pci'><source>"
                                          "<address {e1.address}/></source></hostdev>"}))
    assert el.find("mac") is None
    assert oracle.key_of(el) == oracle.key_of(ET.fromstring(LIBVIRT_E1))


# ---- MACs -------------------------------------------------------------------------------------------------------

def test_mac_deterministic_per_salt_and_id():
    a, b = Resolved(salt="s1"), Resolved(salt="s1")
    ids = [f"d{i}" for i in range(20)]
    assert [a.mac_for(i) for i in ids] == [b.mac_for(i) for i in reversed(ids)][::-1]
    assert a.mac_for("d3") == a.mac_for("d3")
    c = Resolved(salt="s2")
    assert [c.mac_for(i) for i in ids] != [a.mac_for(i) for i in ids]
    assert all(MAC_RE.match(m) for m in a.macs.values())


def test_mac_is_the_documented_hash():
    h = hashlib.sha256(b"run-1:n1").digest()
    assert Resolved(salt="run-1").mac_for("n1") == "52:54:00:%02x:%02x:%02x" % (h[0], h[1], h[2])


def test_mac_unique_across_500_ids():
    r = Resolved(salt="hx-20261126-gw0d349")
    macs = [r.mac_for(f"dev{i}") for i in range(500)]
    assert len(set(macs)) == 500
    assert all(MAC_RE.match(m) for m in macs)


def _colliding_ids(salt: str) -> tuple[str, str]:
    seen: dict[bytes, str] = {}
    for i in range(200_000):
        dev_id = f"n{i}"
        h = hashlib.sha256(f"{salt}:{dev_id}".encode()).digest()[:3]
        if h in seen:
            return seen[h], dev_id
        seen[h] = dev_id
    raise AssertionError("no collision found")


def test_mac_never_collides_within_a_run():
    # 24 hashed bits do collide; two interfaces with one MAC break libvirt and the oracle's identity
    first, second = _colliding_ids("c")
    r = Resolved(salt="c")
    m1, m2 = r.mac_for(first), r.mac_for(second)
    assert m1 != m2
    assert m1 == Resolved(salt="c").mac_for(first)        # the first one keeps its hash MAC
    assert MAC_RE.match(m2)
    r2 = Resolved(salt="c")                               # and the outcome is reproducible
    assert (r2.mac_for(first), r2.mac_for(second)) == (m1, m2)


def test_explicit_mac_is_used_and_is_what_placeholders_say():
    r = resolved()
    r.mac_for("n1")                 # the runner hands out MACs before it builds any XML
    el = build(iface("n1", type="user", mac="52:54:00:AA:BB:CC"), r)
    assert el.find("mac").get("address") == "52:54:00:AA:BB:CC"
    assert fill("{n1.mac}", r) == "52:54:00:AA:BB:CC"


def test_placeholders_list_macs_handed_out():
    r = resolved()
    m = r.mac_for("hn0")
    assert r.placeholders()["hn0.mac"] == m
    assert "nobody.mac" not in r.placeholders()


# ---- domain XML -------------------------------------------------------------------------------------------------

def dom_xml(dom: Domain, all_devices: list[Device] | None = None, virt: str = "kvm") -> ET.Element:
    return ET.fromstring(xmlbuild.domain_xml("hx-t", dom, resolved(), virt, all_devices or list(dom.devices),
                                             "/var/log/libvirt/qemu/hx-t-console.log"))


@pytest.mark.parametrize("ports", [0, 1, 8, 15])
def test_q35_has_pcie_root_and_n_root_ports(ports):
    root = dom_xml(Domain(machine="q35", root_ports=ports))
    pci = root.findall("devices/controller[@type='pci']")
    assert [(c.get("index"), c.get("model")) for c in pci] == \
        [("0", "pcie-root")] + [(str(i), "pcie-root-port") for i in range(1, ports + 1)]
    assert root.find("os/type").get("machine") == "q35"


def test_pc_has_no_pci_controllers():
    root = dom_xml(Domain(machine="pc", root_ports=8))
    assert root.findall("devices/controller[@type='pci']") == []
    assert root.find("os/type").get("machine") == "pc"


def test_usb_controller_only_with_a_usb_net_device_anywhere():
    plain = [iface("u1", type="user"), iface("hn0", type="hostdev", device="vf1")]
    usbnet = iface("u9", type="user", model="usb-net")
    # none in the scenario
    assert dom_xml(Domain(devices=plain)).find("devices/controller[@type='usb']").get("model") == "none"
    # in the initial devices
    assert dom_xml(Domain(devices=plain + [usbnet])).find("devices/controller[@type='usb']").get("model") == "qemu-xhci"
    # only attached later (all_devices), not in the domain definition
    root = dom_xml(Domain(devices=plain), all_devices=plain + [usbnet])
    assert root.find("devices/controller[@type='usb']").get("model") == "qemu-xhci"
    assert len(root.findall("devices/interface")) == 2
    assert len(root.findall("devices/controller[@type='usb']")) == 1


@pytest.mark.parametrize("raw, usb", [
    ("<interface type='user'><model type='usb-net'/></interface>", True),
    ('<interface type="user"><mac address="{u.mac}"/><model  type="usb-net" /></interface>', True),
    ("<interface type='user'><model type='virtio'/></interface>", False),
    ("<interface type='user'><!-- usb-net later --></interface>", False),
])
def test_usb_controller_for_a_usb_net_nic_in_raw_xml(raw, usb):
    # a pasted usb-net NIC used to get model='none' and its attach failed for want of a USB bus
    devs = [Device("u", "xml", {"xml": raw})]
    assert xmlbuild.uses_usb(devs) is usb
    model = dom_xml(Domain(), all_devices=devs).find("devices/controller[@type='usb']").get("model")
    assert model == ("qemu-xhci" if usb else "none")


def test_guest_kernel_only_with_guest():
    assert dom_xml(Domain(guest=False)).find("os/kernel") is None
    assert dom_xml(Domain(guest=False)).find("os/initrd") is None
    os_el = dom_xml(Domain(guest=True)).find("os")
    assert os_el.find("kernel").text == GUEST_KERNEL
    assert os_el.find("initrd").text == GUEST_INITRD
    assert "console=ttyS0" in os_el.find("cmdline").text


def test_guest_cmdline_skips_boot_work_but_keeps_what_unplug_needs():
    """The speed-ups (issue 10) must leave the guest acknowledging real PCIe/ACPI unplug: ACPI, PCI and the
    hot-plug drivers stay on, and no initcall of theirs (or the serial console's) is blacklisted."""
    cmdline = dom_xml(Domain(guest=True)).find("os/cmdline").text
    assert cmdline == xmlbuild.GUEST_CMDLINE
    args = cmdline.split()
    assert len(cmdline) < 2048                      # x86 COMMAND_LINE_SIZE
    assert {"console=ttyS0", "panic=-1", "quiet", "cryptomgr.notests", "noreplace-smp", "rodata=off"} <= set(args)
    for off in ("acpi=off", "noapic", "pci=noacpi", "pcie_ports=compat", "pcie_port_pm=off", "pci=nomsi",
                "acpiphp.disable=1", "pciehp.disable=1", "initcall_debug"):
        assert off not in args
    assert not any(a.startswith(("acpi", "pci", "pcie")) for a in args)
    blacklisted = next(a for a in args if a.startswith("initcall_blacklist=")).split("=", 1)[1].split(",")
    assert len(blacklisted) == len(set(blacklisted))
    for name in blacklisted:
        assert re.fullmatch(r"[a-z0-9_]+", name), name
        assert not re.search(r"acpi|pci|hp|hotplug|serial|8250|virtio|tty|chr_dev|keyring", name), name
    assert "system_trusted_keyring_init" not in blacklisted   # the machine keyring oopses without it


def test_domain_basics():
    dom = Domain(memory_mib=256, vcpus=2, devices=[iface("hn0", type="hostdev", device="vf1"),
                                                   Device("h0", "hostdev", {"id": "h0", "device": "e1"}),
                                                   iface("n0", type="network", network="lan")])
    root = dom_xml(dom, virt="qemu")
    assert root.get("type") == "qemu"
    assert root.find("name").text == "hx-t"
    assert (root.find("memory").get("unit"), root.find("memory").text) == ("MiB", "256")
    assert root.find("vcpu").text == "2"
    assert root.find("on_reboot").text == "destroy"
    assert root.find("devices/serial").get("type") == "file"
    assert root.find("devices/serial/source").get("path") == "/var/log/libvirt/qemu/hx-t-console.log"
    assert root.find("devices/memballoon").get("model") == "none"
    assert [e.tag for e in root.find("devices")][-3:] == ["interface", "hostdev", "interface"]


def test_raw_domain_xml():
    dom = Domain(xml="<domain type='auto'><name>ignored</name><memory>1</memory>"
                     "<os><kernel>{guest.kernel}</kernel></os></domain>")
    root = ET.fromstring(xmlbuild.domain_xml("hx-real", dom, resolved(), "kvm", [], "/log"))
    assert root.get("type") == "kvm"
    assert root.find("name").text == "hx-real"
    assert root.find("os/kernel").text == GUEST_KERNEL
    assert len(root.findall("name")) == 1


def test_raw_domain_xml_keeps_an_explicit_type_and_gets_a_name():
    root = ET.fromstring(xmlbuild.domain_xml("hx-real", Domain(xml="<domain type='qemu'/>"), resolved(),
                                             "kvm", [], "/log"))
    assert root.get("type") == "qemu"
    assert root.find("name").text == "hx-real"


# ---- network XML ------------------------------------------------------------------------------------------------

def test_hostdev_pool_by_vfs():
    root = ET.fromstring(xmlbuild.network_xml("hx-run-pool", Network("pool", "hostdev", vfs=["vf2", "vf1"]),
                                              resolved(), 5))
    fw = root.find("forward")
    assert fw.attrib == {"mode": "hostdev", "managed": "yes"}
    assert [a.attrib for a in fw.findall("address")] == [
        {"type": "pci", "domain": "0x0000", "bus": "0x01", "slot": "0x10", "function": "0x2"},
        {"type": "pci", "domain": "0x0000", "bus": "0x01", "slot": "0x10", "function": "0x0"}]
    assert fw.find("pf") is None
    assert root.find("ip") is None             # a pool has no IP, even with a subnet
    assert root.find("name").text == "hx-run-pool"


def test_hostdev_pool_by_pf():
    root = ET.fromstring(xmlbuild.network_xml("hx-run-pfpool", Network("pfpool", "hostdev", pf="pf1"), resolved()))
    fw = root.find("forward")
    assert fw.get("mode") == "hostdev"
    assert [p.attrib for p in fw.findall("pf")] == [{"dev": "enp1s0"}]
    assert fw.findall("address") == []
    assert root.find("ip") is None


@pytest.mark.parametrize("forward", ["nat", "isolated"])
@pytest.mark.parametrize("subnet, third", [(None, "0"), (0, "0"), (7, "7"), (249, "249")])
def test_nat_and_isolated(forward, subnet, third):
    root = ET.fromstring(xmlbuild.network_xml("hx-run-lan", Network("lan", forward), resolved(), subnet))
    if forward == "nat":
        assert root.find("forward").attrib == {"mode": "nat"}
    else:
        assert root.find("forward") is None
    ip = root.find("ip")
    assert ip.attrib == {"address": f"10.213.{third}.1", "netmask": "255.255.255.0"}
    assert ip.find("dhcp/range").attrib == {"start": f"10.213.{third}.100", "end": f"10.213.{third}.200"}


# ---- against libvirt's own schema, where the bed's tools are installed --------------------------------------------------

RNG = Path("/usr/share/libvirt/schemas")


@pytest.mark.skipif(not (shutil.which("xmllint") and (RNG / "domain.rng").exists()),
                    reason="needs xmllint and libvirt's RelaxNG schemas")
def test_generated_xml_is_valid_for_libvirt(tmp_path):
    devs = [iface("hn0", type="hostdev", device="vf1"), iface("n1", type="network", network="lan"),
            iface("b1", type="bridge", bridge="lan"), iface("u1", type="user", model="usb-net", alias="ua-u"),
            iface("e1", type="ethernet", model="e1000e"), iface("d1", type="direct", dev="pf1", model="rtl8139"),
            Device("h0", "hostdev", {"id": "h0", "device": "e1"})]
    docs = {
        "dom-q35.xml": ("domain", xmlbuild.domain_xml("hx-t", Domain(guest=True, devices=devs), resolved(), "kvm",
                                                      devs, "/log/c.log")),
        "dom-pc.xml": ("domain", xmlbuild.domain_xml("hx-t", Domain(machine="pc", devices=devs[:2]), resolved(),
                                                     "qemu", devs[:2], "/log/c.log")),
        "net-vfs.xml": ("network", xmlbuild.network_xml("p", Network("p", "hostdev", vfs=["vf1", "vf2"]), resolved())),
        "net-pf.xml": ("network", xmlbuild.network_xml("p", Network("p", "hostdev", pf="pf1"), resolved())),
        "net-nat.xml": ("network", xmlbuild.network_xml("n", Network("n", "nat"), resolved(), 4)),
        "net-iso.xml": ("network", xmlbuild.network_xml("i", Network("i", "isolated"), resolved(), 5)),
    }
    for name, (_schema, text) in docs.items():
        (tmp_path / name).write_text(text)
    for schema in ("domain", "network"):
        files = [str(tmp_path / n) for n, (s, _) in docs.items() if s == schema]
        p = subprocess.run(["xmllint", "--noout", "--relaxng", str(RNG / f"{schema}.rng"), *files],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr


# ---- the model ----------------------------------------------------------------------------------------------------

def test_mark_str():
    assert str(Mark("scenarios/x.yaml", 12, 3)) == "scenarios/x.yaml:12:3"


@pytest.mark.parametrize("step, text", [
    (Step("start"), "start"),
    (Step("detach", arg="n1"), "detach n1"),
    (Step("attach", arg=Device("p1", "interface", {})), "attach p1"),
    (Step("update", arg={"id": "n1", "link": "down"}), "update {'id': 'n1', 'link': 'down'}"),
    (Step("update", arg={}), "update"),
    (Step("detach", arg="n1", name="unplug the lan"), "unplug the lan"),
])
def test_step_describe(step, text):
    assert step.describe() == text


def test_model_defaults_are_the_documented_ones():
    d = Domain()
    assert (d.type, d.machine, d.memory_mib, d.vcpus, d.guest, d.root_ports, d.devices, d.xml) == \
        ("auto", "q35", 128, 1, False, 8, [], None)
    assert Network("lan", "nat").create is True
    s = Step("attach")
    assert (s.flags, s.times, s.expect) == ("live", 1, {})
    assert Domain().devices is not Domain().devices


# ---- raw XML may pass through only leased PCI devices -------------------------------------------------

def raw(xml: str) -> Device:
    return Device("rx", "xml", {"id": "rx", "xml": xml})


@pytest.mark.parametrize("xml", [
    "<interface type='hostdev'><source><address type='pci' {vf1.address}/></source></interface>",
    "<hostdev mode='subsystem' type='pci'><source><address {vf2.address}/></source></hostdev>",
    # the same leased device spelled by hand, decimal or hex, is still that device
    "<hostdev mode='subsystem' type='pci'><source><address domain='0' bus='1' slot='16' function='0'/>"
    "</source></hostdev>",
])
def test_raw_xml_passing_a_leased_device_is_built(xml):
    assert build(raw(xml)).find("source/address") is not None


@pytest.mark.parametrize("xml, addr", [
    ("<interface type='hostdev'><source><address type='pci' domain='0x0000' bus='0x00' slot='0x02' "
     "function='0x0'/></source></interface>", "0000:00:02.0"),
    ("<hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0x01' slot='0x10' "
     "function='0x4'/></source></hostdev>", "0000:01:10.4"),
])
def test_raw_xml_passing_an_unleased_device_is_refused(xml, addr):
    with pytest.raises(HarnessError) as e:
        build(raw(xml))
    assert f"device rx: passes through host PCI device {addr}, which is not a device leased" in e.value.message
    assert "{sym.address}" in e.value.hint


def test_raw_domain_xml_passing_an_unleased_device_is_refused():
    dom = Domain(xml="<domain type='qemu'><devices><hostdev mode='subsystem' type='pci'><source>"
                     "<address domain='0x0000' bus='0x00' slot='0x03' function='0x0'/></source></hostdev>"
                     "</devices></domain>")
    with pytest.raises(HarnessError, match=r"domain xml: passes through host PCI device 0000:00:03.0"):
        xmlbuild.domain_xml("hx-x", dom, resolved(), "qemu", [], "/dev/null")


def test_raw_xml_with_a_garbage_pci_address_is_refused():
    with pytest.raises(HarnessError, match="is not a PCI address"):
        build(raw("<hostdev mode='subsystem' type='pci'><source><address bus='eth0'/></source></hostdev>"))
