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
QBOOT = "/usr/share/qemu/qboot.rom"     # qemu-system-data, bookworm to sid

#: The tiny guest's kernel command line. The guest boots the kernel bed/guest_kernel.py builds, which has
#: none of what most of these switch off (it ignores them, or hands the unknown ones to init, which ignores
#: them too). They matter with HX_GUEST_KERNEL=debian: under TCG inside a TCG bed the bed's Debian kernel took
#: ~110 s from its first timestamp to init; these skip boot work that plays no part in acknowledging a PCI/ACPI
#: unplug (ACPI, PCI, the PCIe port driver, pciehp/acpiphp and virtio-pci all still run). Seconds below are
#: from an initcall_debug boot in the bed; `python -m bench.guest` times the guest scenarios.
GUEST_CMDLINE = " ".join([
    # quiet: every console byte is emulated twice; init still prints its marker
    "console=ttyS0", "panic=-1", "quiet", "loglevel=3", "mitigations=off",
    "cryptomgr.notests",          # crypto self-tests at boot (drbg, ecdsa, rsa...): ~6 s
    "noreplace-smp",              # with 1 CPU the kernel rewrites every lock prefix (SMP alternatives): seconds
    "tsc=reliable", "no_timer_check",   # no clocksource watchdog, no IO-APIC timer check
    "rodata=off",                 # no read-only remap and W+X page-table walk after the initcalls: ~4 s
    "lsm=capability", "audit=0",  # no AppArmor/Landlock/Yama/IMA/EVM/audit set-up
    "cgroup_disable=cpuset,cpu,cpuacct,io,memory,devices,freezer,net_cls,perf_event,net_prio,hugetlb,pids,"
    "rdma,misc",                  # no cgroup controller files in kernfs
    "ipv6.disable=1", "8250.nr_uarts=1",   # no IPv6 stack; probe ttyS0 only
    # initcalls with nothing to do with PCI, ACPI or the serial console, each 0.2-4 s here: certificate
    # and key-type set-up (no module is ever loaded), the jitter RNG's health test, KDF self-test, RTC, PS/2,
    # BPF struct-ops BTF parsing, ftrace eval maps, kmalloc buckets, /sys/module, cacheinfo, mqueue, VGA
    # arbiter. (system_trusted_keyring_init must stay: the machine keyring oopses without it.)
    "initcall_blacklist=" + ",".join([
        "load_system_certificate_list", "jent_mod_init", "crypto_kdf108_init", "init_encrypted", "init_ima",
        "cmos_init", "i8042_init", "bpf_tcp_ca_kfunc_init", "bpf_dummy_struct_ops_init", "kfunc_init",
        "trace_eval_init", "init_user_buckets", "init_msg_buckets", "param_sysfs_builtin_init",
        "cacheinfo_sysfs_init", "init_mqueue_fs", "vga_arb_device_init"]),
])


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


_INTERFACE_SOURCE = {"network": ("network", "networks"), "bridge": ("bridge", "bridges"), "direct": ("dev", "nics")}
_CHARDEVS = {"serial", "console", "channel", "parallel", "redirdev"}
_SAFE_CHARDEV_TYPES = {"pty", "null", "vc", "spicevmc", "spiceport", "qemu-vdagent", "dbus"}
_PATH_TEXT = {"kernel", "initrd", "dtb", "loader", "nvram", "emulator", "table", "partition"}
_GUEST_SIDE = {"description", "title", "cmdline", "init", "initarg", "initdir", "target"}   # guest paths, labels
_NAMESPACES = {"http://libvirt.org/schemas/domain/qemu/1.0": "qemu"}
_SAFE_HOST_FILES = {"/dev/urandom", "/dev/random"}   # <rng><backend model='random'>


