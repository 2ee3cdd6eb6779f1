"""The invariants checked after every step. Pure functions of (before, after, context): the oracle
never talks to libvirt, so it is unit-tested offline and reused by mutants and bisect.

Snapshots are what the engine collected: live XML, inactive XML, QEMU's peripheral ids, and the
device-removed events seen during the step.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field

from harness import aliases

#: Device elements libvirt never gives an alias.
NO_ALIAS = {"emulator", "audio", "graphics"}
STABLE_STEPS = {"restart-daemon", "upgrade-libvirt", "suspend-resume", "suspend", "resume", "save-restore",
                "managedsave-start", "check"}
#: The only step after which a running domain may be shut off.
STOP_STEPS = {"destroy", "managedsave"}
#: Steps that replace or restart the daemon: every interface/hostdev element and attribute that was in the
#: live or inactive XML before must still be there, with the same value (a new daemon may add, never lose).
XML_KEPT_STEPS = {"restart-daemon", "upgrade-libvirt"}


@dataclass
class Snapshot:
    live_xml: str | None = None          # None when the domain is not running
    inactive_xml: str | None = None      # None when the domain is not defined
    qemu_ids: set[str] | None = None     # QMP qom-list /machine/peripheral
    removed_events: list[str] = field(default_factory=list)   # aliases from device-removed events
    state: str | None = None             # libvirt's state and reason when not running, e.g. "shut off (crashed)"


@dataclass
class DeviceView:
    key: str                 # identity across snapshots (MAC for interfaces, source PCI for hostdevs)
    tag: str
    alias: str | None
    elem: ET.Element


@dataclass
class Context:
    step: str = "check"                                   # the step's action
    hostdev_networks: set[str] = field(default_factory=set)   # real names of forward mode='hostdev' networks
    keys: dict[str, str] = field(default_factory=dict)    # scenario device id -> identity key
    user_aliases: dict[str, str] = field(default_factory=dict)   # scenario device id -> ua-... as written
    expect_aliases: dict[str, str] = field(default_factory=dict)
    may_change: set[str] = field(default_factory=set)     # ids whose alias may change in this step
    attached: str | None = None                           # id attached by this step (call succeeded)
    attach_flags: str = "live"
    detached: str | None = None                           # id detached by this step (call succeeded)
    detach_flags: str = "live"
    expect_removed: bool = True
    implicit: set[str] = field(default_factory=set)       # keys of devices a daemon step added (see implicit_devices)


@dataclass
class Violation:
    check: str          # domain-running, alias-present, alias-unique, alias-stable, xml-kept, alias-family, qemu-ids,
    #                     attach, detach, expect
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"[{self.check}] expected {self.expected}; got {self.actual}"


def _pci_num(text: str) -> str:
    """One PCI address field as libvirt prints it: raw XML may say bus='2' or bus='0x2' where the
    live XML says bus='0x02' (libvirt reads these numbers like strtoul with base 0)."""
    t = text.strip()
    try:
        if t[:2].lower() == "0x":
            n = int(t[2:], 16)
        elif len(t) > 1 and t.startswith("0"):
            n = int(t[1:], 8)
        else:
            n = int(t, 10)
    except ValueError:
        return text
    return f"0x{n:x}"


def _key(el: ET.Element, counters: Counter) -> str:
    mac = el.find("mac")
    if el.tag == "interface" and mac is not None:
        return "mac:" + mac.get("address", "").lower()
    addr = el.find("source/address")
    if el.tag == "hostdev" and addr is not None:
        return "pci:" + ":".join(_pci_num(addr.get(k, "")) for k in ("domain", "bus", "slot", "function"))
    base = f"{el.tag}:{el.get('type', '')}:{el.get('model', '')}:{el.get('index', '')}"
    counters[base] += 1
    return f"{base}#{counters[base]}"


def device_views(xml: str | None) -> list[DeviceView]:
    if not xml:
        return []
    devs = ET.fromstring(xml).find("devices")
    if devs is None:
        return []
    counters: Counter = Counter()
    out = []
    for el in devs:
        if el.tag in NO_ALIAS or el.get("model") == "none":
            continue   # model='none' (memballoon, usb controller) is no device at all
        t = el.find("target")
        if el.tag == "console" and t is not None and t.get("type") == "serial":
            continue   # the console that mirrors serial0 is the same QEMU device, same alias
        a = el.find("alias")
        out.append(DeviceView(_key(el, counters), el.tag, a.get("name") if a is not None else None, el))
    return out


def key_of(elem: ET.Element) -> str:
    """Identity key for one device element (as built by the engine)."""
    return _key(elem, Counter())


def aliases_by_id(xml: str | None, keys: dict[str, str]) -> dict[str, str | None]:
    by_key = {d.key: d.alias for d in device_views(xml)}
    return {i: by_key.get(k) for i, k in keys.items() if k in by_key}


def check(before: Snapshot | None, after: Snapshot, ctx: Context) -> list[Violation]:
    """Every invariant of a step, in the README's order (a failure names the first violation)."""
    return [*domain_running(before, after, ctx), *unique_aliases(before, after, ctx),
            *stable_aliases(before, after, ctx), *xml_kept(before, after, ctx), *alias_family(before, after, ctx), *qemu_ids(before, after, ctx),
            *attach_detach_effect(before, after, ctx), *expected_aliases(before, after, ctx)]


