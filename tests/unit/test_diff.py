"""`harness diff` (harness/report/diff.py): small synthetic run folders, built here, with the per-run noise a
real run has (run tag in every name, generated MACs, leased VFs, vnetN/virbrN, port UUIDs)."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness import cli
from harness.engine.xmlbuild import Resolved
from harness.errors import HarnessError
from harness.report import diff as D
from harness.report import diff_model
from harness.scenario.loader import ScenarioError

SEED_STEPS = [("start", ["hn0"]), ("attach n1", ["hn0", "n1"]), ("attach u1", ["hn0", "n1", "u1"]),
              ("attach hn1", ["hn0", "n1", "u1", "hn1"])]
ALIASES = {"hn0": "hostdev0", "n1": "net0", "u1": "net1", "hn1": "hostdev1", "hd": "hostdev2"}


@dataclass
class Noise:
    """What one run calls things: a run tag, its leased VFs, the kernel's numbering."""
    tag: str = "gw01a2b"
    vfs: tuple = ("0x2", "0x4", "0x6")      # functions of the leased VFs on bus 0x01 slot 0x10
    vnet: int = 3
    bridge: int = 1
    libvirt: str = "11.3.0"
    suite: str = "trixie"
    hexes: dict = field(default_factory=dict)


def domain_name(sc: str, noise: Noise) -> str:
    return f"hx-{sc}-{noise.tag}-{noise.hexes.setdefault(sc, uuid.uuid4().hex[:4])}"


def device(dev_id: str, alias: str | None, slot: int, dom: str, noise: Noise, leases: dict, live: bool) -> str:
    mac = Resolved(salt=dom).mac_for(dev_id)
    al = f"<alias name='{alias}'/>" if live and alias else ""
    addr = f"<address type='pci' domain='0x0000' bus='0x{slot:02x}' slot='0x00' function='0x0'/>"
    if dev_id.startswith("hn") or dev_id == "hd":
        fn = leases.setdefault(dev_id, noise.vfs[len(leases) % len(noise.vfs)])
        src = f"<source><address type='pci' domain='0x0000' bus='0x01' slot='0x10' function='{fn}'/></source>"
        drv = "<driver name='vfio'/>" if live else ""
        if dev_id == "hd":
            return f"<hostdev mode='subsystem' type='pci' managed='yes'>{drv}{src}{al}{addr}</hostdev>"
        return f"<interface type='hostdev' managed='yes'><mac address='{mac}'/>{drv}{src}{al}{addr}</interface>"
    if dev_id.startswith("n"):
        extra = (f" portid='{uuid.uuid4()}' bridge='virbr{noise.bridge}'" if live else "")
        target = f"<target dev='vnet{noise.vnet + slot}'/>" if live else ""
        return (f"<interface type='network'><mac address='{mac}'/><source network='hx-shared-nat-{noise.tag}'{extra}/>"
                f"{target}<model type='virtio'/>{al}{addr}</interface>")
    return f"<interface type='user'><mac address='{mac}'/><model type='virtio'/>{al}{addr}</interface>"


def domain(dom: str, devices: list[str], noise: Noise, leases: dict, live: bool) -> str:
    body = "".join(device(d, ALIASES.get(d), i + 1, dom, noise, leases, live) for i, d in enumerate(devices))
    ident = f" id='{len(devices)}'" if live else ""
    return (f"<domain type='qemu'{ident}><name>{dom}</name><uuid>{uuid.uuid4()}</uuid><devices>"
            f"<emulator>/usr/bin/qemu-system-x86_64</emulator>{body}"
            f"<serial type='file'><source path='/var/log/libvirt/qemu/{dom}-console.log'/></serial></devices></domain>")


def scenario(name: str = "seed", steps=SEED_STEPS, verdict: str = "passed", failure: dict | None = None,
             errors: dict | None = None, aliases: dict | None = None, inactive_only: set | None = None) -> dict:
    """A scenario spec: steps are (text, devices present after the step)."""
    return {"name": name, "steps": steps, "verdict": verdict, "failure": failure, "errors": errors or {},
            "aliases": aliases or {}, "inactive_only": inactive_only or set()}


