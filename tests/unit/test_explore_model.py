"""harness explore's pure parts: the preconditions, the scenarios its sequences become, the known-answer cache,
teardown discipline, and the finding's files (YAML + virsh script). The bed-side proof (mutants found and
shrunk, control clean) is tests/integration/test_explore.py."""
from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.engine import xmlbuild
from harness.engine.run_state import RunState, StepFailure
from harness.explore import command, machine, model, writer
from harness.scenario.loader import load_text


def test_a_vf_is_held_at_most_once_and_the_e1000e_once():
    s = model.Sequence()
    assert s.add_initial("hostdev") and s.add_initial("plain-hostdev")
    assert not s.add_initial("plain-hostdev")
    s.start()
    assert s.attach("hostdev").host == "vfb"          # vfa is the initial interface's
    assert not s.may_add("hostdev") and not s.may_add("plain-hostdev")
    with pytest.raises(ValueError):
        s.attach("hostdev")


def test_the_pool_is_over_drawn_only_by_a_step_that_expects_libvirts_error():
    s = model.Sequence()
    assert s.add_initial("pool") and not s.add_initial("pool")    # a full pool at start is no catalog case
    s.start()
    assert s.attach("pool") is None
    assert s.steps[-1]["expect"] == {"error": model.POOL_ERROR}
    s2 = model.Sequence()
    s2.start()
    assert s2.attach("pool") is not None and "expect" not in s2.steps[-1]
    s2.lifecycle("destroy-start")                  # the hot-plugged pool interface is gone after a restart
    assert s2.attach("pool") is not None and "expect" not in s2.steps[-1]


def test_save_with_a_passthrough_device_expects_the_refusal_and_without_one_does_not():
    s = model.Sequence()
    s.add_initial("usb")
    s.start()
    s.lifecycle("save-restore")
    assert "expect" not in s.steps[-1]
    s.attach("plain-hostdev")
    s.lifecycle("managedsave-start")
    assert s.steps[-1]["expect"] == {"error": model.SAVE_ERROR}


def test_only_usb_nics_are_detached_and_only_network_interfaces_updated():
    s = model.Sequence()
    s.add_initial("user")
    s.start()
    b = s.attach("usb")
    n = s.attach("network")
    with pytest.raises(ValueError):
        s.detach("u1")
    with pytest.raises(ValueError):
        s.update(b.id, "down")
    s.update(n.id, "down")
    s.detach(b.id)
    assert s.usb_live() == [] and s.steps[-1] == {"detach": b.id}


def test_the_scenario_names_only_what_its_steps_use():
    s = model.Sequence()
    s.add_initial("hostdev")
    s.start()
    s.attach("user-alias")
    sc = s.scenario(guards="g", name="x")
    assert sc["devices"] == {"vfa": {"kind": "vf"}} and sc["requires"] == {"vfs": 1} and "networks" not in sc
    [loaded] = load_text(model.to_yaml(sc), "x.yaml")
    assert [st.action for st in loaded.steps] == ["start", "attach"]
    assert loaded.steps[1].arg.spec["alias"] == "ua-a2"


class Offline(machine.Explorer):
    """An explorer whose 'bed' is the loader: each sequence must be a valid scenario; the failure is made up."""

    def __init__(self, fails=lambda seq: None, **kw):
        # Budgets far above what these offline runs take (a second or two): the outcome must not depend on
        # how loaded the machine is (a shrink cut short by a 60 s allowance once kept 5 steps in CI).
        super().__init__(None, kw.pop("budget_s", 900), kw.pop("shrink_s", 900), Path("/nonexistent"))
        self.fails = fails
        self.texts: list[str] = []
        self.failing_sizes: list[int] = []      # initial devices + steps up to the failing one, per failing run

    def _run(self, seq):
        self.bed_runs += 1
        text = model.to_yaml(seq.scenario(guards="g", name=f"s{self.bed_runs}"))
        [sc] = load_text(text, "s.yaml")          # raises (a located error) for an invalid scenario
        self.texts.append(text)
        i = self.fails(seq)
        if i is None:
            return None
        self.failing_sizes.append(len(seq.initial) + i + 1)
        return machine.Finding(seq, StepFailure(i, sc.steps[i], "libvirt-error", "ok", "boom"), None, text, None)