def _ids_by_key(ctx: Context) -> dict[str, str]:
    return {k: i for i, k in ctx.keys.items()}


def _namer(ctx: Context):
    """How a violation names a device: its scenario id where it has one, and its element."""
    ids_by_key = _ids_by_key(ctx)
    return lambda d: f"{ids_by_key.get(d.key, d.key)} (<{d.tag}>)"


def domain_running(before: Snapshot | None, after: Snapshot, ctx: Context) -> list[Violation]:
    """0. a running domain stays running (QEMU exiting under a hot-plug is the worst regression of all)"""
    if before is not None and before.live_xml and not after.live_xml and ctx.step not in STOP_STEPS:
        return [Violation("domain-running", f"the domain to keep running across {ctx.step}",
                          f"it is {after.state or 'not running'}; QEMU's last words are in qemu.log")]
    return []


def implicit_devices(before: Snapshot | None, after: Snapshot, step: str) -> set[str]:
    """Keys of devices a restarted or upgraded daemon added to a running domain's live XML without an alias.

    Why they are not invariant 1's: aliases (QEMU's device ids) are given when QEMU starts a device; a device a
    newer daemon's defaults add to the definition of a domain already running was never started as such. Seen:
    libvirt 11.3.0 taking over a q35 domain that 9.0.0 started shows `<watchdog model='itco' action='reset'/>`
    (the chipset's own watchdog, which 9.0.0 did not list) with no alias. The step record names them; they stay
    exempt for the rest of the scenario."""
    if before is None or step not in XML_KEPT_STEPS or not before.live_xml or not after.live_xml:
        return set()
    had = {d.key for d in device_views(before.live_xml)}
    return {d.key for d in device_views(after.live_xml) if d.alias is None and d.key not in had}


def unique_aliases(before: Snapshot | None, after: Snapshot, ctx: Context) -> list[Violation]:
    """1. every device has an alias, no two equal"""
    v: list[Violation] = []
    if not after.live_xml:
        return v
    live, name = device_views(after.live_xml), _namer(ctx)
    for d in live:
        if d.key in ctx.implicit and d.alias is None:
            continue
        if not d.alias:
            v.append(Violation("alias-present", f"{name(d)} to have an alias", "none"))
    dup = [a for a, n in Counter(d.alias for d in live if d.alias).items() if n > 1]
    for a in dup:
        v.append(Violation("alias-unique", f"alias {a!r} used once",
                           ", ".join(name(d) for d in live if d.alias == a)))
    return v


