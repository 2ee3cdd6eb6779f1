"""harness/aliases.py: libvirt's naming rules for interfaces and hostdevs, offline."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from harness import aliases

POOL = "hx-run-pool"      # a <forward mode='hostdev'> network (real name)
LAN = "hx-run-lan"        # a NAT network
HOSTDEV_NETS = {POOL}


def iface(xml: str) -> ET.Element:
    return ET.fromstring(xml)


# ---- split ---------------------------------------------------------------------------------

@pytest.mark.parametrize("alias, want", [
    ("hostdev0", ("hostdev", 0)),
    ("hostdev3", ("hostdev", 3)),
    ("hostdev12", ("hostdev", 12)),
    ("net0", ("net", 0)),
    ("net17", ("net", 17)),
    ("ua-sriov-a", ("ua", None)),
    ("ua-", ("ua", None)),
    ("pci.1", ("other", None)),
    ("pcie.0", ("other", None)),
    ("serial0", ("other", None)),
    ("usb", ("other", None)),
    ("hostnet0", ("other", None)),      # the -netdev id, not the device id
    ("net", ("other", None)),            # no index
    ("hostdev", ("other", None)),
    ("net0a", ("other", None)),
    ("Net0", ("other", None)),
    ("net-1", ("other", None)),
    ("xnet0", ("other", None)),
    ("UA-x", ("other", None)),           # the prefix is lowercase in libvirt
    ("uart0", ("other", None)),          # "ua" without the dash is no user alias
    ("", ("none", None)),
    (None, ("none", None)),
])
def test_split(alias, want):
    assert aliases.split(alias) == want


def test_split_index_is_an_int():
    fam, idx = aliases.split("hostdev10")
    assert isinstance(idx, int) and idx == 10


# ---- hostdev_backed / expected_family ----------------------------------------------------------

@pytest.mark.parametrize("xml, backed", [
    ("<interface type='hostdev' managed='yes'><source><address type='pci' bus='0x01'/></source></interface>", True),
    (f"<interface type='network'><source network='{POOL}'/></interface>", True),        # inactive pool iface
    (f"<interface type='network'><source network='{LAN}'/></interface>", False),        # NAT network
    ("<interface type='network'><source network='default'/></interface>", False),
    ("<interface type='network'/>", False),                                               # no source at all
    ("<interface type='network'><source bridge='virbr1'/></interface>", False),          # source without network
    (f"<interface type='bridge'><source bridge='{POOL}'/></interface>", False),          # name match is not enough
    ("<interface type='user'/>", False),
    ("<interface type='ethernet'/>", False),
    ("<interface type='direct'><source dev='enp2s0' mode='bridge'/></interface>", False),
    ("<interface type='vhostuser'/>", False),
    ("<interface/>", False),
])
def test_hostdev_backed(xml, backed):
    el = iface(xml)
    assert aliases.hostdev_backed(el, HOSTDEV_NETS) is backed
    assert aliases.expected_family(el, HOSTDEV_NETS) == ("hostdev" if backed else "net")


def test_network_on_pool_is_only_hostdev_backed_when_the_pool_is_known():
    el = iface(f"<interface type='network'><source network='{POOL}'/></interface>")
    assert aliases.hostdev_backed(el, set()) is False
    assert aliases.hostdev_backed(el, {LAN}) is False
    assert aliases.hostdev_backed(el, {LAN, POOL}) is True


# ---- check_interface -----------------------------------------------------------------------------

IFACES = {
    "hostdev": "<interface type='hostdev' managed='yes'><mac address='52:54:00:00:00:01'/></interface>",
    "network-pool": f"<interface type='network'><source network='{POOL}'/></interface>",
    "network-nat": f"<interface type='network'><source network='{LAN}'/></interface>",
    "bridge": "<interface type='bridge'><source bridge='virbr0'/></interface>",
    "user": "<interface type='user'/>",
    "ethernet": "<interface type='ethernet'/>",
    "direct": "<interface type='direct'><source dev='enp2s0' mode='bridge'/></interface>",
}
FAMILY = {"hostdev": "hostdev", "network-pool": "hostdev", "network-nat": "net", "bridge": "net",
          "user": "net", "ethernet": "net", "direct": "net"}


@pytest.mark.parametrize("kind", sorted(IFACES))
def test_check_interface_accepts_its_family(kind):
    el = iface(IFACES[kind])
    good = "hostdev2" if FAMILY[kind] == "hostdev" else "net2"
    assert aliases.check_interface(good, el, HOSTDEV_NETS) is None


@pytest.mark.parametrize("kind", sorted(IFACES))
def test_check_interface_rejects_the_other_family(kind):
    el = iface(IFACES[kind])
    bad = "net5" if FAMILY[kind] == "hostdev" else "hostdev5"
    msg = aliases.check_interface(bad, el, HOSTDEV_NETS)
    assert msg is not None
    assert repr(bad) in msg
    assert f"must be named {FAMILY[kind]}N" in msg
    if FAMILY[kind] == "hostdev":
        assert "hostdev-backed interface" in msg
    else:
        assert f"type={el.get('type')!r}" in msg


@pytest.mark.parametrize("kind", sorted(IFACES))
@pytest.mark.parametrize("bad", [None, "", "pci.3", "serial0", "hostnet0", "net", "virtio-net0"])
def test_check_interface_rejects_missing_or_foreign_alias(kind, bad):
    assert aliases.check_interface(bad, iface(IFACES[kind]), HOSTDEV_NETS) is not None


def test_the_f8e712fe_regression_pool_interface_named_net():
    # What mutant B produces: a pool interface (inactive XML shape) named by the netN rule.
    el = iface(IFACES["network-pool"])
    assert aliases.check_interface("net0", el, HOSTDEV_NETS) == \
        "hostdev-backed interface must be named hostdevN, got 'net0'"
    # ... while the same interface on a NAT network is right to be net0
    assert aliases.check_interface("net0", iface(IFACES["network-nat"]), HOSTDEV_NETS) is None


@pytest.mark.parametrize("kind", sorted(IFACES))
def test_check_interface_user_alias_must_be_kept_exactly(kind):
    el = iface(IFACES[kind])
    assert aliases.check_interface("ua-mine", el, HOSTDEV_NETS, user_alias="ua-mine") is None
    # libvirt dropping the user alias and naming the device by its rule is a failure, even though
    # that name would be right without a user alias
    auto = "hostdev0" if FAMILY[kind] == "hostdev" else "net0"
    msg = aliases.check_interface(auto, el, HOSTDEV_NETS, user_alias="ua-mine")
    assert msg == f"user alias 'ua-mine' not kept (got {auto!r})"
    assert aliases.check_interface("ua-Mine", el, HOSTDEV_NETS, user_alias="ua-mine") is not None
    assert aliases.check_interface("ua-other", el, HOSTDEV_NETS, user_alias="ua-mine") is not None
    assert aliases.check_interface(None, el, HOSTDEV_NETS, user_alias="ua-mine") == \
        "user alias 'ua-mine' not kept (got None)"


@pytest.mark.parametrize("kind", sorted(IFACES))
def test_check_interface_undeclared_user_alias_is_accepted(kind):
    # A ua- alias the harness did not declare came from raw XML the scenario pasted: libvirt never
    # invents ua- names, so it is no breach of the hostdevN/netN rule (it used to be reported as one).
    assert aliases.check_interface("ua-from-raw-xml", iface(IFACES[kind]), HOSTDEV_NETS) is None


# ---- check_hostdev --------------------------------------------------------------------------------

@pytest.mark.parametrize("alias, ok", [
    ("hostdev0", True), ("hostdev7", True), ("net0", False), ("pci.1", False), (None, False), ("", False),
    ("ua-undeclared", True),
])
def test_check_hostdev(alias, ok):
    msg = aliases.check_hostdev(alias)
    assert (msg is None) is ok
    if not ok:
        assert msg == f"plain <hostdev> must be named hostdevN, got {alias!r}"


def test_check_hostdev_user_alias():
    assert aliases.check_hostdev("ua-e1", "ua-e1") is None
    assert aliases.check_hostdev("hostdev2", "ua-e1") == "user alias 'ua-e1' not kept (got 'hostdev2')"


# ---- is_qemu_device_id ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, yes", [
    ("hostdev0", True), ("net3", True), ("ua-sriov-a", True),
    ("pci.1", False), ("serial0", False), ("usb", False), ("hostnet0", False), ("ide", False),
    ("input0", False), ("watchdog0", False), ("net", False), ("", False),
])
def test_is_qemu_device_id(name, yes):
    assert aliases.is_qemu_device_id(name) is yes


def test_is_qemu_device_id_on_a_real_qom_list():
    from pathlib import Path
    ids = (Path(__file__).resolve().parent.parent / "data/xml/user-alias-04-attach-qemu-ids.txt").read_text().split()
    assert sorted(i for i in ids if aliases.is_qemu_device_id(i)) == \
        ["hostdev0", "ua-pool-b", "ua-sriov-a", "ua-user-c"]