def _explore_offline(ex, monkeypatch, **kw):
    monkeypatch.setattr(machine, "Explorer", lambda *a, **k: ex)
    return machine.explore(None, ex.budget_s, **kw)


def test_every_generated_sequence_is_a_valid_scenario_and_holds_each_device_once(monkeypatch):
    ex = Offline()
    _explore_offline(ex, monkeypatch, seed=3, max_sequences=60)
    assert ex.bed_runs >= 30 and ex.finding is None
    kinds = set()
    for text in ex.texts:
        [sc] = load_text(text, "s.yaml")
        kinds |= {s.action for s in sc.steps}
        held = [d.spec.get("device") for d in sc.domain.devices if d.spec.get("device")]
        assert len(held) == len(set(held)), text
    assert {"start", "attach"} <= kinds and len(kinds) >= 5, kinds


def test_a_failure_is_shrunk_and_known_answers_are_not_run_again(monkeypatch):
    def fails(seq):     # "hot-plugging a user interface after a hostdev interface fails"
        hd = any(d.kind == "hostdev" for d in seq.initial)
        for i, s in enumerate(seq.steps):
            spec = s.get("attach", {}).get("interface", {})
            hd = hd or spec.get("type") == "hostdev"
            if hd and spec.get("type") == "user":
                return i
        return None
    ex = Offline(fails)
    _, _, ended = _explore_offline(ex, monkeypatch, seed=5)
    assert isinstance(ended, machine.SequenceFailed) and ex.finding is not None
    # Hypothesis shrinks by its own measure (fewer choices) and may stop in a local minimum whose path depends
    # on more than the seed (the same seed ended at 3 steps here and at 5 in CI): so not a fixed step count,
    # but shrinking ran and the finding is no bigger than the first failure.
    f = ex.finding
    size = len(f.seq.initial) + f.failure.index + 1
    assert len(ex.failing_sizes) > 1 and size <= ex.failing_sizes[0]
    assert ex.sequences > ex.bed_runs         # shrinking proposed sequences whose answer was known


def test_an_incomplete_sequence_never_reaches_the_bed(monkeypatch):
    ex = Offline()
    monkeypatch.setattr(machine, "_EXPLORER", ex)
    m = machine.ExploreMachine()
    m.start_domain(kinds=["user"])
    with pytest.raises(KeyError):
        try:
            raise KeyError("a rule failed, or Hypothesis stopped the example")
        finally:
            m.teardown()
    assert ex.bed_runs == 0
    m.teardown()
    assert ex.bed_runs == 1


def test_a_spent_budget_ends_the_search_before_any_run(monkeypatch):
    ex = Offline(budget_s=1e-9)
    ex2, _, ended = _explore_offline(ex, monkeypatch, seed=1)
    assert ex2.bed_runs == 0 and ex2.finding is None and ended is None


@pytest.mark.parametrize("text,secs", [("10m", 600), ("90s", 90), ("1h", 3600), ("300", 300), ("2.5m", 150)])
def test_durations(text, secs):
    assert command.parse_duration(text) == secs


@pytest.mark.parametrize("bad", ["", "0", "-1m", "10 minutes", "m"])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        command.parse_duration(bad)