def make_run(root: Path, dirname: str, scenarios: list[dict], noise: Noise | None = None) -> Path:
    noise = noise or Noise()
    run = root / dirname
    records = []
    for sc in scenarios:
        dom = domain_name(sc["name"], noise)
        art = run / "artefacts" / sc["name"]
        art.mkdir(parents=True)
        leases: dict = {}
        steps = []
        for i, (text, devs) in enumerate(sc["steps"]):
            live_devs = [d for d in devs if d not in sc["inactive_only"]]
            al = {d: ALIASES[d] for d in live_devs} | sc["aliases"].get(i, {})
            entry = {"index": i, "step": text, "line": 10 + i, "verdict": "passed", "duration_s": 0.1,
                     "libvirt_s": 0.1, "aliases": al}
            if i in sc["errors"]:
                entry["error"] = sc["errors"][i].format(dom=dom, mac=Resolved(salt=dom).mac_for("hn0"),
                                                        vf=f"0000:01:10.{leases.get('hn0', noise.vfs[0])[2:]}")
            if sc["failure"] and sc["failure"]["step_index"] == i:
                entry["verdict"] = "failed"
            steps.append(entry)
            action = text.split()[0]
            (art / f"step-{i + 1:02d}-{action}-live.xml").write_text(domain(dom, live_devs, noise, leases, True))
            (art / f"step-{i + 1:02d}-{action}-inactive.xml").write_text(domain(dom, devs, noise, leases, False))
            ids = sorted(set(al.values()) | {f"pci.{n}" for n in range(1, 4)})
            (art / f"step-{i + 1:02d}-{action}-qemu-ids.txt").write_text("\n".join(ids) + "\n")
            if sc["failure"] and sc["failure"]["step_index"] == i:
                break
        records.append({"scenario": sc["name"], "nodeid": f"scenarios/{sc['name']}.yaml::{sc['name']}",
                        "file": f"scenarios/{sc['name']}.yaml", "line": 1, "tags": [], "guards": "x",
                        "verdict": sc["verdict"], "duration_s": 1.0, "attempts": 1, "skip_reason": None,
                        "failure": sc["failure"], "steps": steps, "artefacts": f"artefacts/{sc['name']}"})
    meta = {"run_id": f"20261202T000000Z-{noise.tag}", "suite": noise.suite, "libvirt": noise.libvirt,
            "qemu": "10.0.13", "started": "2026-12-02T00:00:00+00:00", "finished": "2026-12-02T00:10:00+00:00"}
    counts = {v: sum(r["verdict"] == v for r in records) for v in ("passed", "failed", "skipped", "error")}
    (run / "summary.json").write_text(json.dumps({"meta": meta, "counts": counts | {"flaky": 0}, "scenarios": records}))
    return run


def two_runs(tmp_path, a_scenarios=None, b_scenarios=None, **b_noise):
    """Run A on libvirt 9.0 and run B on 11.3, same scenarios, every per-run detail different."""
    a = make_run(tmp_path, "2026-12-02_bookworm_9.0.0", a_scenarios or [scenario()],
                 Noise(tag="gw05556", vfs=("0x0", "0x2", "0x4"), vnet=3, bridge=1, libvirt="9.0.0", suite="bookworm"))
    b = make_run(tmp_path, "2026-12-02_trixie_11.3.0", b_scenarios or [scenario()],
                 Noise(tag="gw13f4e", vfs=("0x4", "0x6", "0x2"), vnet=15, bridge=2, **b_noise))
    return a, b


def new(result) -> list[dict]:
    return [d for d in result["differences"] if d["ack"] is None]


def edit(run: Path, scenario_name: str, step: int, kind: str, old: str, new_text: str) -> None:
    p = next((run / "artefacts" / scenario_name).glob(f"step-{step:02d}-*-{kind}"))
    text = p.read_text()
    assert old in text, (old, text)
    p.write_text(text.replace(old, new_text))