def host_resources(root: ET.Element, allowed: dict[str, set[str]]) -> list[tuple[ET.Element, str, str]]:
    """What in raw XML reaches the host beyond the PCI devices only_leased_pci admits: (element, problem,
    hint) in document order. `allowed` holds the names the scenario may use: `networks`, `bridges`, `nics`
    (its own networks and devices, and the host ones it declares under `host:`) and `files` (the tiny
    guest's kernel and initrd). The loader checks this offline, at lint."""
    out: list[tuple[ET.Element, str, str]] = []
    free_form = {id(d) for m in root.iter("metadata") for d in m.iter()}   # libvirt never interprets it
    parent = {id(c): p.tag for p in root.iter() for c in p}
    for el in root.iter():
        if id(el) in free_form:
            continue
        tag, typ = el.tag, el.get("type")
        ty = "" if typ is None else f" type='{typ[:40]}'"
        if tag.startswith("{"):
            uri, local = tag[1:].split("}", 1)
            shown = f"{_NAMESPACES[uri]}:{local}" if uri in _NAMESPACES else f"{local} xmlns='{uri[:60]}'"
            out.append((el, f"<{shown}> hands options to the hypervisor "
                            "behind libvirt's back (e.g. -device vfio-pci), past the run's device leases",
                        "remove it: raw XML may only use libvirt's own elements (custom data goes in <metadata>)"))
            continue
        if tag == "domain" and el is root and typ not in (None, "auto", "kvm", "qemu"):
            out.append((el, f"<domain{ty}> is not a QEMU domain", "use type 'kvm', 'qemu' or 'auto'"))
        elif tag == "seclabel":
            out.append((el, "<seclabel> changes how the host confines QEMU",
                        "remove it: test domains run with the bed's default confinement"))
        elif tag == "hostdev" and (el.get("mode", "subsystem") != "subsystem" or typ != "pci"):
            out.append((el, f"<hostdev mode='{el.get('mode', 'subsystem')[:40]}'{ty}> passes a host device "
                            "through that is not a leased PCI device (e.g. USB by vendor/product)",
                        "only PCI devices declared under devices: may be passed through: "
                        "<hostdev mode='subsystem' type='pci'> with {sym.address}"))
        elif tag == "interface" and typ not in {"hostdev", "user", "ethernet", *_INTERFACE_SOURCE}:
            out.append((el, f"<interface{ty}> uses host sockets or devices",
                        "use type hostdev, network, bridge, direct, user or ethernet"))
        elif tag == "interface" and typ in _INTERFACE_SOURCE:
            attr, kind = _INTERFACE_SOURCE[typ]
            src = el.find("source")
            name = src.get(attr) if src is not None else None
            if name not in allowed.get(kind, set()):
                mine = {"networks": "declare it under networks: and write {sym.name}",
                        "nics": "declare it under devices: and write {sym.ifname}",
                        "bridges": "use a structured `interface: {type: bridge}` for a networks: sym"}[kind]
                noun = {"networks": "network", "bridges": "bridge", "nics": "NIC"}[kind]
                out.append((el if src is None else src,
                            f"<interface{ty}> uses host {noun} '{str(name)[:60]}', which the scenario does not declare",
                            f"{mine}, or list an existing one under `host: {{{kind}: [...]}}`"))
        elif tag in ("script", "downscript", "backend") and parent.get(id(el)) == "interface":
            out.append((el, f"<{tag}> in an <interface> runs a host script or opens host devices", "remove it"))
        elif tag == "target" and el.get("managed") == "no":
            out.append((el, "<target managed='no'> takes over an existing host tap device", "remove managed='no'"))
        elif tag in ("disk", "filesystem") and (el.find("source") is not None or el.find("backingStore") is not None):
            out.append((el, f"<{tag}{ty}> with a <source> uses host storage (a file, block device, "
                            "directory or network volume)",
                        "the alias rules need no guest storage: drop the element (an empty cdrom has no <source>)"))
        elif (tag in _CHARDEVS or (tag == "backend" and el.get("model") == "egd")
              or (tag == "smartcard" and el.get("mode") == "passthrough")) and typ not in _SAFE_CHARDEV_TYPES:
            out.append((el, f"<{tag}{ty}> connects to a host file, device, pipe or socket",
                        f"use type {', '.join(sorted(_SAFE_CHARDEV_TYPES))}, or drop the element"))
        elif tag == "smartcard" or tag == "shmem" or (tag == "tpm" and el.find("backend[@type='passthrough']")
                                                      is not None):
            what = {"smartcard": "smartcard reader or certificate files", "shmem": "shared memory"}.get(tag, "TPM")
            out.append((el, f"<{tag}> uses the host's {what}", "remove it: the alias rules need none of it"))
        for attr, value in el.attrib.items():
            if value.startswith("/") and tag not in _GUEST_SIDE:
                out.append((el, f"<{tag} {attr}='{value[:60]}'> names a host path", "remove it: raw XML may not name "
                            "host files or devices"))
        text = (el.text or "").strip()
        if text and (tag in _PATH_TEXT or (text.startswith("/") and tag not in _GUEST_SIDE)) \
                and text not in allowed.get("files", set()) | _SAFE_HOST_FILES:
            out.append((el, f"<{tag}>{text[:60]}</{tag}> names a host path",
                        "the only host files raw XML may name are {guest.kernel} and {guest.initrd}"))
    return out


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
        ET.SubElement(os_el, "cmdline").text = GUEST_CMDLINE
    elif no_guest_firmware() == "qboot":
        ET.SubElement(os_el, "loader", type="rom").text = QBOOT
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


def no_guest_firmware() -> str:
    """Firmware of a generated domain that boots no guest: QEMU's qboot unless HX_FIRMWARE=seabios.

    Why: under SeaBIOS such a domain never stops working. SeaBIOS runs each NIC's iPXE option ROM and then
    tries to boot from the network: in a TCG bed its QEMU used about half a bed CPU for as long as it ran
    (1558 ticks of CPU in 30 s, next to 164 with qboot and 324 with the NICs' ROMs off), while libvirt did
    the scenario's work beside it. qboot sets up PCI and stops. Aliases, addresses and hot-plug are libvirt's
    and QEMU's, the same under either firmware; the tiny guest (a kernel to boot) keeps SeaBIOS.
    """
    fw = os.environ.get("HX_FIRMWARE") or "qboot"
    if fw not in ("qboot", "seabios"):
        raise HarnessError(f"HX_FIRMWARE={fw!r} names no firmware the harness knows",
                           hint="HX_FIRMWARE=seabios (QEMU's default firmware) or qboot (the default here), or unset it")
    return fw


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
