"""All libvirt XML the harness writes: domains, devices, networks. Built with ElementTree so a
name with quotes, angle brackets or $(...) stays data and cannot change the document."""
from __future__ import annotations

import hashlib
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from harness.errors import HarnessError
from harness.scenario.model import Device, Domain, Network

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("qemu", QEMU_NS)
GUEST_KERNEL = "/var/lib/libvirt/images/hx-guest/vmlinux"   # ELF, PVH boot (bed/image.py)
USB_PORTS = 15
GUEST_INITRD = "/var/lib/libvirt/images/hx-guest/initrd.img"


@dataclass
class PciAddr:
    domain: int
    bus: int
    slot: int
    function: int

    @classmethod
    def parse(cls, text: str) -> "PciAddr":
        m = re.fullmatch(r"([0-9a-fA-F]{4}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])", text)
        if not m:
            raise ValueError(f"not a PCI address: {text!r}")
        return cls(*(int(g, 16) for g in m.groups()))

    def attrs(self) -> dict[str, str]:
        return {"domain": f"0x{self.domain:04x}", "bus": f"0x{self.bus:02x}",
                "slot": f"0x{self.slot:02x}", "function": f"0x{self.function:x}"}

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"


@dataclass
class Resolved:
    """What symbols mean in this run: leased host devices, real network names, MACs."""
    addrs: dict[str, PciAddr] = field(default_factory=dict)        # host device sym -> address
    ifnames: dict[str, str] = field(default_factory=dict)          # host device sym -> netdev name (PFs, e1000e)
    networks: dict[str, str] = field(default_factory=dict)         # network sym -> real name
    bridges: dict[str, str] = field(default_factory=dict)          # network sym -> bridge name (once started)
    macs: dict[str, str] = field(default_factory=dict)             # device id -> MAC
    usb_ports: dict[str, int] = field(default_factory=dict)        # device id -> port on the xhci controller
    salt: str = ""

    def usb_port_for(self, dev_id: str) -> int:
        """A stable USB port per device: libvirt 9.0 tries to give an unaddressed usb-net NIC a PCI
        slot ("Cannot automatically add a new PCI bus ... connect flags 00")."""
        if dev_id not in self.usb_ports:
            self.usb_ports[dev_id] = len(self.usb_ports) + 1
        return self.usb_ports[dev_id]

    def mac_for(self, dev_id: str) -> str:
        """A MAC from (salt, id), never one another device of this run already has: the oracle
        tells interfaces apart by MAC, and 24 hashed bits do collide now and then."""
        if dev_id not in self.macs:
            taken = {m.lower() for m in self.macs.values()}
            n = 0
            while True:
                seed = f"{self.salt}:{dev_id}" + (f":{n}" if n else "")
                h = hashlib.sha256(seed.encode()).digest()
                mac = "52:54:00:%02x:%02x:%02x" % (h[0], h[1], h[2])
                if mac not in taken:
                    break
                n += 1
            self.macs[dev_id] = mac
        return self.macs[dev_id]

    def placeholders(self) -> dict[str, str]:
        out = {"guest.kernel": GUEST_KERNEL, "guest.initrd": GUEST_INITRD}
        for sym, a in self.addrs.items():
            out[f"{sym}.address"] = " ".join(f"{k}='{v}'" for k, v in a.attrs().items())
            out[f"{sym}.pci"] = str(a)
        for sym, n in self.ifnames.items():
            out[f"{sym}.ifname"] = n
        for sym, n in self.networks.items():
            out[f"{sym}.name"] = n
        for dev_id, m in self.macs.items():
            out[f"{dev_id}.mac"] = m
        return out


_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([a-z][a-z0-9_]*\.[a-z]+)\}")


def fill(text: str, r: Resolved, where: str = "raw XML") -> str:
    """Replace {sym.attr} placeholders; {{ and }} are literal braces."""
    values = r.placeholders()

    def sub(m: re.Match) -> str:
        if m.group(0) in ("{{", "}}"):
            return m.group(0)[0]
        key = m.group(1)
        if key not in values:
            raise HarnessError(f"{where}: placeholder {{{key}}} has no value in this run",
                               hint=f"known: {', '.join(sorted(values))}")
        return values[key]
    return _PLACEHOLDER.sub(sub, text)