# --- no noise -----------------------------------------------------------------------------------

def test_two_runs_differing_only_by_per_run_noise_give_no_difference(tmp_path):
    a, b = two_runs(tmp_path)
    assert Path(a, "artefacts/seed/step-04-attach-live.xml").read_text() != \
        Path(b, "artefacts/seed/step-04-attach-live.xml").read_text()      # the noise is there
    result = D.diff_runs(a, b)
    assert result["differences"] == [], D.render_text(result)
    assert result["counts"] == {"differences": 0, "new": 0, "acknowledged": 0, "stale_acks": 0,
                                "scenarios_compared": 1, "only_in_a": 0, "only_in_b": 0}
    assert D.exit_code(result) == 0
    assert "no new differences" in D.render_text(result)


def test_a_run_compared_with_itself_is_empty(tmp_path):
    a, _ = two_runs(tmp_path)
    assert D.diff_runs(a, a)["differences"] == []


def test_generated_macs_are_the_ones_xmlbuild_gives():
    """The diff recomputes the harness's MACs to know devices by id: it must follow xmlbuild."""
    for dom in ("hx-seed-gw05556-1855", "hx-x-gw1abcd-0000"):
        for dev in ("hn0", "n1", "p2"):
            assert Resolved(salt=dom).mac_for(dev) == diff_model.generated_macs(dom, dev)[0]


def test_names_of_the_run_are_normalised():
    n = D.Norm(leased={"0000:01:10.2"}, macs={"52:54:00:88:e2:51": "hn0"})
    assert n.text("hx-seed-hostdev-then-hotplug-gw05556-1855-console.log") == "hx-seed-hostdev-then-hotplug-{run}-console.log"
    assert n.text("hx-shared-nat-gw10eab5") == "hx-shared-nat-{run}"
    assert n.text("hx-pool-by-pf-gw03f4e-a207-pool") == "hx-pool-by-pf-{run}-pool"
    assert n.text("vnet17 virbr3 macvtap0") == "vnet{N} virbr{N} macvtap{N}"
    assert n.text("PCI device 0000:01:10.2 in use, MAC 52:54:00:88:E2:51") == "PCI device {leased} in use, MAC {mac:hn0}"
    assert n.text("guest address 0000:00:02.0") == "guest address 0000:00:02.0"     # not leased: libvirt's choice
    assert n.text("port 1c4fefa1-517f-424e-8a14-a557926a355a") == "port {uuid}"


# --- real differences --------------------------------------------------------------------------

def test_an_alias_change_is_reported_with_both_values(tmp_path):
    a, b = two_runs(tmp_path, b_scenarios=[scenario(aliases={1: {"n1": "net1"}})])
    result = D.diff_runs(a, b)
    alias = [d for d in new(result) if d["kind"] == "alias"]
    assert alias == [{"scenario": "seed", "step": 2, "step_text": "attach n1", "kind": "alias", "subject": "n1",
                      "a": "net0", "b": "net1", "ack": None}]
    # QEMU's ids follow the alias: net0 vanished, net1 appeared. Nothing else.
    assert {(d["kind"], d["subject"], d["a"], d["b"]) for d in new(result) if d["kind"] != "alias"} == {
        ("qemu-id", "net0", "present", None), ("qemu-id", "net1", None, "present")}
    text = D.render_text(result)
    assert "seed\n  step 2 attach n1\n    alias     n1: net0 -> net1\n" in text
    assert D.exit_code(result) == 1