def stable_aliases(before: Snapshot | None, after: Snapshot, ctx: Context) -> list[Violation]:
    """2. aliases of devices present before and after are unchanged"""
    v: list[Violation] = []
    if before is None or not before.live_xml or not after.live_xml:
        return v
    live, name, ids_by_key = device_views(after.live_xml), _namer(ctx), _ids_by_key(ctx)
    prev = {d.key: d for d in device_views(before.live_xml)}
    for d in live:
        p = prev.get(d.key)
        if p is None or p.alias == d.alias:
            continue
        if ids_by_key.get(d.key) in ctx.may_change:
            continue
        v.append(Violation("alias-stable", f"{name(d)} to keep alias {p.alias!r} across {ctx.step}",
                           repr(d.alias)))
    if ctx.step in STABLE_STEPS:
        gone = set(prev) - {d.key for d in live}
        for k in sorted(gone):
            v.append(Violation("alias-stable", f"{name(prev[k])} still present after {ctx.step}", "gone"))
    return v


def _facts(el: ET.Element, path: str = "") -> set[tuple[str, str, str]]:
    """(element path, attribute or '#text', value) for an element and everything under it; repeated child
    tags are numbered so that two <address> children do not blur together."""
    here = f"{path}/{el.tag}" if path else el.tag
    out = {(here, k, v) for k, v in el.attrib.items()}
    if el.text and el.text.strip():
        out.add((here, "#text", el.text.strip()))
    seen: Counter = Counter()
    for child in el:
        seen[child.tag] += 1
        out |= _facts(child, f"{here}[{seen[child.tag]}]" if seen[child.tag] > 1 else here)
    return out


def xml_kept(before: Snapshot | None, after: Snapshot, ctx: Context) -> list[Violation]:
    """2b. across a daemon restart or a libvirt upgrade nothing is lost from an interface or hostdev in the live
    or inactive XML: each element, attribute and value that was there is there (added ones are fine; the alias
    itself is invariant 2's)"""
    v: list[Violation] = []
    if before is None or ctx.step not in XML_KEPT_STEPS:
        return v
    name = _namer(ctx)
    for which, old_xml, new_xml in (("live", before.live_xml, after.live_xml),
                                    ("inactive", before.inactive_xml, after.inactive_xml)):
        if not old_xml or not new_xml:
            continue
        now = {d.key: d for d in device_views(new_xml) if d.tag in ("interface", "hostdev")}
        for d in device_views(old_xml):
            if d.tag not in ("interface", "hostdev") or d.key not in now:
                continue   # a device that vanished is invariant 2's finding
            lost = sorted(f for f in _facts(d.elem) - _facts(now[d.key].elem) if f[0] != f"{d.tag}/alias")
            if lost:
                shown = ", ".join(f"{p}@{a}={val!r}" if a != "#text" else f"{p}={val!r}" for p, a, val in lost[:4])
                v.append(Violation("xml-kept", f"{name(d)} in the {which} XML unchanged across {ctx.step}",
                                   f"lost or changed: {shown}" + (f" (+{len(lost) - 4} more)" if len(lost) > 4 else "")))
    return v


def alias_family(before: Snapshot | None, after: Snapshot, ctx: Context) -> list[Violation]:
    """3. family rules: hostdevN for host-device-backed interfaces, netN otherwise, user aliases kept"""
    v: list[Violation] = []
    name = _namer(ctx)
    ua_by_key = {ctx.keys[i]: a for i, a in ctx.user_aliases.items() if i in ctx.keys}
    for xml_text, which in ((after.live_xml, "live"), (after.inactive_xml, "inactive")):
        for d in device_views(xml_text):
            if which == "inactive" and d.alias is None and d.key not in ua_by_key:
                continue   # inactive XML only keeps user aliases (so a declared one must be there)
            if d.tag == "interface":
                msg = aliases.check_interface(d.alias, d.elem, ctx.hostdev_networks, ua_by_key.get(d.key))
            elif d.tag == "hostdev":
                msg = aliases.check_hostdev(d.alias, ua_by_key.get(d.key))
            else:
                continue
            if msg:
                v.append(Violation("alias-family", f"{name(d)} in {which} XML named by the rules", msg))
    return v


