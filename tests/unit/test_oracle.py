"""harness/oracle.py on REAL libvirt 11.3.0 snapshots (tests/data/xml, see its README): the oracle
passes them as captured, and each mutation the way a real regression would look fails with the right
check name (docs/scenario-format.md, "What is checked after every step")."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness import oracle
from harness.engine import xmlbuild
from harness.engine.xmlbuild import PciAddr, Resolved
from harness.oracle import Context, Snapshot
from harness.scenario.model import Device

DATA = Path(__file__).resolve().parent.parent / "data" / "xml"


def read(name: str) -> str:
    return (DATA / name).read_text()


def qids(name: str) -> set[str]:
    return set(read(name).split())


def sub1(text: str, old: str, new: str) -> str:
    """Replace exactly one occurrence (so a mutation cannot silently miss)."""
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
    return text.replace(old, new)


def drop_iface(xml: str, mac: str) -> str:
    root = ET.fromstring(xml)
    devs = root.find("devices")
    hits = [e for e in devs if e.tag == "interface" and e.find("mac").get("address") == mac]
    assert len(hits) == 1
    devs.remove(hits[0])
    return ET.tostring(root, encoding="unicode")


def add_device(xml: str, snippet: str) -> str:
    root = ET.fromstring(xml)
    root.find("devices").append(ET.fromstring(snippet))
    return ET.tostring(root, encoding="unicode")


def checks(vs: list[oracle.Violation]) -> list[str]:
    return sorted(v.check for v in vs)


def mac(m: str) -> str:
    return "mac:" + m


# ---- the captured scenarios: ids -> identity keys, as the runner builds them ------------------------

SEED_KEYS = {"hn0": mac("52:54:00:7d:5a:a6"), "n1": mac("52:54:00:ec:d5:7a"), "u1": mac("52:54:00:69:a6:2c"),
             "e1": mac("52:54:00:98:76:a4"), "b1": mac("52:54:00:a2:6e:16"), "hn1": mac("52:54:00:a2:d0:0f")}
POOL_NET = "hx-pool-interface-alias-at-start-gw0d349-5da8-pool"
POOL_KEYS = {"p0": mac("52:54:00:63:d4:2d")}
RESTART_POOL = "hx-restart-daemon-stability-gw00ebd-6185-pool"
# h0 is keyed exactly as the engine keys it: from the element xmlbuild writes for the leased e1000e
H0_KEY = oracle.key_of(xmlbuild.device_element(Device("h0", "hostdev", {"id": "h0", "device": "e1"}),
                                               Resolved(addrs={"e1": PciAddr.parse("0000:02:00.0")})))
RESTART_KEYS = {"hn0": mac("52:54:00:6b:a5:7d"), "p0": mac("52:54:00:e3:2b:1d"), "n0": mac("52:54:00:bd:d1:5c"),
                "h0": H0_KEY, "p1": mac("52:54:00:4a:0c:4d"), "u1": mac("52:54:00:16:61:61")}
RESTART_ALIASES = {"hn0": "hostdev0", "p0": "hostdev1", "n0": "net0", "h0": "hostdev2"}
UA_KEYS = {"hn0": mac("52:54:00:9e:8e:f0"), "hn1": mac("52:54:00:3b:45:a4"), "p1": mac("52:54:00:c7:5f:4c"),
           "u1": mac("52:54:00:45:5a:d7")}
UA = {"hn0": "ua-sriov-a", "p1": "ua-pool-b", "u1": "ua-user-c"}
USB_KEYS = {"hn0": mac("52:54:00:d1:1b:79"), "u0": mac("52:54:00:c9:db:e9"), "u1": mac("52:54:00:9f:ab:48")}


def seed(step: str) -> Snapshot:
    stem = {"01": "seed-01-start", "05": "seed-05-attach-bridge", "06": "seed-06-attach-hostdev"}[step]
    return Snapshot(read(f"{stem}-live.xml"), read("seed-01-start-inactive.xml"), qids(f"{stem}-qemu-ids.txt"))


def restart(step: str) -> Snapshot:
    stem, inactive = {"01": ("restart-01-start", "restart-01-start-inactive.xml"),
                      "02": ("restart-02-restart-daemon", "restart-01-start-inactive.xml"),
                      "05": ("restart-05-attach-user", "restart-05-attach-user-inactive.xml")}[step]
    return Snapshot(read(f"{stem}-live.xml"), read(inactive), qids(f"{stem}-qemu-ids.txt"))


def pool() -> Snapshot:
    return Snapshot(read("pool-at-start-live.xml"), read("pool-at-start-inactive.xml"), qids("pool-at-start-qemu-ids.txt"))


def ua() -> Snapshot:
    return Snapshot(read("user-alias-04-attach-live.xml"), read("user-alias-04-attach-inactive.xml"),
                    qids("user-alias-04-attach-qemu-ids.txt"))


def usb(step: str, removed: list[str] | None = None) -> Snapshot:
    stem = {"01": "usb-net-01-start", "02": "usb-net-02-detach"}[step]
    return Snapshot(read(f"{stem}-live.xml"), read("usb-net-01-start-inactive.xml"), qids(f"{stem}-qemu-ids.txt"),
                    list(removed or []))


def seed_ctx(**kw) -> Context:
    return Context(keys=dict(SEED_KEYS), **kw)


def restart_ctx(**kw) -> Context:
    return Context(keys=dict(RESTART_KEYS), hostdev_networks={RESTART_POOL}, **kw)


def ua_ctx(**kw) -> Context:
    return Context(keys=dict(UA_KEYS), user_aliases=dict(UA), **kw)


# ---- the data is what the tests claim it is ----------------------------------------------------------

def test_samples_show_the_pool_interface_as_hostdev_live_and_network_inactive():
    live = {e.find("mac").get("address"): e for e in ET.fromstring(read("pool-at-start-live.xml")).iter("interface")}
    inact = {e.find("mac").get("address"): e for e in ET.fromstring(read("pool-at-start-inactive.xml")).iter("interface")}
    assert live["52:54:00:63:d4:2d"].get("type") == "hostdev"
    assert live["52:54:00:63:d4:2d"].find("alias").get("name") == "hostdev0"
    assert inact["52:54:00:63:d4:2d"].get("type") == "network"
    assert inact["52:54:00:63:d4:2d"].find("source").get("network") == POOL_NET
    assert inact["52:54:00:63:d4:2d"].find("alias") is None


def test_engine_key_of_a_plain_hostdev_matches_the_live_xml():
    views = {d.key: d for d in oracle.device_views(read("restart-05-attach-user-live.xml"))}
    assert H0_KEY in views
    assert views[H0_KEY].tag == "hostdev" and views[H0_KEY].alias == "hostdev2"


def test_engine_key_of_an_interface_matches_the_live_xml():
    dev = Device("u1", "interface", {"id": "u1", "type": "user"})
    r = Resolved(macs={"u1": "52:54:00:16:61:61"})
    key = oracle.key_of(xmlbuild.device_element(dev, r))
    assert key == RESTART_KEYS["u1"]
    assert oracle.aliases_by_id(read("restart-05-attach-user-live.xml"), {"u1": key}) == {"u1": "net1"}


def test_hostdev_key_ignores_how_raw_xml_spells_the_pci_numbers():
    # raw XML pasted by a person may say bus='2'; libvirt reports bus='0x02' (used to never match)
    raw = "<hostdev mode='subsystem' type='pci'><source><address domain='0' bus='2' slot='0x0' function='0'/></source></hostdev>"
    assert oracle.key_of(ET.fromstring(raw)) == H0_KEY
    other = "<hostdev mode='subsystem' type='pci'><source><address domain='0' bus='3' slot='0' function='0'/></source></hostdev>"
    assert oracle.key_of(ET.fromstring(other)) != H0_KEY


def test_restart_really_dropped_the_usb_controller_alias():
    # the real libvirt quirk the next tests rely on: the model='none' USB controller loses its alias
    assert "<controller type='usb' index='0' model='none'>\n      <alias name='usb'/>" in read("restart-01-start-live.xml")
    assert "<controller type='usb' index='0' model='none'/>" in read("restart-02-restart-daemon-live.xml")


# ---- 0. the real snapshots pass ----------------------------------------------------------------------

REAL = {
    "seed start": lambda: (None, seed("01"), seed_ctx(step="start", expect_aliases={"hn0": "hostdev0"})),
    "seed attach bridge": lambda: (None, seed("05"), seed_ctx(step="attach", attached="b1",
                                                              expect_aliases={"b1": "net3"})),
    "seed attach hostdev after bridge": lambda: (
        seed("05"), seed("06"),
        seed_ctx(step="attach", attached="hn1", expect_aliases={"hn0": "hostdev0", "hn1": "hostdev1", "n1": "net0"})),
    "pool interface at start": lambda: (
        None, pool(), Context(step="start", keys=dict(POOL_KEYS), hostdev_networks={POOL_NET},
                              expect_aliases={"p0": "hostdev0"})),
    "attach user next to pool + hostdev": lambda: (
        None, restart("05"), restart_ctx(step="attach", attached="u1", expect_aliases={"u1": "net1"})),
    "pool + hostdev + nat at start": lambda: (None, restart("01"), restart_ctx(step="start",
                                                                               expect_aliases=RESTART_ALIASES)),
    "restart-daemon": lambda: (restart("01"), restart("02"), restart_ctx(step="restart-daemon",
                                                                         expect_aliases=RESTART_ALIASES)),
    "user aliases": lambda: (None, ua(), ua_ctx(step="attach", attached="u1",
                                                expect_aliases={"hn0": "ua-sriov-a", "hn1": "hostdev0",
                                                                "p1": "ua-pool-b", "u1": "ua-user-c"})),
    "usb-net start": lambda: (None, usb("01"), Context(step="start", keys=dict(USB_KEYS),
                                                       expect_aliases={"hn0": "hostdev0", "u0": "net0", "u1": "net1"})),
    "usb-net detach": lambda: (usb("01"), usb("02", ["net0"]), Context(step="detach", keys=dict(USB_KEYS),
                                                                       detached="u0")),
}


@pytest.mark.parametrize("case", sorted(REAL))
def test_real_snapshots_pass(case):
    before, after, ctx = REAL[case]()
    assert oracle.check(before, after, ctx) == []


def test_real_snapshot_passes_every_stable_step_against_itself():
    for step in sorted(oracle.STABLE_STEPS):
        assert oracle.check(restart("05"), restart("05"), restart_ctx(step=step)) == [], step


def test_never_aliased_devices_are_not_devices_to_the_oracle():
    live = read("seed-01-start-live.xml")
    root = ET.fromstring(live)
    tags = [e.tag for e in root.find("devices")]
    # the real XML holds every kind libvirt leaves without an alias ...
    assert {"emulator", "audio", "memballoon", "console"} <= set(tags)
    assert root.find("devices/audio/alias") is None and root.find("devices/memballoon/alias") is None
    assert root.find("devices/emulator/alias") is None
    # ... and none of them (nor the console mirroring serial0, nor the model='none' USB controller) is a view
    views = oracle.device_views(live)
    seen = {d.tag for d in views}
    assert not {"emulator", "audio", "memballoon", "console"} & seen
    assert not [d for d in views if d.tag == "controller" and d.elem.get("type") == "usb"]
    assert [d.alias for d in views if d.tag == "serial"] == ["serial0"]
    # graphics has no alias either
    with_gfx = add_device(live, "<graphics type='vnc' port='-1' autoport='yes'/>")
    assert oracle.check(None, Snapshot(with_gfx, None, qids("seed-01-start-qemu-ids.txt")), seed_ctx()) == []


@pytest.mark.parametrize("snippet", [
    "<watchdog model='i6300esb' action='reset'/>",
    "<console type='pty'><target type='virtio' port='1'/></console>",     # a real console, not serial0's mirror
    "<controller type='usb' index='1' model='qemu-xhci'/>",
    "<memballoon model='virtio'/>",
    "<input type='tablet' bus='usb'/>",
])
def test_alias_present_fires_for_a_real_device_without_alias(snippet):
    live = add_device(read("seed-01-start-live.xml"), snippet)
    vs = oracle.check(None, Snapshot(live, None, qids("seed-01-start-qemu-ids.txt")), seed_ctx())
    assert checks(vs) == ["alias-present"]
    assert vs[0].actual == "none"


def test_alias_present_fires_for_an_interface_that_lost_its_alias():
    s = seed("06")
    s.live_xml = sub1(s.live_xml, "<alias name='net2'/>", "")
    s.qemu_ids.discard("net2")
    vs = oracle.check(None, s, seed_ctx())
    assert checks(vs) == ["alias-family", "alias-present"]   # None is no netN either
    assert any(v.check == "alias-present" and v.expected.startswith("e1 (<interface>)") for v in vs)


# ---- (a) alias-family ------------------------------------------------------------------------------------

def test_pool_interface_renamed_hostdev1_to_net5_is_alias_family():
    s = restart("05")
    s.live_xml = sub1(s.live_xml, "<alias name='hostdev1'/>", "<alias name='net5'/>")
    s.qemu_ids = (s.qemu_ids - {"hostdev1"}) | {"net5"}      # QEMU agrees: only the rule is broken
    vs = oracle.check(restart("05"), s, restart_ctx(step="attach", may_change={"p0"}))
    assert checks(vs) == ["alias-family"]
    assert vs[0].expected == "p0 (<interface>) in live XML named by the rules"
    assert vs[0].actual == "hostdev-backed interface must be named hostdevN, got 'net5'"


def test_pool_interface_named_net_at_start_mutant_b_shape():
    # mutant B: libvirt named the pool interface by the netN rule; QEMU got the same wrong id
    s = pool()
    s.live_xml = sub1(s.live_xml, "<alias name='hostdev0'/>", "<alias name='net0'/>")
    s.qemu_ids = (s.qemu_ids - {"hostdev0"}) | {"net0"}
    ctx = Context(step="start", keys=dict(POOL_KEYS), hostdev_networks={POOL_NET})
    assert checks(oracle.check(None, s, ctx)) == ["alias-family"]


def test_pool_interface_still_typed_network_in_live_xml_needs_the_pool_name():
    # older libvirt shows the pool interface as type='network' in the live XML too
    s = pool()
    s.live_xml = sub1(s.live_xml, "<interface type='hostdev' managed='yes'>", "<interface type='network'>")
    s.live_xml = sub1(s.live_xml, "<driver name='vfio'/>", f"<source network='{POOL_NET}'/>")
    s.live_xml = sub1(s.live_xml, "<alias name='hostdev0'/>", "<alias name='net0'/>")
    s.qemu_ids = (s.qemu_ids - {"hostdev0"}) | {"net0"}
    with_pool = Context(step="start", keys=dict(POOL_KEYS), hostdev_networks={POOL_NET})
    assert checks(oracle.check(None, s, with_pool)) == ["alias-family"]
    # without knowing the network is a hostdev pool, net0 is right: the context matters
    assert oracle.check(None, s, Context(step="start", keys=dict(POOL_KEYS))) == []


def test_nat_interface_named_hostdev_is_alias_family():
    s = seed("06")
    s.live_xml = sub1(s.live_xml, "<alias name='net0'/>", "<alias name='hostdev5'/>")
    s.qemu_ids = (s.qemu_ids - {"net0"}) | {"hostdev5"}
    vs = oracle.check(None, s, seed_ctx())
    assert checks(vs) == ["alias-family"]
    assert vs[0].expected.startswith("n1 (<interface>)")
    assert "type='network' must be named netN" in vs[0].actual


def test_plain_hostdev_named_net_is_alias_family():
    s = restart("05")
    s.live_xml = sub1(s.live_xml, "<alias name='hostdev2'/>", "<alias name='net9'/>")
    s.qemu_ids = (s.qemu_ids - {"hostdev2"}) | {"net9"}
    vs = oracle.check(None, s, restart_ctx())
    assert checks(vs) == ["alias-family"]
    assert vs[0].expected.startswith("h0 (<hostdev>)")


def test_alias_family_is_checked_in_the_inactive_xml_too():
    # a netN alias persisted into the config of a pool interface
    s = pool()
    s.inactive_xml = sub1(s.inactive_xml, f"<source network='{POOL_NET}'/>",
                          f"<source network='{POOL_NET}'/><alias name='net0'/>")
    vs = oracle.check(None, s, Context(keys=dict(POOL_KEYS), hostdev_networks={POOL_NET}))
    assert checks(vs) == ["alias-family"]
    assert "inactive XML" in vs[0].expected


# ---- (b) alias-unique --------------------------------------------------------------------------------------

def test_two_devices_with_the_same_alias_is_alias_unique():
    s = seed("06")
    s.live_xml = sub1(s.live_xml, "<alias name='net1'/>", "<alias name='net0'/>")   # u1 takes n1's alias
    s.qemu_ids.discard("net1")
    vs = oracle.check(None, s, seed_ctx())
    assert checks(vs) == ["alias-unique"]
    assert vs[0].expected == "alias 'net0' used once"
    assert vs[0].actual == "n1 (<interface>), u1 (<interface>)"


def test_hostdev_interface_and_plain_hostdev_share_one_namespace():
    s = restart("05")
    s.live_xml = sub1(s.live_xml, "<alias name='hostdev2'/>", "<alias name='hostdev0'/>")
    s.qemu_ids.discard("hostdev2")
    vs = oracle.check(None, s, restart_ctx())
    assert checks(vs) == ["alias-unique"]
    assert "hn0 (<interface>)" in vs[0].actual and "h0 (<hostdev>)" in vs[0].actual


# ---- (c) alias-stable -----------------------------------------------------------------------------------------

def _seed_n1_renamed() -> Snapshot:
    s = seed("06")
    s.live_xml = sub1(s.live_xml, "<alias name='net0'/>", "<alias name='net7'/>")
    s.qemu_ids = (s.qemu_ids - {"net0"}) | {"net7"}
    return s


def test_alias_changed_across_a_step_is_alias_stable():
    vs = oracle.check(seed("05"), _seed_n1_renamed(), seed_ctx(step="attach", attached="hn1"))
    assert checks(vs) == ["alias-stable"]
    assert vs[0].expected == "n1 (<interface>) to keep alias 'net0' across attach"
    assert vs[0].actual == "'net7'"


def test_alias_change_allowed_by_may_change():
    assert oracle.check(seed("05"), _seed_n1_renamed(), seed_ctx(step="attach", attached="hn1",
                                                                 may_change={"n1"})) == []


def test_may_change_of_another_device_does_not_cover_it():
    vs = oracle.check(seed("05"), _seed_n1_renamed(), seed_ctx(step="attach", attached="hn1",
                                                               may_change={"u1", "hn1"}))
    assert checks(vs) == ["alias-stable"]


def test_alias_stable_needs_a_running_domain_on_both_sides():
    after = _seed_n1_renamed()
    assert oracle.check(Snapshot(None, read("seed-01-start-inactive.xml")), after, seed_ctx(step="start")) == []
    assert oracle.check(None, after, seed_ctx(step="start")) == []


# ---- (d) qemu-ids -------------------------------------------------------------------------------------------------

def test_qemu_missing_an_alias():
    s = seed("06")
    s.qemu_ids.discard("hostdev1")
    vs = oracle.check(None, s, seed_ctx())
    assert checks(vs) == ["qemu-ids"]
    assert vs[0].expected == "QEMU device ids for ['hostdev1']"


def test_qemu_holding_an_extra_net3():
    s = seed("01")
    s.qemu_ids.add("net3")
    vs = oracle.check(None, s, seed_ctx())
    assert checks(vs) == ["qemu-ids"]
    assert vs[0].actual == "QEMU still has ['net3']"


def test_qemu_missing_and_extra_are_two_violations():
    s = seed("06")
    s.qemu_ids = (s.qemu_ids - {"net2"}) | {"net4", "hostdev9"}
    vs = oracle.check(None, s, seed_ctx())
    assert checks(vs) == ["qemu-ids", "qemu-ids"]
    assert "['net2']" in vs[0].expected and vs[1].actual == "QEMU still has ['hostdev9', 'net4']"


def test_qemu_ids_of_other_devices_do_not_count():
    s = seed("01")
    s.qemu_ids |= {"pci.9", "usb", "input0", "watchdog0", "hostnet7"}
    assert oracle.check(None, s, seed_ctx()) == []


def test_user_alias_of_a_non_nic_device_is_no_stale_qemu_nic():
    # a raw domain XML may give a disk a user alias; QEMU lists it among the peripherals (used to be
    # reported as a NIC/hostdev QEMU holds and libvirt forgot)
    s = seed("01")
    s.live_xml = add_device(s.live_xml, "<disk type='file' device='disk'><target dev='vda' bus='virtio'/>"
                                        "<alias name='ua-disk0'/></disk>")
    s.qemu_ids.add("ua-disk0")
    assert oracle.check(None, s, seed_ctx()) == []
    # ... but a stale user-aliased NIC nobody lists is still caught
    s.qemu_ids.add("ua-gone")
    assert checks(oracle.check(None, s, seed_ctx())) == ["qemu-ids"]


def test_qemu_ids_not_collected_skips_the_check():
    s = seed("06")
    s.qemu_ids = None
    assert oracle.check(None, s, seed_ctx()) == []


# ---- (e) attach ----------------------------------------------------------------------------------------------------

def test_attach_succeeded_but_device_absent():
    s = seed("06")
    s.live_xml = drop_iface(s.live_xml, "52:54:00:a2:d0:0f")
    s.qemu_ids.discard("hostdev1")
    vs = oracle.check(seed("05"), s, seed_ctx(step="attach", attached="hn1"))
    assert checks(vs) == ["attach"]
    assert vs[0].expected == "hn1 in the live XML after a successful attach" and vs[0].actual == "absent"


def test_attach_in_live_xml_but_not_in_qemu():
    s = seed("06")
    s.qemu_ids.discard("hostdev1")
    vs = oracle.check(seed("05"), s, seed_ctx(step="attach", attached="hn1"))
    assert checks(vs) == ["attach", "qemu-ids"]
    att = next(v for v in vs if v.check == "attach")
    assert att.expected == "hn1 (hostdev1) in QEMU after a successful attach"


@pytest.mark.parametrize("flags", ["config", "both"])
def test_attach_config_must_reach_the_inactive_xml(flags):
    # u1 was attached live only: its MAC is not in the inactive XML
    vs = oracle.check(None, restart("05"), restart_ctx(step="attach", attached="u1", attach_flags=flags))
    assert checks(vs) == ["attach"]
    assert vs[0].expected == f"u1 in the inactive XML after attach --{flags}"
    # n0 is in the config: fine
    assert oracle.check(None, restart("05"), restart_ctx(step="attach", attached="n0", attach_flags=flags)) == []


def test_attach_current_on_a_stopped_domain_checks_the_inactive_xml():
    stopped = Snapshot(None, read("restart-05-attach-user-inactive.xml"))
    assert checks(oracle.check(None, stopped, restart_ctx(step="attach", attached="u1",
                                                          attach_flags="current"))) == ["attach"]
    assert oracle.check(None, stopped, restart_ctx(step="attach", attached="n0", attach_flags="current")) == []


def test_attach_of_an_id_without_key_is_absent():
    vs = oracle.check(None, seed("06"), seed_ctx(step="attach", attached="nobody"))
    assert checks(vs) == ["attach"]


# ---- (f) detach -------------------------------------------------------------------------------------------------------

def usb_ctx(**kw) -> Context:
    return Context(step="detach", keys=dict(USB_KEYS), detached="u0", **kw)


def test_detach_with_event_and_device_gone_passes():
    assert oracle.check(usb("01"), usb("02", ["net0"]), usb_ctx()) == []


def test_detach_without_removed_event():
    vs = oracle.check(usb("01"), usb("02"), usb_ctx())
    assert checks(vs) == ["detach"]
    assert vs[0].expected == "device-removed event for u0 (net0)" and vs[0].actual == "no event"


def test_detach_event_of_another_device_does_not_count():
    vs = oracle.check(usb("01"), usb("02", ["net1"]), usb_ctx())
    assert checks(vs) == ["detach"]


def test_detach_without_event_and_still_present():
    vs = oracle.check(usb("01"), usb("01"), usb_ctx())
    assert checks(vs) == ["detach"]
    assert vs[0].actual == "no event and the device is still in the live XML"


def test_detach_event_but_device_still_in_live_xml():
    vs = oracle.check(usb("01"), usb("01", ["net0"]), usb_ctx())
    assert checks(vs) == ["detach"]
    assert vs[0].expected == "u0 gone from the live XML after its removed event"


def test_detach_expect_removed_false_device_stays_passes():
    assert oracle.check(usb("01"), usb("01"), usb_ctx(expect_removed=False)) == []


@pytest.mark.parametrize("removed", [["net0"], []])
def test_detach_expect_removed_false_but_it_was_removed(removed):
    vs = oracle.check(usb("01"), usb("02", removed), usb_ctx(expect_removed=False))
    assert checks(vs) == ["detach"]
    assert vs[0].actual == "it was removed"


def test_detach_expect_removed_false_but_the_event_came():
    # the guest acknowledged an unplug that was expected to stay pending (device not yet gone)
    vs = oracle.check(usb("01"), usb("01", ["net0"]), usb_ctx(expect_removed=False))
    assert checks(vs) == ["detach"]
    assert vs[0].expected == "u0 to stay (no guest to acknowledge the unplug)"


def test_detach_config_must_leave_the_inactive_xml():
    # a config detach of u0 that left it in the persistent definition
    vs = oracle.check(usb("01"), usb("01"), usb_ctx(detach_flags="config"))
    assert checks(vs) == ["detach"]
    assert vs[0].expected == "u0 gone from the inactive XML"
    gone = usb("01")
    gone.inactive_xml = drop_iface(gone.inactive_xml, "52:54:00:c9:db:e9")
    assert oracle.check(usb("01"), gone, usb_ctx(detach_flags="config")) == []


# ---- (g) expect ---------------------------------------------------------------------------------------------------------

def test_expect_aliases_mismatch():
    vs = oracle.check(None, seed("06"), seed_ctx(expect_aliases={"hn0": "hostdev0", "hn1": "hostdev2"}))
    assert checks(vs) == ["expect"]
    assert (vs[0].expected, vs[0].actual) == ("hn1 -> hostdev2", "hn1 -> hostdev1")


def test_expect_alias_of_a_device_not_there():
    vs = oracle.check(None, seed("01"), seed_ctx(expect_aliases={"n1": "net0"}))
    assert [(v.check, v.actual) for v in vs] == [("expect", "n1 -> None")]


def test_expect_on_a_stopped_domain_reads_the_inactive_xml():
    stopped = Snapshot(None, read("user-alias-04-attach-inactive.xml"))
    assert oracle.check(None, stopped, ua_ctx(expect_aliases={"hn0": "ua-sriov-a"})) == []
    assert checks(oracle.check(None, stopped, ua_ctx(expect_aliases={"hn0": "hostdev0"}))) == ["expect"]


# ---- (h) user aliases ---------------------------------------------------------------------------------------------------

def test_user_alias_not_kept_live():
    s = ua()
    s.live_xml = sub1(s.live_xml, "<alias name='ua-pool-b'/>", "<alias name='hostdev1'/>")
    s.qemu_ids = (s.qemu_ids - {"ua-pool-b"}) | {"hostdev1"}
    vs = oracle.check(None, s, ua_ctx())
    assert checks(vs) == ["alias-family"]
    assert vs[0].expected == "p1 (<interface>) in live XML named by the rules"
    assert vs[0].actual == "user alias 'ua-pool-b' not kept (got 'hostdev1')"


def test_user_alias_not_kept_in_the_inactive_xml():
    # the persistent definition lost the user alias (used to be skipped: "inactive XML has no aliases")
    s = ua()
    s.inactive_xml = sub1(s.inactive_xml, "<alias name='ua-sriov-a'/>", "")
    vs = oracle.check(None, s, ua_ctx())
    assert checks(vs) == ["alias-family"]
    assert vs[0].expected == "hn0 (<interface>) in inactive XML named by the rules"
    assert vs[0].actual == "user alias 'ua-sriov-a' not kept (got None)"


def test_user_alias_changed_is_also_an_alias_change():
    s = ua()
    s.live_xml = sub1(s.live_xml, "<alias name='ua-user-c'/>", "<alias name='ua-user-x'/>")
    s.qemu_ids = (s.qemu_ids - {"ua-user-c"}) | {"ua-user-x"}
    vs = oracle.check(ua(), s, ua_ctx(step="check"))
    assert checks(vs) == ["alias-family", "alias-stable"]


def test_undeclared_user_alias_from_raw_xml_is_not_a_family_breach():
    # same snapshot, but the harness only knows the spec-declared aliases: raw XML ones are unknown
    assert oracle.check(None, ua(), Context(keys=dict(UA_KEYS))) == []


# ---- (i) STABLE_STEPS: nothing may vanish --------------------------------------------------------------------------

def _restart_without_p0() -> Snapshot:
    s = restart("02")
    s.live_xml = drop_iface(s.live_xml, "52:54:00:e3:2b:1d")
    s.qemu_ids.discard("hostdev1")
    return s


@pytest.mark.parametrize("step", sorted(oracle.STABLE_STEPS))
def test_device_vanishing_across_a_stable_step(step):
    vs = oracle.check(restart("01"), _restart_without_p0(), restart_ctx(step=step))
    assert checks(vs) == ["alias-stable"]
    assert vs[0].expected == f"p0 (<interface>) still present after {step}" and vs[0].actual == "gone"


@pytest.mark.parametrize("step", ["detach", "destroy", "attach", "update"])
def test_device_may_vanish_in_other_steps(step):
    assert oracle.check(restart("01"), _restart_without_p0(), restart_ctx(step=step)) == []


def test_restart_renaming_a_device_is_alias_stable():
    s = restart("02")
    s.live_xml = sub1(s.live_xml, "<alias name='hostdev1'/>", "<alias name='hostdev4'/>")
    s.qemu_ids = (s.qemu_ids - {"hostdev1"}) | {"hostdev4"}
    vs = oracle.check(restart("01"), s, restart_ctx(step="restart-daemon"))
    assert checks(vs) == ["alias-stable"]
    assert vs[0].expected == "p0 (<interface>) to keep alias 'hostdev1' across restart-daemon"


# ---- odds and ends ----------------------------------------------------------------------------------------------------------

def test_violation_str():
    v = oracle.Violation("qemu-ids", "X", "Y")
    assert str(v) == "[qemu-ids] expected X; got Y"


def test_device_views_of_nothing():
    assert oracle.device_views(None) == [] and oracle.device_views("") == []
    assert oracle.device_views("<domain><name>x</name></domain>") == []
    assert oracle.check(None, Snapshot(), Context()) == []


def test_aliases_by_id_on_real_xml():
    got = oracle.aliases_by_id(read("seed-06-attach-hostdev-live.xml"), dict(SEED_KEYS, ghost=mac("52:54:00:00:00:00")))
    assert got == {"hn0": "hostdev0", "n1": "net0", "u1": "net1", "e1": "net2", "b1": "net3", "hn1": "hostdev1"}


# ---- domain-running: QEMU exiting under a step ---------------------------------------------------------
def _stopped(state: str | None) -> Snapshot:
    return Snapshot(None, read("seed-01-start-inactive.xml"), None, state=state)


def test_qemu_exiting_during_a_detach_is_domain_running_with_the_reason():
    vs = oracle.check(seed("05"), _stopped("shut off (crashed)"), seed_ctx(step="detach"))
    assert checks(vs) == ["domain-running"]
    assert vs[0].expected == "the domain to keep running across detach"
    assert "shut off (crashed)" in vs[0].actual and "qemu.log" in vs[0].actual


@pytest.mark.parametrize("step", sorted(oracle.STABLE_STEPS | {"attach", "update", "settle", "network-destroy"}))
def test_every_step_but_destroy_must_leave_the_domain_running(step):
    assert "domain-running" in checks(oracle.check(seed("05"), _stopped(None), seed_ctx(step=step)))


def test_destroy_may_stop_the_domain_and_a_stopped_domain_may_stay_stopped():
    assert oracle.check(seed("05"), _stopped("shut off (destroyed)"), seed_ctx(step="destroy")) == []
    assert oracle.check(_stopped(None), _stopped(None), seed_ctx(step="define")) == []


# ---- 2b. nothing lost from interface/hostdev XML across a restart or an upgrade ------------------------

def test_xml_kept_passes_the_real_restart_pair_and_fires_on_a_lost_attribute():
    before, after = restart("01"), restart("02")
    assert oracle.xml_kept(before, after, restart_ctx(step="restart-daemon")) == []
    # the new daemon forgets the pool interface's <source network=...> in the inactive XML
    lost = Snapshot(after.live_xml, sub1(after.inactive_xml, f"<source network='{RESTART_POOL}'/>", "<source/>"),
                    after.qemu_ids)
    vs = oracle.check(before, lost, restart_ctx(step="upgrade-libvirt"))
    assert checks(vs) == ["xml-kept"]
    assert "inactive XML" in vs[0].expected and f"interface/source@network='{RESTART_POOL}'" in vs[0].actual


def test_xml_kept_allows_additions_and_only_judges_daemon_steps():
    before, after = restart("01"), restart("02")
    grown = Snapshot(sub1(after.live_xml, "bridge='virbr1'/>", "bridge='virbr1' extra='new in this version'/>"),
                     after.inactive_xml, after.qemu_ids)
    assert oracle.xml_kept(before, grown, restart_ctx(step="upgrade-libvirt")) == []
    changed = Snapshot(sub1(after.live_xml, "bridge='virbr1'/>", "bridge='virbr9'/>"), after.inactive_xml,
                       after.qemu_ids)
    vs = oracle.xml_kept(before, changed, restart_ctx(step="upgrade-libvirt"))
    assert checks(vs) == ["xml-kept"] and "live XML" in vs[0].expected and "bridge='virbr1'" in vs[0].actual
    assert oracle.xml_kept(before, changed, restart_ctx(step="attach")) == []


def _without_watchdog(xml: str) -> str:
    root = ET.fromstring(xml)
    devs = root.find("devices")
    for w in devs.findall("watchdog"):
        devs.remove(w)
    return ET.tostring(root, encoding="unicode")


def test_a_device_a_newer_daemon_adds_without_alias_is_named_not_failed():
    # libvirt 11.3.0 taking over a q35 domain 9.0.0 started lists the chipset's iTCO watchdog, with no alias
    old, new = restart("01"), restart("02")
    before = Snapshot(_without_watchdog(old.live_xml), old.inactive_xml, old.qemu_ids - {"watchdog0"})
    grown = Snapshot(add_device(_without_watchdog(new.live_xml), "<watchdog model='itco' action='reset'/>"),
                     new.inactive_xml, new.qemu_ids - {"watchdog0"})
    added = oracle.implicit_devices(before, grown, "upgrade-libvirt")
    assert added == {"watchdog::itco:#1"}
    assert checks(oracle.check(before, grown, restart_ctx(step="upgrade-libvirt"))) == ["alias-present"]
    assert oracle.check(before, grown, restart_ctx(step="upgrade-libvirt", implicit=added)) == []
    # only daemon steps add such devices; anywhere else a device without an alias is invariant 1's finding
    assert oracle.implicit_devices(before, grown, "attach") == set()
