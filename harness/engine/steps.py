"""One function per step kind. Adding a step kind is one function here and one schema entry.

Each function acts on the run's state (engine/run_state.py) and writes into it what it made or found
(the domain, networks, identity keys); it never judges: the runner snapshots afterwards and the oracle decides.
Waits use libvirt events (device-removed) or bounded polls of real state, never bare sleeps.
"""
from __future__ import annotations

import shlex
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import libvirt

from harness import oracle
from harness.engine import xmlbuild
from harness.engine.run_state import RunState
from harness.errors import HarnessError, InfrastructureError
from harness.libvirt_build import upgrade
from harness.progress import say

if TYPE_CHECKING:
    from harness.scenario.model import Step

FLAGS = {
    "live": libvirt.VIR_DOMAIN_AFFECT_LIVE,
    "config": libvirt.VIR_DOMAIN_AFFECT_CONFIG,
    "both": libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG,
    "current": libvirt.VIR_DOMAIN_AFFECT_CURRENT,
}
GUEST_BOOT_TIMEOUT = 480.0
NESTED_KVM_GRACE = 120.0
#: longest single SSH call wait_console makes, so a dead domain or connection is noticed between calls
CONSOLE_CHUNK = 10
DETACH_TIMEOUT = 30.0
DETACH_TIMEOUT_GUEST = 90.0


@dataclass
class StepContext:
    run: RunState
    step: "Step"
    removed: list[str] = field(default_factory=list)   # aliases from device-removed events in this step
    expect_removed: bool = True
    info: dict | None = None                           # extra facts for the step's record (upgrade-libvirt)

    @property
    def conn(self):
        return self.run.t.conn

    def dom(self) -> libvirt.virDomain:
        if self.run.dom is None:
            raise HarnessError(f"step '{self.step.describe()}' needs the domain, which is not defined",
                               hint="add a 'start' or 'define' step before it")
        return self.run.dom


def _define(ctx: StepContext) -> None:
    run = ctx.run
    run.dom = ctx.conn.call(ctx.conn.virconn.defineXML, run.domain_xml())


def do_define(ctx: StepContext) -> None:
    _define(ctx)


def do_start(ctx: StepContext) -> None:
    run = ctx.run
    if run.dom is None:
        _define(ctx)
    ctx.conn.call(run.dom.create, timeout=180)
    if not run.sc.domain.guest:
        return
    if run.virt_type == "kvm" and run.sc.domain.type == "auto" and not wait_console(ctx, "", NESTED_KVM_GRACE):
        # Nested KVM on an emulated CPU is fragile: a guest that prints nothing at all is stuck, not slow.
        say(f"{run.sc.name}: the tiny guest printed nothing under nested KVM in {NESTED_KVM_GRACE:.0f} s; "
            "falling back to domain type qemu (TCG)", warn=True)
        ctx.conn.call(run.dom.destroy, timeout=120)
        ctx.conn.call(run.dom.undefine)
        run.virt_type = "qemu"
        _define(ctx)
        ctx.conn.call(run.dom.create, timeout=180)
    if not wait_console(ctx, "harness-guest-ready", GUEST_BOOT_TIMEOUT):
        # The harness's own guest, not libvirt, failed: an infrastructure error, never a verdict.
        raise InfrastructureError(f"the tiny guest did not boot within {GUEST_BOOT_TIMEOUT:.0f} s (domain type {run.virt_type})",
                           hint=f"see qemu.log in the artefacts (console: {run.console_log})")


def wait_console(ctx: StepContext, marker: str, timeout: float) -> bool:
    """True once the guest's serial console holds `marker` (any output at all for ""): the tiny guest
    prints its marker once its kernel can handle unplug."""
    run = ctx.run
    deadline = time.monotonic() + timeout
    log = shlex.quote(run.console_log)
    cond = f"grep -q {shlex.quote(marker)} {log}" if marker else f"test -s {log}"
    while time.monotonic() < deadline:
        # The bed polls its own file (4 times a second, cheap next to the guest's TCG) for up to CONSOLE_CHUNK
        # seconds per SSH call: the marker is seen within ~0.25 s, not up to a 2 s sleep plus a round trip later.
        chunk = max(1, min(CONSOLE_CHUNK, int(deadline - time.monotonic())))
        p = run.t.ssh(f"timeout {chunk} sh -c {shlex.quote(f'until {cond}; do sleep 0.25; done')} && echo 1",
                      timeout=chunk + 30)
        if p.stdout.strip() == "1":
            return True
        # Waiting minutes on a console file says nothing about why it stays silent: stop as soon as
        # the connection or the domain is gone (a daemon restart, a rebooted bed, a QEMU crash).
        if ctx.conn.closed:
            raise HarnessError(f"the libvirt connection closed while the tiny guest was booting ({ctx.conn.closed})")
        if not ctx.conn.call(run.dom.isActive):
            raise HarnessError("the test domain stopped while its tiny guest was booting",
                               hint=f"see qemu.log in the artefacts (console: {run.console_log})")
    return False