def test_an_error_text_change_is_reported_and_per_run_parts_of_it_are_not(tmp_path):
    steps = SEED_STEPS[:2] + [("attach hn0b", ["hn0", "n1"])]
    msg = "Requested operation is not valid: PCI device {vf} is in use by driver QEMU, domain {dom}"
    a, b = two_runs(tmp_path, [scenario(steps=steps, errors={2: msg})], [scenario(steps=steps, errors={2: msg})])
    assert D.diff_runs(a, b)["differences"] == []          # domain name and leased VF differ: noise
    c = make_run(tmp_path, "c", [scenario(steps=steps, errors={2: msg.replace("in use", "already in use")})],
                 Noise(tag="gw2beef"))
    diffs = new(D.diff_runs(a, c))
    assert [(d["kind"], d["step"]) for d in diffs] == [("error", 3)]
    assert diffs[0]["a"] == "Requested operation is not valid: PCI device {leased} is in use by driver QEMU, domain hx-seed-{run}"
    assert "already in use" in diffs[0]["b"]


def test_the_error_of_a_failed_step_comes_from_the_failure_record(tmp_path):
    fail = {"step_index": 1, "step": "attach n1", "line": 11, "check": "libvirt-error",
            "libvirt_error": "internal error: Unable to determine device index for network device"}
    a, b = two_runs(tmp_path, b_scenarios=[scenario(verdict="failed", failure=fail)])
    diffs = new(D.diff_runs(a, b))
    by_kind = {(d["kind"], d["step"]): d for d in diffs}
    assert by_kind[("verdict", None)]["b"] == "failed at step 2 [libvirt-error]"
    assert by_kind[("step", 2)]["a"] == "passed" and by_kind[("step", 2)]["b"] == "failed [libvirt-error]"
    assert by_kind[("error", 2)]["a"] is None and "device index" in by_kind[("error", 2)]["b"]
    assert by_kind[("step", 3)]["b"] is None and by_kind[("step", 4)]["b"] is None    # not run in B


def test_a_vanished_attribute_and_a_vanished_element(tmp_path):
    a, b = two_runs(tmp_path)
    edit(b, "seed", 1, "live.xml", "<driver name='vfio'/>", "<driver/>")
    edit(b, "seed", 2, "live.xml", "<driver name='vfio'/>", "")
    diffs = new(D.diff_runs(a, b))
    assert [(d["step"], d["kind"], d["subject"], d["a"], d["b"]) for d in diffs] == [
        (1, "xml", "live hn0: driver@name", "vfio", None),
        (2, "xml", "live hn0: <driver>", "<driver name='vfio'/>", None),     # once, not also driver@name
    ]
    assert "xml       live hn0: driver@name: vfio -> (absent)" in D.render_text(D.diff_runs(a, b))


def test_an_appeared_attribute_in_the_inactive_xml_is_found_by_generated_mac(tmp_path):
    a, b = two_runs(tmp_path)
    edit(b, "seed", 3, "inactive.xml", "<interface type='user'>", "<interface type='user' trustGuestRxFilters='yes'>")
    diffs = new(D.diff_runs(a, b))
    assert [(d["kind"], d["subject"], d["a"], d["b"]) for d in diffs] == [
        ("xml", "inactive u1: @trustGuestRxFilters", None, "yes")]


def test_a_config_only_device_and_a_plain_hostdev_are_matched_by_id(tmp_path):
    """u1 is only in the inactive XML (never live, so no alias names it): its generated MAC does. The plain
    hostdev hd has neither MAC nor alias there: its source address, as seen in the live XML, does."""
    steps = [("start", ["hn0", "hd"]), ("attach u1", ["hn0", "hd", "u1"])]
    sc = scenario(steps=steps, inactive_only={"u1"})
    a, b = two_runs(tmp_path, [sc], [sc])
    assert D.diff_runs(a, b)["differences"] == []
    edit(b, "seed", 2, "inactive.xml", "<model type='virtio'/>", "<model type='e1000e'/>")
    diffs = new(D.diff_runs(a, b))
    assert [(d["subject"], d["a"], d["b"]) for d in diffs] == [("inactive u1: model@type", "virtio", "e1000e")]