def only_leased_pci(root: ET.Element, r: "Resolved", where: str) -> None:
    """Raw XML may pass through only the PCI devices leased for this run: a literal address could
    hand the bed's (or, in real-passthrough mode, the host's) management NIC to a test domain."""
    leased = {str(a) for a in r.addrs.values()}
    for el in root.iter():
        if el.tag != "hostdev" and not (el.tag == "interface" and el.get("type") == "hostdev"):
            continue
        for a in el.findall("source/address"):
            try:
                addr = PciAddr(*(int(a.get(k, "0"), 0) for k in ("domain", "bus", "slot", "function")))
            except ValueError:
                raise HarnessError(f"{where}: <source><address> of a <{el.tag}> is not a PCI address: "
                                   f"{ET.tostring(a, encoding='unicode').strip()}",
                                   hint="write {sym.address} for a device declared under devices:") from None
            if str(addr) not in leased:
                raise HarnessError(f"{where}: passes through host PCI device {addr}, which is not a device "
                                   f"leased for this run ({', '.join(sorted(leased)) or 'none leased'})",
                                   hint="declare the device under devices: and write {sym.address} instead of "
                                        "a literal address")


def _sub(parent: ET.Element, tag: str, **attrs: str) -> ET.Element:
    return ET.SubElement(parent, tag, {k: v for k, v in attrs.items() if v is not None})


def device_element(dev: Device, r: Resolved) -> ET.Element:
    """The libvirt XML element for a scenario device."""
    s = dev.spec
    if dev.kind == "xml":
        try:
            el = ET.fromstring(fill(s["xml"], r, f"device {dev.id}"))
        except ET.ParseError as e:
            raise HarnessError(f"device {dev.id}: raw XML does not parse: {e}") from None
        only_leased_pci(el, r, f"device {dev.id}")
        if el.tag == "interface" and el.find("mac") is None:
            # libvirt would invent a MAC, and the oracle (which knows interfaces by MAC) would never
            # find this device again: give it the run's deterministic one.
            el.insert(0, ET.Element("mac", address=r.mac_for(dev.id)))
        return el
    if dev.kind == "hostdev":
        el = ET.Element("hostdev", mode="subsystem", type="pci", managed="yes")
        src = _sub(el, "source")
        _sub(src, "address", **r.addrs[s["device"]].attrs())
        _alias(el, s)
        return el
    itype = s["type"]
    el = ET.Element("interface", type=itype)
    if itype == "hostdev":
        el.set("managed", "yes" if s.get("managed", True) else "no")
    if s.get("mac"):
        r.macs[dev.id] = s["mac"]   # so {id.mac} is the MAC the device really has
    _sub(el, "mac", address=r.mac_for(dev.id))
    if itype == "hostdev":
        src = _sub(el, "source")
        _sub(src, "address", type="pci", **r.addrs[s["device"]].attrs())
    elif itype == "network":
        _sub(el, "source", network=r.networks.get(s["network"], s["network"]))
    elif itype == "bridge":
        b = s["bridge"]
        _sub(el, "source", bridge=r.bridges.get(b, b))
    elif itype == "direct":
        d = s["dev"]
        _sub(el, "source", dev=r.ifnames.get(d, d), mode="bridge")
    if itype != "hostdev":
        _sub(el, "model", type=s.get("model", "virtio"))
    _alias(el, s)
    if s.get("model") == "usb-net":
        _sub(el, "address", type="usb", bus="0", port=str(r.usb_port_for(dev.id)))
    return el


def _alias(el: ET.Element, spec: dict) -> None:
    if spec.get("alias"):
        _sub(el, "alias", name=spec["alias"])


def device_xml(dev: Device, r: Resolved) -> str:
    return ET.tostring(device_element(dev, r), encoding="unicode")


_USB_NET_MODEL = re.compile(r"""<model\s[^>]*\btype\s*=\s*(["'])usb-net\1""")


def uses_usb(devices: list[Device]) -> bool:
    """A usb-net NIC anywhere (also pasted as raw XML) needs a USB controller in the domain."""
    return any((d.kind == "interface" and d.spec.get("model") == "usb-net")
               or (d.kind == "xml" and _USB_NET_MODEL.search(d.spec.get("xml", "")))
               for d in devices)


