"""The one declared state of a scenario run, and the two ways a run ends other than passing.

Why: the runner, the steps, the artefact writer and the cleanup all read and write what one run holds
(the domain, the networks, the identity keys, the record of each step). Declared here, as one dataclass,
every field is visible in one place, and the steps write into it without importing the runner.
"""
from __future__ import annotations

import contextlib
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

from harness import oracle, paths
from harness.engine import shared_networks, xmlbuild
from harness.engine.plan import all_devices, needs_bed_alone
from harness.engine.session import Target
from harness.scenario.model import Device, Scenario, Step


@dataclass
class StepFailure(Exception):
    """The verdict: a step failed a check (libvirt's error, the step's expect, or an oracle invariant)."""
    index: int
    step: Step
    check: str
    expected: str
    actual: str
    libvirt_error: str | None = None
    violations: list[oracle.Violation] = field(default_factory=list)
    evidence: str | None = None          # e.g. the tail of qemu.log when QEMU went away

    def __str__(self) -> str:
        return f"step {self.index + 1} '{self.step.describe()}': [{self.check}] expected {self.expected}; got {self.actual}"


class ScenarioSkip(Exception):
    pass


@dataclass(eq=False)
class RunState:
    sc: Scenario
    t: Target
    art: Path                                                   # this run's artefacts/<scenario>/
    # fixed when the run is made
    dom_name: str = field(init=False)
    r: xmlbuild.Resolved = field(init=False)                    # what the scenario's symbols mean in this run
    console_log: str = field(init=False)
    qemu_log: str = field(init=False)
    shared: set[str] = field(init=False)                        # network syms served by a shared network
    exclusive: bool = field(init=False)                         # holds the bed alone (restarts the daemon)
    devs: dict[str, Device] = field(init=False)                 # every device, initial and attached later
    virt_type: str = field(init=False)                          # the domain type; start may fall back to qemu
    # filled before the first step (leases, prepare)
    subnets: dict[str, int] = field(default_factory=dict)       # own network sym -> leased subnet index
    keys: dict[str, str] = field(default_factory=dict)          # device id -> identity key for the oracle
    user_aliases: dict[str, str] = field(default_factory=dict)  # device id -> ua-... alias as written
    daemon_before: dict[str, str] = field(default_factory=dict)  # libvirtd's systemd state, for diagnose
    # written by the steps
    dom: libvirt.virDomain | None = None
    networks: dict[str, libvirt.virNetwork] = field(default_factory=dict)
    upgraded: bool = False                                      # set by upgrade-libvirt: cleanup restores libvirt
    before: oracle.Snapshot | None = None                       # the snapshot after the previous step
    implicit: set[str] = field(default_factory=set)             # devices a daemon step added with no alias
    # the record
    index: int = 0                                              # the next step's number, counted across repeats
    current: str | None = None                                  # the step running now, for infrastructure errors
    steps_log: list[dict] = field(default_factory=list)
    phases: list[dict] = field(default_factory=list)            # wall and libvirt/SSH seconds per phase
    cleanup_problems: list[str] = field(default_factory=list)   # the plugin fails the scenario on any
    artefact_problems: list[str] = field(default_factory=list)  # files not written (a full results disk)

    def __post_init__(self) -> None:
        tag = f"{self.t.worker}{self.t.run_tag}"
        self.dom_name = f"{paths.PREFIX}{self.sc.name[:40]}-{tag}-{secrets.token_hex(2)}"
        self.r = xmlbuild.Resolved(salt=self.dom_name)
        self.console_log = f"/var/log/libvirt/qemu/{self.dom_name}-console.log"
        self.qemu_log = f"/var/log/libvirt/qemu/{self.dom_name}.log"
        self.shared = shared_networks.shareable(self.sc)
        self.exclusive = needs_bed_alone(self.sc)
        self.devs = {d.id: d for d in all_devices(self.sc)}
        self.virt_type = self.sc.domain.type if self.sc.domain.type != "auto" else (
            "kvm" if self.t.kvm_available else "qemu")

    @contextlib.contextmanager
    def phase(self, name: str, t: Target | None = None):
        """Time one phase of the fixed sequence (bench.scenarios prints them per scenario)."""
        overlapped = t is not None and t is not self.t     # a handed-off teardown, after the scenario's time
        t = t or self.t
        t0, lv0 = time.monotonic(), t.libvirt_seconds
        try:
            yield
        finally:
            self.phases.append({"phase": name, "s": round(time.monotonic() - t0, 3),
                                "libvirt_s": round(t.libvirt_seconds - lv0, 3), "overlapped": overlapped})

    def prepare(self) -> None:
        """Give every device its MAC (explicit ones first, so generated ones never collide), its
        identity key for the oracle, and note the user aliases it was written with."""
        for d in self.devs.values():
            if d.spec.get("mac"):
                self.r.macs[d.id] = d.spec["mac"]
        for d in self.devs.values():
            if d.kind != "hostdev":
                self.r.mac_for(d.id)
        for d in self.devs.values():
            try:
                el = xmlbuild.device_element(d, self.r)
            except KeyError:
                continue   # refers to a bridge not known before its network starts; keyed when attached
            self.keys[d.id] = oracle.key_of(el)
            a = el.find("alias")
            if a is not None and a.get("name", "").startswith("ua-"):
                self.user_aliases[d.id] = a.get("name")

    def domain_xml(self) -> str:
        return xmlbuild.domain_xml(self.dom_name, self.sc.domain, self.r, self.virt_type,
                                   list(self.devs.values()), self.console_log)

    def hostdev_networks(self) -> set[str]:
        return {self.r.networks[s] for s, n in self.sc.networks.items() if n.forward == "hostdev"}
