"""The Scenario model: plain data the loader produces and the engine runs.

Every node keeps the YAML position it came from (`mark`) so any failure, at collection or at
run time, can point at the line a person wrote.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Mark:
    file: str
    line: int        # 1-based
    column: int      # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass
class HostDevice:
    """A symbolic host device, resolved at run time to a leased PCI address in the bed."""
    sym: str
    kind: str                      # vf | pf | e1000e
    mark: Mark | None = None


@dataclass
class Network:
    """A libvirt network the scenario creates; its real name is prefixed per run."""
    sym: str
    forward: str                   # hostdev | nat | isolated
    vfs: list[str] = field(default_factory=list)   # hostdev pool by list of VF syms
    pf: str | None = None          # hostdev pool by PF sym (leases the whole PF)
    create: bool = True            # define+start before the first step (else use network-* steps)
    mark: Mark | None = None


@dataclass
class Device:
    """A guest device: kind interface|hostdev|xml; spec holds the YAML keys as written."""
    id: str
    kind: str
    spec: dict[str, Any]
    mark: Mark | None = None


@dataclass
class Domain:
    type: str = "auto"             # auto | kvm | qemu
    machine: str = "q35"           # q35 | pc
    memory_mib: int = 128
    vcpus: int = 1
    guest: bool = False            # boot the bed's tiny guest (needed for PCI unplug to complete)
    root_ports: int = 8            # spare pcie-root-ports for hot-plug on q35
    devices: list[Device] = field(default_factory=list)
    xml: str | None = None         # raw domain XML escape hatch, with {placeholders}
    mark: Mark | None = None


@dataclass
class Step:
    action: str                    # start, attach, detach, ... (see schema.json)
    arg: Any = None                # Device for attach; id for detach; sym for network-*; dict for update
    flags: str = "live"            # live | config | both | current
    expect: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    times: int = 1                 # repeat
    steps: list["Step"] = field(default_factory=list)   # repeat body
    timeout: float | None = None
    mark: Mark | None = None

    def describe(self) -> str:
        a = self.arg.id if isinstance(self.arg, Device) else self.arg
        return self.name or (f"{self.action} {a}" if a not in (None, {}) else self.action)


@dataclass
class Scenario:
    name: str
    file: str
    guards: str
    tags: list[str] = field(default_factory=list)
    requires: dict[str, Any] = field(default_factory=dict)
    devices: dict[str, HostDevice] = field(default_factory=dict)
    networks: dict[str, Network] = field(default_factory=dict)
    domain: Domain = field(default_factory=Domain)
    steps: list[Step] = field(default_factory=list)
    mark: Mark | None = None