def test_a_guest_address_change_is_outward(tmp_path):
    a, b = two_runs(tmp_path)
    edit(b, "seed", 4, "live.xml", "bus='0x04' slot='0x00'", "bus='0x05' slot='0x00'")
    diffs = new(D.diff_runs(a, b))
    assert [(d["subject"], d["a"], d["b"]) for d in diffs] == [("live hn1: address@bus", "0x04", "0x05")]


def test_a_scenario_in_only_one_run(tmp_path):
    a, b = two_runs(tmp_path, [scenario()], [scenario(), scenario("machine-pc", steps=SEED_STEPS[:2])])
    result = D.diff_runs(a, b)
    assert new(result) == [{"scenario": "machine-pc", "step": None, "step_text": None, "kind": "scenario",
                            "a": None, "b": "passed", "subject": None, "ack": None}]
    assert result["counts"]["only_in_b"] == 1 and result["counts"]["scenarios_compared"] == 1
    assert "only in B (1): machine-pc" in D.render_text(result)
    assert D.exit_code(result) == 1


def test_an_infrastructure_error_is_one_line_saying_so(tmp_path):
    fail = {"message": "scenarios/seed.yaml: during set-up: operation failed: network 'hx-shared-nat-gw13f4e' "
                       "already exists with uuid 210d337f-fb7d-4c9a-b3e7-9c890297f282", "check": "infrastructure"}
    a, b = two_runs(tmp_path, b_scenarios=[scenario(verdict="error", failure=fail, steps=[])])
    result = D.diff_runs(a, b)
    assert [(d["kind"], d["a"], d["b"]) for d in new(result)] == [("verdict", "passed", "error [infrastructure]")]
    notes = new(result)[0]["notes"]
    assert notes[0].startswith("not libvirt's answer: the harness could not judge this scenario in B")
    assert "B: scenarios/seed.yaml: during set-up: operation failed: network 'hx-shared-nat-{run}' already exists " \
           "with uuid {uuid}" == notes[1]
    assert "not libvirt's answer" in D.render_text(result)


def test_missing_artefacts_are_a_note_not_a_difference(tmp_path):
    import shutil
    a, b = two_runs(tmp_path)
    shutil.rmtree(b / "artefacts" / "seed")
    result = D.diff_runs(a, b)
    assert result["differences"] == []
    assert any("no artefacts" in n and "XML and QEMU ids not compared" in n for n in result["notes"])


# --- acknowledgements --------------------------------------------------------------------------