def _finding():
    """A finding as the bed would give it: a hostdev interface, then a network hot-plug that failed."""
    s = model.Sequence()
    s.add_initial("usb")
    s.start()
    s.attach("hostdev")
    s.attach("pool")
    s.lifecycle("save-restore")
    s.attach("network")
    s.lifecycle("suspend-resume")           # after the failing step: never ran, not written
    [sc] = load_text(model.to_yaml(s.scenario(guards="g", name="x")), "x.yaml")
    t = SimpleNamespace(worker="gw0", run_tag="abcd", kvm_available=False)
    run = RunState(sc, t, Path("/tmp/hx-explore-unit-art"))
    for i, sym in enumerate(sc.devices):
        run.r.addrs[sym] = xmlbuild.PciAddr(0, 1, 0x10 + i, 0)
    run.r.networks = {sym: f"hx-net-{sym}" for sym in sc.networks}
    run.prepare()
    failure = StepFailure(4, sc.steps[4], "libvirt-error", "the step to succeed",
                          "internal error: Unable to determine device index for network device")
    return machine.Finding(s, failure, run, "", Path("/nonexistent")), sc


def test_the_written_scenario_stops_at_the_failing_step_and_says_what_failed(tmp_path):
    finding, _ = _finding()
    yaml_path, sh = writer.write(finding, "seed 1, libvirt 11.3.0", tmp_path)
    [sc] = load_text(yaml_path.read_text(), str(yaml_path))
    assert sc.name == yaml_path.stem and sc.name.startswith("explore-libvirt-error-")
    assert [s.action for s in sc.steps] == ["start", "attach", "attach", "save-restore", "attach"]
    assert sc.steps[3].expect == {"error": model.SAVE_ERROR}
    assert "Unable to determine device index" in sc.guards and "seed 1" in sc.guards
    assert set(sc.devices) == {"vfa", "vfp"} and set(sc.networks) == {"lan", "pool"}
    assert sh.stat().st_mode & 0o111


def test_the_virsh_script_does_the_same_steps_with_the_same_xml(tmp_path):
    finding, sc = _finding()
    _, sh = writer.write(finding, "seed 1", tmp_path)
    text = sh.read_text()
    subprocess.run(["sh", "-n", str(sh)], check=True)
    assert "virsh net-define" in text and 'run virsh define "$D/domain.xml"' in text
    assert text.count("virsh attach-device") == 3 and "suspend" not in text
    assert "refused 're:cannot migrate domain|non-USB host devices|VFIO migration' virsh save" in text
    assert "# harness explore: this step failed the libvirt-error check" in text
    net = xmlbuild.device_xml(finding.run.devs["n4"], finding.run.r).replace("hx-net-lan", "hx-repro-lan")
    assert net in text                      # the very XML the run hot-plugged, on the script's own network
    assert "<address type=\"pci\" domain=\"0x0000\" bus=\"0x01\" slot=\"0x10\"" in text


class Clocked(Offline):
    """Offline, with a budget that is spent after `admits` sequences were admitted (no wall clock)."""

    def __init__(self, admits: int, **kw):
        super().__init__(**kw)
        self.admits_left = admits

    def time_left(self) -> float:
        return 1.0 if self.admits_left > 0 else 0.0

    def admit(self) -> None:
        super().admit()
        self.admits_left -= 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_budget_spent_mid_search_ends_it_cleanly(monkeypatch, seed):
    # Regression: the spent budget used to end an example half-drawn, and Hypothesis stopped the whole run
    # with FlakyStrategyDefinition ("the second run stopped drawing earlier") instead of "nothing found".
    ex = Clocked(12)
    _, _, ended = _explore_offline(ex, monkeypatch, seed=seed)
    assert ended is None and ex.finding is None and ex.bed_runs >= 5


def test_a_shrink_allowance_spent_keeps_the_smallest_failure_so_far(monkeypatch):
    def fails(seq):
        return next((i for i, s in enumerate(seq.steps) if "attach" in s), None)
    ex = Clocked(40, fails=fails)
    _, _, ended = _explore_offline(ex, monkeypatch, seed=4)
    assert isinstance(ended, machine.SequenceFailed) and ex.finding is not None
    assert "attach" in ex.finding.seq.steps[ex.finding.failure.index]