def qemu_ids(before: Snapshot | None, after: Snapshot, ctx: Context) -> list[Violation]:
    """4. libvirt's aliases are QEMU's device ids, and QEMU holds nothing libvirt forgot"""
    v: list[Violation] = []
    if not after.live_xml or after.qemu_ids is None:
        return v
    live = device_views(after.live_xml)
    mine = {d.alias for d in live if d.tag in ("interface", "hostdev") and d.alias}
    known = {d.alias for d in live if d.alias}   # a ua- id may be a disk's or a controller's
    missing = sorted(mine - after.qemu_ids)
    extra = sorted(i for i in after.qemu_ids - known if aliases.is_qemu_device_id(i))
    if missing:
        v.append(Violation("qemu-ids", f"QEMU device ids for {missing}", "absent from qom-list /machine/peripheral"))
    if extra:
        v.append(Violation("qemu-ids", "no QEMU NIC/hostdev device unknown to libvirt",
                           f"QEMU still has {extra}"))
    return v


def attach_detach_effect(before: Snapshot | None, after: Snapshot, ctx: Context) -> list[Violation]:
    """5. attach left the device where asked; detach judged by the removed event"""
    v: list[Violation] = []
    live = device_views(after.live_xml)
    if ctx.attached:
        k = ctx.keys.get(ctx.attached)
        if ctx.attach_flags in ("live", "both", "current") and after.live_xml:
            d = next((d for d in live if d.key == k), None)
            if d is None:
                v.append(Violation("attach", f"{ctx.attached} in the live XML after a successful attach", "absent"))
            elif after.qemu_ids is not None and d.alias not in after.qemu_ids:
                v.append(Violation("attach", f"{ctx.attached} ({d.alias}) in QEMU after a successful attach",
                                   "absent from qom-list"))
        if ctx.attach_flags in ("config", "both") or (ctx.attach_flags == "current" and not after.live_xml):
            if k not in {d.key for d in device_views(after.inactive_xml)}:
                v.append(Violation("attach", f"{ctx.attached} in the inactive XML after attach --{ctx.attach_flags}",
                                   "absent"))
    if ctx.detached and ctx.detach_flags in ("live", "both", "current") and before and before.live_xml:
        k = ctx.keys.get(ctx.detached)
        old = next((d for d in device_views(before.live_xml) if d.key == k), None)
        still = any(d.key == k for d in live)
        got_event = old is not None and old.alias in after.removed_events
        if ctx.expect_removed:
            if not got_event:
                v.append(Violation("detach", f"device-removed event for {ctx.detached} ({old.alias if old else '?'})",
                                   "no event" + (" and the device is still in the live XML" if still else "")))
            elif still:
                v.append(Violation("detach", f"{ctx.detached} gone from the live XML after its removed event",
                                   "still present"))
        elif got_event or not still:
            v.append(Violation("detach", f"{ctx.detached} to stay (no guest to acknowledge the unplug)",
                               "it was removed"))
    if ctx.detached and ctx.detach_flags in ("config", "both"):
        k = ctx.keys.get(ctx.detached)
        if k in {d.key for d in device_views(after.inactive_xml)}:
            v.append(Violation("detach", f"{ctx.detached} gone from the inactive XML", "still present"))
    return v


def expected_aliases(before: Snapshot | None, after: Snapshot, ctx: Context) -> list[Violation]:
    """6. the step's explicit expectations: its aliases (its error text: `step_error`, judged first)"""
    v: list[Violation] = []
    if ctx.expect_aliases:
        got = aliases_by_id(after.live_xml or after.inactive_xml, ctx.keys)
        for i, want in ctx.expect_aliases.items():
            if got.get(i) != want:
                v.append(Violation("expect", f"{i} -> {want}", f"{i} -> {got.get(i)}"))
    return v


def step_error(want: str | None, got: str | None) -> Violation | None:
    """6. the step's `expect.error` against libvirt's error text (None: the step raised none). Judged before
    the other invariants: a step that failed, or did not fail, against its expectation is the verdict
    whatever the snapshot after it shows. `want` is a substring, or a regular expression after "re:"."""
    if want is not None:
        if got is None:
            return Violation("expect", f"the step to fail with {want!r}", "it succeeded")
        if not _matches(want, got):
            return Violation("expect", f"error matching {want!r}", repr(got))
    elif got is not None:
        return Violation("libvirt-error", "the step to succeed", got)
    return None


def _matches(want: str, got: str | None) -> bool:
    if got is None:
        return False
    if want.startswith("re:"):
        return re.search(want[3:], got) is not None
    return want in got