def domain_xml(name: str, dom: Domain, r: Resolved, virt_type: str, all_devices: list[Device],
               console_log: str) -> str:
    """Domain XML. `all_devices` (initial + every later attach) decides the controllers needed."""
    if dom.xml:
        root = ET.fromstring(fill(dom.xml, r, "domain xml"))
        only_leased_pci(root, r, "domain xml")
        root.set("type", virt_type if root.get("type") in (None, "auto") else root.get("type"))
        n = root.find("name")
        if n is None:
            n = ET.SubElement(root, "name")
        n.text = name
        return ET.tostring(root, encoding="unicode")
    root = ET.Element("domain", type=virt_type)
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "memory", unit="MiB").text = str(dom.memory_mib)
    ET.SubElement(root, "vcpu").text = str(dom.vcpus)
    os_el = ET.SubElement(root, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine=dom.machine).text = "hvm"
    if dom.guest:
        ET.SubElement(os_el, "kernel").text = GUEST_KERNEL
        ET.SubElement(os_el, "initrd").text = GUEST_INITRD
        # quiet: under TCG inside a TCG bed every console byte is emulated twice; init still prints its marker
        ET.SubElement(os_el, "cmdline").text = "console=ttyS0 panic=-1 quiet loglevel=3 mitigations=off"
    feats = ET.SubElement(root, "features")
    ET.SubElement(feats, "acpi")
    ET.SubElement(root, "on_reboot").text = "destroy"
    devs = ET.SubElement(root, "devices")
    if dom.machine == "q35":
        _sub(devs, "controller", type="pci", index="0", model="pcie-root")
        for i in range(1, dom.root_ports + 1):
            _sub(devs, "controller", type="pci", index=str(i), model="pcie-root-port")
    if uses_usb(all_devices):
        _sub(devs, "controller", type="usb", index="0", model="qemu-xhci", ports=str(USB_PORTS))
    else:
        _sub(devs, "controller", type="usb", model="none")
    ser = _sub(devs, "serial", type="file")
    _sub(ser, "source", path=console_log)
    _sub(devs, "memballoon", model="none")
    for d in dom.devices:
        devs.append(device_element(d, r))
    if fast_cpu_probe():
        caps = ET.SubElement(root, f"{{{QEMU_NS}}}capabilities")
        ET.SubElement(caps, f"{{{QEMU_NS}}}del", capability="cpu-unavailable-features")
    return ET.tostring(root, encoding="unicode")


def fast_cpu_probe() -> bool:
    """Generated domains skip libvirt's per-feature guest-CPU read-back at start.

    Why: with QEMU < 10.1 (no qom-list-get) libvirt reads the started guest's CPU with one qom-get
    per feature, about 930 QMP round trips: 6 of the 7.5 s a start took in a TCG bed. Without the
    'cpu-unavailable-features' capability libvirt takes its older x86 path (two qom-gets). Neither
    path touches device or alias code. HX_FULL_CPU_PROBE=1 keeps libvirt's default.
    """
    return os.environ.get("HX_FULL_CPU_PROBE") != "1"


def network_xml(name: str, net: Network, r: Resolved, subnet: int | None = None) -> str:
    """A libvirt network: a hostdev pool (by VF list or PF) or a NAT/isolated network on 10.<subnet>."""
    root = ET.Element("network")
    ET.SubElement(root, "name").text = name
    if net.forward == "hostdev":
        fw = _sub(root, "forward", mode="hostdev", managed="yes")
        if net.pf:
            _sub(fw, "pf", dev=r.ifnames[net.pf])
        for vf in net.vfs:
            _sub(fw, "address", type="pci", **r.addrs[vf].attrs())
        return ET.tostring(root, encoding="unicode")
    if net.forward == "nat":
        _sub(root, "forward", mode="nat")
    third = subnet if subnet is not None else 0
    ip = _sub(root, "ip", address=f"10.213.{third}.1", netmask="255.255.255.0")
    dhcp = _sub(ip, "dhcp")
    _sub(dhcp, "range", start=f"10.213.{third}.100", end=f"10.213.{third}.200")
    return ET.tostring(root, encoding="unicode")
