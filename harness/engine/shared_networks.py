"""NAT and isolated networks that scenarios only attach to: made once per worker, reused, removed at the end.

Why: defining and starting a NAT network (dnsmasq, firewall rules) and removing it again took 9 of the
seed scenario's 26 s in a TCG bed, and most scenarios need one only as a place to plug interfaces into.
A scenario that drives a network itself (network-* steps, `create: false`) or a hostdev pool (whose VFs
are leased per scenario) still gets a network of its own. HX_SHARED_NETWORKS=0 gives every scenario its
own networks again.

Each shared network has a journal entry of its own (owner: this process), so a run that dies leaves
nothing the next session does not sweep, and a subnet lease held until the network is removed.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

from harness import paths
from harness.engine import xmlbuild
from harness.engine.devices import Leases
from harness.engine.journal import Entry, Journal, remove_network
from harness.engine.plan import walk_steps
from harness.errors import HarnessError
from harness.progress import say
from harness.scenario.model import Network, Scenario

NETWORK_STEPS = ("network-define", "network-start", "network-destroy", "network-undefine")


def enabled() -> bool:
    return os.environ.get("HX_SHARED_NETWORKS", "1") != "0"


def _driven_by_steps(sc: Scenario) -> set[str]:
    return {s.arg for s in walk_steps(sc.steps) if s.action in NETWORK_STEPS}


def shareable(sc: Scenario) -> set[str]:
    """The scenario's network symbols that a shared network can stand in for."""
    if not enabled():
        return set()
    driven = _driven_by_steps(sc)
    return {sym for sym, n in sc.networks.items()
            if n.create and n.forward in ("nat", "isolated") and sym not in driven}


@dataclass
class _Shared:
    name: str
    bridge: str | None


class SharedNetworks:
    """One network per forward mode for this worker's target; `close()` removes them all."""

    def __init__(self, t):
        self.t = t
        self.leases = Leases(t.lock_dir, [])     # subnet slots, held for the networks' lifetime
        self.journal = Journal(t.lock_dir)
        self.nets: dict[str, _Shared] = {}
        self.subnets: dict[str, int] = {}

    def get(self, forward: str) -> _Shared:
        """The worker's network for `forward`, made on first use. Looked up by name on the current
        connection every time: a daemon restart (restart-daemon scenarios) reconnects, and the old
        connection's network objects are dead then."""
        c = self.t.conn
        if forward in self.nets:
            name = self.nets[forward].name
        else:
            name = f"{paths.PREFIX}shared-{forward}-{self.t.worker}{self.t.run_tag}"
            self.journal.write(Entry(domain=name, networks=[name], scenario=f"shared {forward} network"))
            self.subnets[forward] = self.leases.lease_index("subnet", 250)
        try:
            net = c.call(c.virconn.networkLookupByName, name)
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                raise
            xml = xmlbuild.network_xml(name, Network(sym=forward, forward=forward), xmlbuild.Resolved(),
                                       self.subnets[forward])
            net = c.call(c.virconn.networkDefineXML, xml)
        if not c.call(net.isActive):
            c.call(net.create)
        br = ET.fromstring(c.call(net.XMLDesc, 0)).find("bridge")
        if forward not in self.nets:
            say(f"shared {forward} network {name} is up (reused by every scenario of this worker)")
        sh = _Shared(name=name, bridge=br.get("name") if br is not None else None)
        self.nets[forward] = sh
        return sh

    def _remove(self, forward: str) -> None:
        sh = self.nets.pop(forward)
        c = self.t.conn
        try:
            remove_network(c, c.call(c.virconn.networkLookupByName, sh.name))
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                raise
        self.journal.remove(sh.name)

    def close(self) -> list[str]:
        """Remove every shared network; returns problems (the journal entry stays for those)."""
        problems = []
        try:
            if self.nets:
                self.t.conn.ensure()
            for forward in list(self.nets):
                name = self.nets[forward].name
                try:
                    self._remove(forward)
                except (libvirt.libvirtError, HarnessError) as e:
                    problems.append(f"remove shared network {name}: {e}")
                    self.nets.pop(forward, None)
        except HarnessError as e:
            problems.append(f"remove shared networks {', '.join(n.name for n in self.nets.values())}: {e.message}")
        finally:
            self.leases.__exit__(None, None, None)
        return problems
