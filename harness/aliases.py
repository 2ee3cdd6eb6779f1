"""libvirt's alias rules for interfaces, in one place.

An interface backed by a host device (type='hostdev', or type='network' on a network with
<forward mode='hostdev'>) is named hostdevN, sharing one namespace with plain <hostdev>s; every
other interface is netN. A user alias (ua-...) is kept exactly as written. Commit f8e712fe broke
the first rule for pool-backed interfaces by naming them before the pool handed out a VF.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

USER_PREFIX = "ua-"
_INDEXED = re.compile(r"^(hostdev|net)(\d+)$")


def split(alias: str | None) -> tuple[str, int | None]:
    """('hostdev', 3) for hostdev3, ('net', 0) for net0, ('ua', None) for user aliases,
    ('other', None) for anything else (controllers, disks...)."""
    if not alias:
        return "none", None
    if alias.startswith(USER_PREFIX):
        return "ua", None
    m = _INDEXED.match(alias)
    if m:
        return m.group(1), int(m.group(2))
    return "other", None


def hostdev_backed(iface: ET.Element, hostdev_networks: set[str]) -> bool:
    """True if this <interface> is backed by a host device (live or inactive XML)."""
    itype = iface.get("type")
    if itype == "hostdev":
        return True
    if itype == "network":
        src = iface.find("source")
        return src is not None and src.get("network") in hostdev_networks
    return False


def expected_family(iface: ET.Element, hostdev_networks: set[str]) -> str:
    return "hostdev" if hostdev_backed(iface, hostdev_networks) else "net"


def check_interface(alias: str | None, iface: ET.Element, hostdev_networks: set[str],
                    user_alias: str | None = None) -> str | None:
    """None if the alias follows the rules, else a sentence saying what is wrong."""
    if user_alias:
        return None if alias == user_alias else f"user alias {user_alias!r} not kept (got {alias!r})"
    fam, idx = split(alias)
    want = expected_family(iface, hostdev_networks)
    if fam == want or fam == "ua":
        # An undeclared ua- alias was written by the scenario too (raw XML, whose alias the runner does
        # not know): libvirt never makes one up, so it cannot break the hostdevN/netN rule.
        return None
    what = ("hostdev-backed interface" if want == "hostdev" else f"interface type={iface.get('type')!r}")
    return f"{what} must be named {want}N, got {alias!r}"


def check_hostdev(alias: str | None, user_alias: str | None = None) -> str | None:
    """Plain <hostdev> devices are hostdevN (or their user alias)."""
    if user_alias:
        return None if alias == user_alias else f"user alias {user_alias!r} not kept (got {alias!r})"
    fam, _ = split(alias)
    return None if fam in ("hostdev", "ua") else f"plain <hostdev> must be named hostdevN, got {alias!r}"


def is_qemu_device_id(name: str) -> bool:
    """Ids in QEMU's /machine/peripheral that libvirt derives from interface/hostdev aliases."""
    return split(name)[0] in ("hostdev", "net", "ua")