def write_acks(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "known-differences.yaml"
    p.write_text(text)
    return p


def test_a_matching_ack_hides_the_difference_and_a_stale_one_is_reported(tmp_path):
    a, b = two_runs(tmp_path, b_scenarios=[scenario(aliases={1: {"n1": "net1"}})])
    acks = write_acks(tmp_path, """\
acknowledged:
  - scenario: seed
    step: 2
    kind: alias
    subject: n1
    from: net0
    to: net1
    reason: libvirt 11 counts network interfaces from 1 (made-up example)
  - scenario: "*"
    kind: qemu-id
    subject: "re:^net[01]$"
    reason: QEMU ids follow the aliases
  - scenario: seed
    step: 3
    kind: error
    reason: the error text of step 3 changed in 10.2 (no longer true)
  - scenario: not-in-these-runs
    kind: alias
    reason: "applies to another scenario: neither matched nor stale"
  - scenario: seed
    kind: alias
    libvirt: {a: ">=10"}
    reason: "only for A on libvirt 10 or later: does not apply to 9.0"
""")
    result = D.diff_runs(a, b, acks)
    assert new(result) == []
    assert result["counts"]["acknowledged"] == 3 and result["counts"]["new"] == 0
    assert [(s["line"], s["reason"]) for s in result["stale_acks"]] == [
        (13, "the error text of step 3 changed in 10.2 (no longer true)")]
    text = D.render_text(result)
    assert "no new differences, 3 acknowledged" in text
    assert f"{acks}:13: seed step 3 error" in text
    assert D.exit_code(result) == 0
    alias = next(d for d in result["differences"] if d["kind"] == "alias")
    assert alias["ack"] == {"file": str(acks), "line": 2, "reason": "libvirt 11 counts network interfaces from 1 (made-up example)"}
    assert "[acknowledged: libvirt 11 counts" in D.render_text(result, show_acknowledged=True)


def test_an_ack_for_absent_values_uses_null(tmp_path):
    a, b = two_runs(tmp_path)
    edit(b, "seed", 1, "live.xml", "<driver name='vfio'/>", "<driver/>")
    acks = write_acks(tmp_path, "acknowledged:\n  - {scenario: seed, step: 1, kind: xml, subject: 'live hn0: driver@name',"
                                " from: vfio, to: null, reason: x}\n")
    assert new(D.diff_runs(a, b, acks)) == []
    acks = write_acks(tmp_path, "acknowledged:\n  - {scenario: seed, kind: xml, to: gone, reason: x}\n")
    result = D.diff_runs(a, b, acks)
    assert len(new(result)) == 1 and len(result["stale_acks"]) == 1


@pytest.mark.parametrize("text, line, column, message, hint", [
    ("acknowledged:\n  - scenario: seed\n    knd: alias\n    reason: x\n", 3, 5,
     "unknown key 'knd' in acknowledgement 1", "did you mean 'kind'?"),
    ("acknowledged:\n  - scenario: seed\n    kind: aliases\n    reason: x\n", 3, 11,
     "acknowledgement 1 kind: 'aliases' is not allowed", "did you mean 'alias'?"),
    ("acknowledged:\n  - scenario: seed\n    kind: alias\n", 2, 5,
     "missing key 'reason' in acknowledgement 1", "one line: why this difference is expected"),
    ("acknowledged:\n  - {scenario: seed, kind: alias, reason: x}\n  - {scenario: seed, kind: alias, step: 0, reason: x}\n",
     3, 41, "acknowledgement 2 step: 0 is not allowed", "the step number"),
    ("acknowledged:\n  - {scenario: seed, kind: error, from: 're:(unclosed', reason: x}\n", 2, 41,
     "acknowledgement 1 from: bad regular expression", "Python regular expression"),
    ("acknowledged:\n  - {scenario: Seed!, kind: alias, reason: x}\n", 2, 16,
     "acknowledgement 1 scenario: 'Seed!' is not valid", "a scenario name, or '*'"),
    ("acknowledged:\n  - {scenario: seed, kind: verdict, step: 2, reason: x}\n", 2, 37,
     "kind 'verdict' is about a whole scenario", "remove `step:`"),
    ("acknowledged:\n  - {scenario: seed, kind: alias, libvirt: {b: 'eleven'}, reason: x}\n", 2, 48,
     "acknowledgement 1 libvirt.b: bad version constraint", "'>=11.0'"),
    ("acknowledged:\n  - scenario: seed\n  kind: alias\n", 3, 3, "invalid YAML", ""),
    ("", 1, 1, "the file is empty", "acknowledged: []"),
    ("- scenario: seed\n", 1, 1, "the file: expected a mapping, got a list", "a list of reviewed"),
    ("acknowledgd: []\n", 1, 1, "unknown key 'acknowledgd' in the file", "did you mean 'acknowledged'?"),
])
def test_a_malformed_acks_file_is_a_located_error(tmp_path, text, line, column, message, hint):
    p = write_acks(tmp_path, text)
    with pytest.raises(ScenarioError) as e:
        D.load_acks(p)
    err = e.value
    assert (err.file, err.line) == (str(p), line), str(err)
    assert err.column == column, str(err)
    assert message in err.message, str(err)
    assert hint in (err.hint or ""), str(err)
    assert str(err).startswith(f"{p}:{line}:{column}: ")
    assert f"> {line} |" in str(err) or not text     # the snippet marks the line


def test_the_repository_acks_file_is_valid():
    acks = D.default_acks()
    assert acks is not None and acks.name == "known-differences.yaml"
    D.load_acks(acks)


# --- bad input -----------------------------------------------------------------------------------

def test_a_missing_or_unfinished_run_folder_is_named_with_the_fix(tmp_path):
    a, _ = two_runs(tmp_path)
    with pytest.raises(HarnessError) as e:
        D.load_run(tmp_path / "2026-12-02_bookworm_9.0.1")
    assert str(tmp_path / "2026-12-02_bookworm_9.0.1") in e.value.message
    assert "did you mean" in e.value.hint and a.name in e.value.hint
    busy = tmp_path / "busy"
    (busy / "records").mkdir(parents=True)
    with pytest.raises(HarnessError, match="still being written"):
        D.load_run(busy)
    (busy / "summary.json").write_text("{not json")
    with pytest.raises(HarnessError, match="summary.json: cannot be read as JSON"):
        D.load_run(busy)


# --- the command ---------------------------------------------------------------------------------

def test_cli_exit_codes_json_and_html(tmp_path, capsys):
    a, b = two_runs(tmp_path)
    acks = write_acks(tmp_path, "acknowledged: []\n")
    assert cli.main(["diff", str(a), str(b), "--acks", str(acks)]) == 0
    out = capsys.readouterr().out
    assert "no new differences, 0 acknowledged" in out
    written = json.loads((b / f"diff-{a.name}.json").read_text())
    assert written["format"] == D.FORMAT and written["counts"]["new"] == 0

    c = make_run(tmp_path, "c", [scenario(aliases={1: {"n1": "net1"}})], Noise(tag="gw3cafe"))
    (c / "report.html").write_text("old")
    assert cli.main(["diff", str(a), str(c), "--acks", str(acks), "--json", str(tmp_path / "d.json"), "--html"]) == 1
    assert json.loads((tmp_path / "d.json").read_text())["counts"]["new"] == 3
    page = (c / "report.html").read_text()
    assert f"Differences from {a.name}" in page and 'id="differences"' in page and 'data-new="3"' in page
    assert 'data-kind="alias"' in page and "net1" in page
    assert "http://" not in page.replace("http-equiv", "") and "<script" not in page    # still self-contained

    with pytest.raises(SystemExit) as e:
        cli.main(["diff", str(a), str(tmp_path / "nope")])
    assert e.value.code == 2
    assert f"argument RUN_B: no run folder {tmp_path / 'nope'}" in capsys.readouterr().err

    bad = write_acks(tmp_path, "acknowledged:\n  - {scenario: seed}\n")
    assert cli.main(["diff", str(a), str(b), "--acks", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"harness: error: {bad}:2:5: missing key 'kind' in acknowledgement 1" in err


def test_the_html_section_escapes_what_libvirt_and_scenarios_say():
    from harness.report import html
    hostile = 'a"<b>$(x)<script>'
    diff = {"a": {"run_dir": f"results/{hostile}", "suite": "bookworm", "libvirt": "9.0.0", "qemu": "7.2", "run_id": "r"},
            "counts": {"scenarios_compared": 1, "only_in_a": 0, "only_in_b": 0, "new": 1, "acknowledged": 1},
            "acks_file": "known-differences.yaml", "notes": [hostile],
            "differences": [{"scenario": hostile, "step": 2, "step_text": hostile, "kind": "error", "subject": hostile,
                             "a": hostile, "b": None, "ack": None, "notes": [hostile]},
                            {"scenario": "seed", "step": 1, "step_text": "start", "kind": "alias", "subject": "n1",
                             "a": "net0", "b": "net1", "ack": {"file": "k.yaml", "line": 3, "reason": hostile}}],
            "stale_acks": [{"file": "k.yaml", "line": 9, "reason": hostile, "ack": {}}]}
    section = html.differences(diff, {"seed"})
    assert "<script" not in section and "<b>" not in section
    assert section.count("a&quot;&lt;b&gt;$(x)&lt;script&gt;") == 10     # every place it is shown
    assert '<a href="#row-seed">seed</a>' in section and "<details><summary>1 acknowledged</summary>" in section
