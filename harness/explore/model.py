"""What an exploration sequence is, and which steps are meaningful next (pure: no libvirt, no Hypothesis).

A sequence is a scenario being written rule by rule: the domain's devices at start, then steps. The
model tracks what the running domain holds so that only meaningful steps are offered: a VF is attached
at most once, the pool (one VF) is drawn from only with the error libvirt must then give, a save with a
passthrough device expects libvirt's refusal, only USB NICs are detached (they unplug without a guest
OS), and update-device goes to a network interface. Everything else (aliases, family, stability, QEMU's
ids) the oracle checks after every step, so the model predicts no alias.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import yaml

#: Host devices a sequence may use: two VFs for hostdev interfaces, one VF behind the pool, one e1000e.
HOST_DEVICES = {"vfa": "vf", "vfb": "vf", "vfp": "vf", "e1": "e1000e"}
DIRECT_VFS = ("vfa", "vfb")
NETWORKS = {"lan": {"forward": "nat"}, "pool": {"forward": "hostdev", "vfs": ["vfp"]}}
POOL_SIZE = 1

# The texts the catalog expects for these refusals (pool-exhausted, save-refused-with-hostdev).
POOL_ERROR = "requires exclusive access to interfaces, but none are available"
SAVE_ERROR = "re:cannot migrate domain|non-USB host devices|VFIO migration"

INTERFACE_KINDS = ("network", "user", "usb", "user-alias")
PASSTHROUGH_KINDS = ("hostdev", "pool", "plain-hostdev")
KINDS = INTERFACE_KINDS + PASSTHROUGH_KINDS
LIFECYCLE = ("restart-daemon", "save-restore", "managedsave-start", "suspend-resume", "destroy-start")
_LETTER = {"network": "n", "user": "u", "usb": "b", "user-alias": "a", "hostdev": "h", "pool": "p",
           "plain-hostdev": "d"}


@dataclass
class Dev:
    id: str
    kind: str
    host: str | None = None          # the host device sym it holds (VF / e1000e), if any

    def spec(self) -> dict:
        """The device as a scenario writes it (`domain.devices` entry or `attach` argument)."""
        i = {"id": self.id}
        if self.kind == "network":
            i.update(type="network", network="lan")
        elif self.kind == "user":
            i.update(type="user")
        elif self.kind == "usb":
            i.update(type="user", model="usb-net")
        elif self.kind == "user-alias":
            i.update(type="user", alias=f"ua-{self.id}")
        elif self.kind == "hostdev":
            i.update(type="hostdev", device=self.host)
        elif self.kind == "pool":
            i.update(type="network", network="pool")
        elif self.kind == "plain-hostdev":
            return {"hostdev": {"id": self.id, "device": self.host}}
        return {"interface": i}

    @property
    def passthrough(self) -> bool:
        return self.kind in PASSTHROUGH_KINDS


@dataclass
class Sequence:
    initial: list[Dev] = field(default_factory=list)     # the domain's devices at start (its config)
    steps: list[dict] = field(default_factory=list)      # scenario steps, as YAML mappings
    live: list[Dev] = field(default_factory=list)        # what the running domain holds now
    running: bool = False
    _n: int = 0

    # ---- preconditions ---------------------------------------------------------------
    def _held(self) -> set[str]:
        return {d.host for d in self.initial + self.live if d.host}

    def _free_host(self, kind: str) -> str | None:
        if kind == "hostdev":
            return next((v for v in DIRECT_VFS if v not in self._held()), None)
        if kind == "plain-hostdev":
            return None if "e1" in self._held() else "e1"
        return None

    def pool_full(self, devs: list[Dev]) -> bool:
        return sum(d.kind == "pool" for d in devs) >= POOL_SIZE

    def may_add(self, kind: str) -> bool:
        """Can `kind` be attached now (a pool interface always can: when full, the error is expected)?"""
        if kind in ("hostdev", "plain-hostdev"):
            return self._free_host(kind) is not None
        return True

    def usb_live(self) -> list[str]:
        return [d.id for d in self.live if d.kind == "usb"]

    def network_live(self) -> list[str]:
        return [d.id for d in self.live if d.kind == "network"]

    def passthrough_live(self) -> bool:
        return any(d.passthrough for d in self.live)

    # ---- building the sequence -------------------------------------------------------
    def _new(self, kind: str) -> Dev:
        self._n += 1
        return Dev(f"{_LETTER[kind]}{self._n}", kind, self._free_host(kind))

    def add_initial(self, kind: str) -> bool:
        """A device the domain starts with; kinds whose host device or pool slot is taken are left out
        (at start a full pool would fail the start itself, which no catalog scenario expects)."""
        if self.running or not self.may_add(kind) or (kind == "pool" and self.pool_full(self.initial)):
            return False
        self.initial.append(self._new(kind))
        return True

    def start(self) -> None:
        self.steps.append({"start": None})
        self.running = True
        self.live = list(self.initial)

    def attach(self, kind: str) -> Dev | None:
        if not (self.running and self.may_add(kind)):
            raise ValueError(f"attach {kind}: precondition not met")
        d = self._new(kind)
        step = {"attach": d.spec()}
        if kind == "pool" and self.pool_full(self.live):
            step["expect"] = {"error": POOL_ERROR}
            self.steps.append(step)
            return None
        self.steps.append(step)
        self.live.append(d)
        return d

    def detach(self, dev_id: str) -> None:
        if dev_id not in self.usb_live():
            raise ValueError(f"detach {dev_id}: not a USB NIC the domain holds")
        self.steps.append({"detach": dev_id})
        self.live = [d for d in self.live if d.id != dev_id]

    def update(self, dev_id: str, link: str) -> None:
        if dev_id not in self.network_live():
            raise ValueError(f"update {dev_id}: not a network interface the domain holds")
        self.steps.append({"update": {"id": dev_id, "link": link}})

    def lifecycle(self, op: str) -> None:
        if op == "destroy-start":
            self.steps += [{"destroy": None}, {"start": None}]
            self.live = list(self.initial)        # hot-plugged (live only) devices are gone
            return
        step: dict = {op: None}
        if op in ("save-restore", "managedsave-start") and self.passthrough_live():
            step["expect"] = {"error": SAVE_ERROR}
        self.steps.append(step)

    # ---- the scenario ----------------------------------------------------------------
    def scenario(self, guards: str, name: str | None = None, tags: tuple[str, ...] = ("explore",)) -> dict:
        """The sequence as a scenario mapping, with only the host devices and networks it uses."""
        attached = [d for s in self.steps if "attach" in s for d in [_dev_of(s["attach"])]]
        used = {d["device"] for d in attached + [_dev_of(d.spec()) for d in self.initial] if d.get("device")}
        nets = {d["network"] for d in attached + [_dev_of(d.spec()) for d in self.initial] if d.get("network")}
        if "pool" in nets:
            used.add("vfp")
        out: dict = {}
        if name:
            out["name"] = name
        out["guards"] = guards
        out["tags"] = list(tags)
        counts = {"vfs": sum(HOST_DEVICES[s] == "vf" for s in used),
                  "e1000e": sum(HOST_DEVICES[s] == "e1000e" for s in used)}
        req = {k: v for k, v in counts.items() if v}
        if req:
            out["requires"] = req
        if used:
            out["devices"] = {s: {"kind": HOST_DEVICES[s]} for s in HOST_DEVICES if s in used}
        if nets:
            out["networks"] = {s: dict(NETWORKS[s]) for s in NETWORKS if s in nets}
        out["domain"] = {"devices": [d.spec() for d in self.initial]}
        out["steps"] = [dict(s) for s in self.steps]
        return out

    def step_count(self) -> int:
        return len(self.steps)


def _dev_of(spec: dict) -> dict:
    return next(iter(spec.values()))


class _Dumper(yaml.SafeDumper):
    """The catalog's look: `- start:` for a step without argument, `{id: n1, type: user}` for a leaf mapping."""


def _scalar_or_list(v) -> bool:
    return not isinstance(v, dict) and (not isinstance(v, list) or all(not isinstance(x, (dict, list)) for x in v))


def _represent_dict(dumper, data):
    leaf = all(_scalar_or_list(v) for v in data.values()) and None not in data.values()
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=leaf)


def _represent_list(dumper, data):
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=_scalar_or_list(data))


_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(type(None), lambda dumper, _: dumper.represent_scalar("tag:yaml.org,2002:null", ""))


def to_yaml(scenario: dict) -> str:
    return yaml.dump(scenario, Dumper=_Dumper, sort_keys=False, width=110)
