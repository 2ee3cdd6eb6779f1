"""What a scenario asks of a run, read from its text before anything is created: every step (repeats
walked), every device it will hold, what the target lacks for it, whether it needs the bed alone.

Why a room of its own: the runner, the run state and the shared networks all read the scenario this way,
and none of them may import the runner.
"""
from __future__ import annotations

from harness.engine import devices
from harness.engine.session import Target
from harness.libvirt_build import upgrade
from harness.scenario.model import Device, Scenario, Step

#: Steps that take libvirtd away from under every worker's connection: their scenario holds the bed alone.
BED_ALONE_STEPS = ("restart-daemon", "upgrade-libvirt")


def walk_steps(steps: list[Step]):
    for s in steps:
        yield s
        yield from walk_steps(s.steps)


def all_devices(sc: Scenario) -> list[Device]:
    devs = list(sc.domain.devices)
    devs += [s.arg for s in walk_steps(sc.steps) if s.action == "attach" and isinstance(s.arg, Device)]
    return devs


#: Rough seconds per step on a TCG bed (./harness.sh run, 2026-12-05): only their order matters (cost()).
STEP_SECONDS = {"upgrade-libvirt": 15.0, "restart-daemon": 4.0, "start": 2.5, "managedsave-start": 2.0,
                "save-restore": 2.0, "destroy": 1.0}
#: Booting the tiny guest (a scenario with `guest: true`), on top of its start step.
GUEST_SECONDS = 20.0


def cost(sc: Scenario) -> float:
    """A scenario's expected time, for ordering a parallel run longest first: xdist then hands the long
    ones out first, one at a time, and the short ones fill the gaps at the end instead of one worker
    finishing an upgrade scenario alone while the other idles."""
    def steps(ss: list[Step]) -> float:
        return sum((s.times * steps(s.steps)) if s.steps else STEP_SECONDS.get(s.action, 0.3) for s in ss)
    return 2.0 + steps(sc.steps) + (GUEST_SECONDS if sc.domain.guest else 0.0)


def needs_bed_alone(sc: Scenario) -> bool:
    return any(s.action in BED_ALONE_STEPS for s in walk_steps(sc.steps))


def unmet_requirements(sc: Scenario, t: Target) -> str | None:
    req = sc.requires or {}
    if "libvirt" in req or "qemu" in req:
        from harness.scenario.loader import version_satisfies
    if "libvirt" in req and not version_satisfies(t.libvirt_version, req["libvirt"]):
        return f"needs libvirt {req['libvirt']}, target has {t.libvirt_version}"
    if "qemu" in req and not version_satisfies(t.qemu_version, req["qemu"]):
        return f"needs QEMU {req['qemu']}, target has {t.qemu_version}"
    have = devices.counts(t.nics)
    for k, key in (("vf", "vfs"), ("e1000e", "e1000e")):
        if req.get(key, 0) > have[k]:
            return f"needs {req[key]} {k} devices, the target has {have[k]}"
    if req.get("domain_type") == "kvm" and not t.kvm_available:
        return "needs domain type kvm, the target offers only qemu (TCG)"
    for s in walk_steps(sc.steps):
        if s.action == "upgrade-libvirt" and t.bed is not None and upgrade.unmet(t.bed.suite, s.arg):
            return upgrade.unmet(t.bed.suite, s.arg)
    return None