def do_destroy(ctx: StepContext) -> None:
    """Destroy, then, when the domain held host devices, wait for udev as an operator's next command would:
    the VFs went back to igbvf as ethN and udev renames them next; a start meanwhile meets "Cannot get
    interface MAC on 'eth0': No such device" (seen with 11.3 once igbvf probed in 40 ms, bed/state.py)."""
    ctx.conn.call(ctx.dom().destroy, timeout=120)
    if ctx.run.r.addrs and ctx.run.t.bed is not None:
        _udev_settle(ctx)


def do_undefine(ctx: StepContext) -> None:
    dom = ctx.dom()
    active = ctx.conn.call(dom.isActive)
    ctx.conn.call(dom.undefineFlags, libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
    if not active:
        ctx.run.dom = None   # gone; a transient running domain stays reachable


def do_attach(ctx: StepContext) -> None:
    dev = ctx.step.arg
    xml = xmlbuild.device_xml(dev, ctx.run.r)
    ctx.run.keys[dev.id] = oracle.key_of(ET.fromstring(xml))
    ctx.conn.call(ctx.dom().attachDeviceFlags, xml, FLAGS[ctx.step.flags])


def _alias_of(ctx: StepContext, dev_id: str) -> str | None:
    b = ctx.run.before
    return oracle.aliases_by_id(b.live_xml, ctx.run.keys).get(dev_id)


def do_detach(ctx: StepContext) -> None:
    run = ctx.run
    dev = run.devs[ctx.step.arg]
    xml = xmlbuild.device_xml(dev, run.r)
    alias = _alias_of(ctx, dev.id)
    ctx.expect_removed = ctx.step.expect.get("removed", True)
    mark = ctx.conn.mark()
    ctx.conn.call(ctx.dom().detachDeviceFlags, xml, FLAGS[ctx.step.flags])
    if ctx.step.flags == "config" or alias is None:
        return
    if ctx.expect_removed:
        timeout = ctx.step.timeout or (DETACH_TIMEOUT_GUEST if run.sc.domain.guest else DETACH_TIMEOUT)
        kind = ctx.conn.wait_event(mark, run.dom_name, alias, timeout)
        if kind == "removal-failed":
            raise HarnessError(f"QEMU reported device-removal-failed for {alias}")
    ctx.removed = ctx.conn.events_since(mark, run.dom_name)


def do_wait_removed(ctx: StepContext) -> None:
    run = ctx.run
    alias = _alias_of(ctx, ctx.step.arg)
    timeout = ctx.step.timeout or DETACH_TIMEOUT_GUEST
    if alias is not None:
        ctx.conn.wait_event(0, run.dom_name, alias, timeout)
    ctx.removed = ctx.conn.events_since(0, run.dom_name)


def do_update(ctx: StepContext) -> None:
    run = ctx.run
    arg = ctx.step.arg
    el = xmlbuild.device_element(run.devs[arg["id"]], run.r)
    if "link" in arg:
        for old in el.findall("link"):
            el.remove(old)
        ET.SubElement(el, "link", state=arg["link"])
    ctx.conn.call(ctx.dom().updateDeviceFlags, ET.tostring(el, encoding="unicode"), FLAGS[ctx.step.flags])


def do_restart_daemon(ctx: StepContext) -> None:
    """Restart libvirtd in the bed, reconnect, and wait until it has reattached to the domain
    (a monitor command needs a domain job, which waits for the background reconnect)."""
    run = ctx.run
    p = run.t.ssh("systemctl restart libvirtd", timeout=180)
    if p.returncode != 0:
        raise HarnessError(f"systemctl restart libvirtd failed: {p.stderr.strip()}")
    ctx.conn.reconnect(timeout=120)
    run.dom = ctx.conn.call(ctx.conn.virconn.lookupByName, run.dom_name)
    if ctx.conn.call(run.dom.isActive):
        ctx.conn.qemu_ids(run.dom, timeout=120)


def do_upgrade_libvirt(ctx: StepContext) -> None:
    """Install another libvirt under the running domain (harness/libvirt_build/upgrade.py), reconnect, and
    prove it: the bed's build proof plus the version the reconnected daemon reports. The runner's cleanup
    puts the original back."""
    run = ctx.run
    if run.t.bed is None:
        raise HarnessError("upgrade-libvirt needs a bed (--bed), not a bare --libvirt-uri")
    run.upgraded = True
    info = upgrade.upgrade(run.t.bed, ctx.step.arg, owner=run.dom_name)
    ctx.conn.reconnect(timeout=120)
    info["daemon_version"] = ctx.conn.call(ctx.conn.virconn.getLibVersion)
    ctx.info = info
    want = info.get("version")
    if want and info["daemon_version"] != _version_number(want):
        raise HarnessError(f"after upgrade-libvirt the daemon reports {info['daemon_version']}, not {want}")
    if info.get("after") not in ("stock", None) and not info.get("verified"):
        raise HarnessError(f"libvirtd is not verified as build {info.get('after')}")
    if run.dom is not None:
        run.dom = ctx.conn.call(ctx.conn.virconn.lookupByName, run.dom_name)
        if ctx.conn.call(run.dom.isActive):
            ctx.conn.qemu_ids(run.dom, timeout=120)   # a monitor command waits for the reconnect to the domain


def _version_number(v: str) -> int:
    major, minor, micro = (int(x) for x in v.split(".")[:3])
    return major * 1_000_000 + minor * 1_000 + micro


def do_save_restore(ctx: StepContext) -> None:
    run = ctx.run
    path = f"/var/lib/libvirt/qemu/save/{run.dom_name}.save"
    try:
        ctx.conn.call(ctx.dom().save, path, timeout=300)
        ctx.conn.call(ctx.conn.virconn.restore, path, timeout=300)
    finally:
        run.t.ssh(f"rm -f {shlex.quote(path)}", timeout=30)
    run.dom = ctx.conn.call(ctx.conn.virconn.lookupByName, run.dom_name)


def do_managedsave_start(ctx: StepContext) -> None:
    ctx.conn.call(ctx.dom().managedSave, 0, timeout=300)
    ctx.conn.call(ctx.dom().create, timeout=300)


def do_managedsave(ctx: StepContext) -> None:
    """Managed save: the domain stops with its state in libvirt's image; a later `start` restores it (by the
    daemon running then: after an upgrade-libvirt, the new version restores what the old one saved)."""
    ctx.conn.call(ctx.dom().managedSave, 0, timeout=300)


def do_suspend(ctx: StepContext) -> None:
    ctx.conn.call(ctx.dom().suspend)


def do_resume(ctx: StepContext) -> None:
    ctx.conn.call(ctx.dom().resume)


def do_suspend_resume(ctx: StepContext) -> None:
    ctx.conn.call(ctx.dom().suspend)
    ctx.conn.call(ctx.dom().resume)


def define_network(run: RunState, sym: str) -> None:
    """The scenario's own network `sym` (also made by the runner before the steps, unless `create: false`)."""
    xml = xmlbuild.network_xml(run.r.networks[sym], run.sc.networks[sym], run.r, run.subnets.get(sym))
    run.networks[sym] = run.t.conn.call(run.t.conn.virconn.networkDefineXML, xml)


def start_network(run: RunState, sym: str) -> None:
    n = run.networks[sym]
    run.t.conn.call(n.create)
    br = ET.fromstring(run.t.conn.call(n.XMLDesc, 0)).find("bridge")
    if br is not None:
        run.r.bridges[sym] = br.get("name")


def do_network_define(ctx: StepContext) -> None:
    define_network(ctx.run, ctx.step.arg)


def do_network_start(ctx: StepContext) -> None:
    start_network(ctx.run, ctx.step.arg)


def _network(ctx: StepContext) -> libvirt.virNetwork:
    n = ctx.run.networks.get(ctx.step.arg)
    if n is None:
        raise HarnessError(f"network {ctx.step.arg!r} was never defined", hint="add a network-define step first")
    return n


def do_network_destroy(ctx: StepContext) -> None:
    ctx.conn.call(_network(ctx).destroy)


def do_network_undefine(ctx: StepContext) -> None:
    ctx.conn.call(_network(ctx).undefine)


def do_check(ctx: StepContext) -> None:
    """Nothing to do: the oracle and the step's expect run on a fresh snapshot."""


def do_settle(ctx: StepContext) -> None:
    """A VF handed back to its host driver appears as ethN and is then renamed by udev; libvirt reads the
    name in between ("Cannot get interface MAC on 'eth0'"). Wait for udev, as a host would."""
    _udev_settle(ctx)


def _udev_settle(ctx: StepContext) -> None:
    p = ctx.run.t.ssh("udevadm settle --timeout=60", timeout=90)
    if p.returncode != 0:
        raise HarnessError(f"udevadm settle failed: {p.stderr.strip()}")


ACTIONS: dict[str, Callable[[StepContext], None]] = {
    "start": do_start, "destroy": do_destroy, "define": do_define, "undefine": do_undefine,
    "attach": do_attach, "detach": do_detach, "update": do_update, "wait-removed": do_wait_removed,
    "restart-daemon": do_restart_daemon, "upgrade-libvirt": do_upgrade_libvirt, "save-restore": do_save_restore,
    "managedsave-start": do_managedsave_start, "suspend-resume": do_suspend_resume,
    "managedsave": do_managedsave, "suspend": do_suspend, "resume": do_resume,
    "network-define": do_network_define, "network-start": do_network_start,
    "network-destroy": do_network_destroy, "network-undefine": do_network_undefine,
    "check": do_check, "settle": do_settle,
}
