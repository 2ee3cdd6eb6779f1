"""The scenario loader: good files become the model, every broken file fails at the right line with a hint."""
from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from harness.scenario.loader import (
    SCHEMA_PATH,
    ScenarioError,
    actions,
    check_unique_names,
    load_file,
    load_text,
    parse_version_constraint,
    version_satisfies,
)
from harness.scenario.model import Device, Mark

DATA = Path(__file__).resolve().parent.parent / "data"
BAD = DATA / "bad"
GOOD = DATA / "good"

# file -> (line the error must point at, text the message must contain)
BAD_CASES = {
    "yaml-syntax.yaml": (5, "invalid YAML"),
    "unknown-key-top.yaml": (2, "unknown key 'tgas' at top level"),
    "unknown-key-step.yaml": (5, "unknown key 'expcet' in step 2"),
    "unknown-key-interface.yaml": (10, "unknown key 'netwrok' in step 2 attach.interface"),
    "unknown-action.yaml": (4, "unknown step action 'reboot' in step 2"),
    "misspelt-action.yaml": (4, "unknown step action 'atach'"),
    "wrong-type.yaml": (4, "domain.memory_mib: expected an integer, got a string"),
    "wrong-type-detach.yaml": (4, "step 2 detach: expected a string, got a mapping"),
    "bad-enum.yaml": (3, "domain.type: 'kvmm' is not allowed"),
    "undefined-device.yaml": (6, "undefined device 'vf2'"),
    "undefined-network.yaml": (6, "undefined network 'lan0'"),
    "undefined-id-detach.yaml": (5, "step 3 detach: undefined device id 'n2'"),
    "undefined-id-expect.yaml": (7, "expect.aliases: undefined device id 'n2'"),
    "used-before-attach.yaml": (4, "device 'n1' is used before it is defined (line 5)"),
    "duplicate-device-id.yaml": (10, "duplicate device id 'n1'"),
    "duplicate-scenario-name.yaml": (10, "duplicate scenario name 'one'"),
    "duplicate-yaml-key.yaml": (5, "duplicate key 'vf1'"),
    "not-utf8.yaml": (4, "not valid UTF-8"),
    "empty.yaml": (1, "the file is empty"),
    "comments-only.yaml": (1, "the file is empty"),
    "steps-empty.yaml": (2, "steps is empty"),
    "missing-guards.yaml": (1, "missing key 'guards' at top level"),
    "bad-user-alias.yaml": (4, "alias: 'net-lan' is not valid"),
    "bad-placeholder.yaml": (11, "'vf1' has no 'adress'"),
    "bad-placeholder-name.yaml": (3, "unknown name 'dom' in placeholder {dom.name}"),
    "hostdev-interface-e1000e.yaml": (6, "device 'e1' is kind e1000e, needs vf"),
    "hostdev-pf.yaml": (6, "device 'pf1' is kind pf, needs vf or e1000e"),
    "network-pf-not-pf.yaml": (5, "device 'vf1' is kind vf, needs pf"),
    "network-vfs-not-vf.yaml": (8, "device 'e1' is kind e1000e, needs vf"),
    "network-step-undefined.yaml": (6, "network-start: undefined network 'lna'"),
    "two-actions.yaml": (4, "step 1 has 2 actions: 'start', 'destroy'"),
    "step-without-colon.yaml": (3, "step 1: expected a mapping, got a string ('start')"),
    "repeat-not-detached.yaml": (7, "attached inside a repeat but not detached there"),
    "bad-version.yaml": (3, "requires.libvirt: '9.0.0' is not valid"),
    "unquoted-version.yaml": (3, "invalid YAML"),
    "tab-indent.yaml": (3, "invalid YAML"),
    "flags-on-start.yaml": (4, "'flags' does not apply to start"),
    "bad-regex.yaml": (4, "bad regular expression"),
    "domain-xml-with-devices.yaml": (4, "domain 'devices' has no effect next to domain.xml"),
    "interface-key-wrong-type.yaml": (5, "'network' does not apply to a type user interface"),
    "multi-missing-name.yaml": (8, "missing key 'name' in scenario 2"),
    "non-string-key.yaml": (4, "key 'on' is read as a boolean"),
    "recursive-alias.yaml": (2, "alias refers to a value that contains it"),
    "unknown-tag.yaml": (1, "unsupported YAML tag"),
    "Bad_Stem.yaml": (1, "file stem 'Bad_Stem', which is not a valid name"),
    # hostile input (issue 13): each one located error, in well under a second
    "merge-bomb.yaml": (14, "expands to more than 5000 values"),
    "merge-chain.yaml": (69, "`<<` merges nested deeper than 64 levels"),
    "tag-xfail.yaml": (2, "tag 'xfail' is a pytest mark"),
    "timeout-huge.yaml": (4, "is too large a number"),
    "timeout-inf.yaml": (4, "'.inf' is not a finite number"),
    "regex-nested.yaml": (4, "bad regular expression: groups nested more than 20 deep"),
    "regex-overflow.yaml": (4, "bad regular expression: the repetition number is too large"),
    "root-ports-huge.yaml": (3, "domain.root_ports: 100000 is too large (must be <= 32)"),
    "repeat-times-huge.yaml": (5, "repeat.times: 1000000000 is too large (must be <= 1000)"),
    "repeat-nested.yaml": (5, "more than 2000"),
    "xml-malformed-domain.yaml": (8, "raw XML does not parse: mismatched tag"),
    "xml-qemu-commandline.yaml": (7, "<qemu:commandline>"),
    "xml-usb-hostdev.yaml": (7, "<hostdev mode='subsystem' type='usb'>"),
    "xml-disk-host-file.yaml": (5, "<disk type='file'> with a <source> uses host storage"),
    "xml-serial-host-file.yaml": (7, "<serial type='file'> connects to a host file"),
    "xml-network-undeclared.yaml": (10, "uses host network 'default', which the scenario does not declare"),
    "xml-literal-pci.yaml": (10, "passes through a host PCI device by a literal address"),
}

# hints that must be specific, not just present
BAD_HINTS = {
    "unknown-key-top.yaml": "did you mean 'tags'?",
    "misspelt-action.yaml": "did you mean 'attach'?",
    "bad-enum.yaml": "allowed: auto, kvm, qemu",
    "wrong-type.yaml": "guest memory in MiB",
    "not-utf8.yaml": "save the file as UTF-8",
    "undefined-device.yaml": "did you mean 'vf1'?",
    "bad-placeholder.yaml": "did you mean 'address'?",
    "bad-user-alias.yaml": "`ua-`",
    "unquoted-version.yaml": 'libvirt: ">=9.0.0"',
    "tab-indent.yaml": "spaces",
    "step-without-colon.yaml": "write `- start:` with a colon",
    "duplicate-yaml-key.yaml": "already set at line 3",
    "duplicate-scenario-name.yaml": "already used at line 2",
    "duplicate-device-id.yaml": "already defined at line 4",
    "hostdev-interface-e1000e.yaml": "plain `hostdev:",
    "tag-xfail.yaml": "rename the tag",
    "xml-network-undeclared.yaml": "`host: {networks: [...]}`",
    "xml-qemu-commandline.yaml": "<metadata>",
    "merge-bomb.yaml": "`<<` merges",
}


def load_bad(name: str) -> ScenarioError:
    path = str(BAD / name)
    with pytest.raises(ScenarioError) as info:
        load_file(path)
    return info.value


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_file_fails_at_its_line_with_a_hint(name):
    line, text = BAD_CASES[name]
    e = load_bad(name)
    path = str(BAD / name)
    assert e.file == path
    assert (e.line, text in e.message) == (line, True), str(e)
    assert str(e).startswith(f"{path}:{line}:{e.column}: ")
    assert e.column >= 1
    assert e.hint, str(e)
    assert f"> {line} |" in e.snippet, str(e)
    assert name not in BAD_HINTS or BAD_HINTS[name] in e.hint, str(e)


def test_every_bad_file_has_an_expectation():
    assert sorted(p.name for p in BAD.iterdir()) == sorted(BAD_CASES)


def test_error_text_reads_like_a_compiler_message():
    e = load_bad("misspelt-action.yaml")
    path = BAD / "misspelt-action.yaml"
    assert str(e) == (
        f"{path}:4:5: unknown step action 'atach' in step 2\n"
        f"  hint: {e.hint}\n"
        "    3 |   - start:\n"
        "  > 4 |   - atach: {interface: {id: n1, type: user}}")
    assert e.hint.startswith("did you mean 'attach'? allowed: start, destroy, ")
    assert e.mark == Mark(str(path), 4, 5)


# ---- good files -----------------------------------------------------------------------------

def test_doc_example_loads_into_the_model():
    path = str(GOOD / "seed-hostdev-then-hotplug.yaml")
    [sc] = load_file(path)
    assert (sc.name, sc.file, sc.tags) == ("seed-hostdev-then-hotplug", path, ["seed", "hotplug"])
    assert sc.guards.startswith("f8e712fe (2016): with a hostdevN alias") and sc.guards.endswith("8f74f52).")
    assert sc.requires == {"libvirt": ">=9.0.0", "vfs": 2}
    assert {s: (d.kind, d.mark.line) for s, d in sc.devices.items()} == {"vf1": ("vf", 8), "vf2": ("vf", 9)}
    lan = sc.networks["lan"]
    assert (lan.forward, lan.vfs, lan.pf, lan.create, lan.mark.line) == ("nat", [], None, True, 11)
    d = sc.domain
    assert (d.type, d.machine, d.memory_mib, d.vcpus, d.guest, d.root_ports, d.xml) == ("auto", "q35", 128, 1, False, 8, None)
    assert d.devices == [Device("hn0", "interface", {"id": "hn0", "type": "hostdev", "device": "vf1"}, Mark(path, 16, 7))]
    assert [(s.action, s.flags, s.mark.line) for s in sc.steps] == [("start", "live", 18), ("attach", "live", 20),
                                                                      ("attach", "live", 22)]
    start, n1, hn1 = sc.steps
    assert (start.arg, start.expect) == (None, {"aliases": {"hn0": "hostdev0"}})
    assert n1.arg == Device("n1", "interface", {"id": "n1", "type": "network", "network": "lan"}, Mark(path, 20, 13))
    assert n1.expect == {"aliases": {"n1": "net0"}} and n1.describe() == "attach n1"
    assert hn1.arg.spec == {"id": "hn1", "type": "hostdev", "device": "vf2"}


def test_multi_file_shares_sections_and_lets_a_scenario_replace_them():
    path = str(GOOD / "multi.yaml")
    pool, raw = load_file(path)
    assert [pool.name, raw.name] == ["pool-nic-next-to-hostdev", "raw-domain"]
    assert pool.mark == Mark(path, 23, 5) and raw.mark.line == 46
    for sc in (pool, raw):
        assert {s: d.kind for s, d in sc.devices.items()} == {"vf1": "vf", "pf1": "pf", "e1": "e1000e"}
        assert sc.networks["pool"].pf == "pf1" and sc.networks["lan"].create is False
    assert (pool.domain.machine, pool.domain.memory_mib, pool.domain.guest) == ("pc", 256, True)
    h0, x0 = pool.domain.devices
    assert (h0.id, h0.kind, h0.spec) == ("h0", "hostdev", {"id": "h0", "device": "e1", "alias": "ua-h0"})
    assert (x0.id, x0.kind, list(x0.spec)) == ("x0", "xml", ["xml"])
    assert "{{not a placeholder}}" in x0.spec["xml"]
    steps = pool.steps
    assert [s.action for s in steps] == ["network-define", "network-start", "start", "attach", "update", "repeat", "detach"]
    assert steps[0].arg == "lan"
    plug = steps[3]
    assert (plug.name, plug.flags, plug.timeout, plug.describe()) == ("plug pool nic", "both", 30.0, "plug pool nic")
    assert plug.expect == {"aliases": {"p1": "hostdev1"}, "changes": ["x0"]}
    assert plug.arg.spec["mac"] == "52:54:00:aa:bb:cc"
    assert steps[4].arg == {"id": "p1", "link": "down"}
    rep = steps[5]
    assert (rep.arg, rep.times, [s.action for s in rep.steps]) == (None, 3, ["attach", "detach", "wait-removed"])
    assert rep.steps[0].arg.kind == "hostdev" and rep.steps[1].expect == {"removed": False}
    assert rep.steps[2].arg == "r1" and rep.steps[2].mark.line == 43
    assert steps[6].expect == {"error": "re:^Requested operation"}
    assert raw.requires == {"qemu": ">=8.0, <10", "e1000e": 1, "domain_type": "kvm"}
    assert raw.domain.devices == [] and raw.domain.guest is True and "{guest.kernel}" in raw.domain.xml
    assert raw.domain.mark.line == 50
    assert pool.domain is not raw.domain and pool.devices["vf1"] is not raw.devices["vf1"]


def test_anchors_and_merge_keys_are_applied():
    [sc] = load_file(GOOD / "anchors.yaml")
    assert sc.name == "anchors-and-merges" and sc.file == str(GOOD / "anchors.yaml")
    assert (sc.networks["wan"].forward, sc.networks["wan"].create) == ("nat", False)
    assert sc.steps[1].arg.spec == {"id": "n1", "type": "network", "network": "lan", "model": "e1000e", "alias": "ua-n1"}
    assert [s.action for s in sc.steps] == ["start", "attach", "detach", "suspend-resume", "check"]


def test_str_bytes_crlf_and_bom_load_the_same():
    text = (GOOD / "seed-hostdev-then-hotplug.yaml").read_text()
    variants = [text, text.encode(), text.replace("\n", "\r\n").encode(), b"\xef\xbb\xbf" + text.encode()]
    loaded = [load_text(v, "scenarios/seed.yaml")[0] for v in variants]
    assert all(sc == loaded[0] for sc in loaded)
    assert loaded[0].steps[2].mark == Mark("scenarios/seed.yaml", 22, 5)


def test_crlf_errors_point_at_the_right_line():
    text = "guards: x\r\nsteps:\r\n  - start:\r\n  - detach: nope\r\n"
    with pytest.raises(ScenarioError) as info:
        load_text(text, "crlf.yaml")
    assert info.value.line == 4 and "> 4 |   - detach: nope" in info.value.snippet


# ---- inline edge cases ------------------------------------------------------------------------

@pytest.mark.parametrize("text, line, message", [
    ("guards: x\nsteps:\n  - start:\nx: " + "[" * 70 + "]" * 70 + "\n", 4, "nesting deeper than"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcde", "bcdef")),
     4, "expands to more than"),
    ("guards: x\nsteps:\n  - attach: {id: x1, xml: '<a>{x1}</a>'}\n", 3, "'{x1}' in raw XML is not a placeholder"),
    ("guards: x\nsteps:\n  - attach: {interface: {id: n1, type: user}, id: n1}\n", 3, "'id' belongs inside"),
    ("guards: x\nsteps:\n  - attach: {interface: {id: n1, type: user}, hostdev: {id: h, device: d}}\n", 3,
     "has 2 device kinds"),
    ("guards: x\nsteps:\n  - attach: {}\n", 3, "has no device kind"),
    ("guards: x\nnetworks:\n  p: {forward: hostdev}\nsteps:\n  - start:\n", 3, "needs exactly one of `vfs` and `pf`"),
    ("guards: x\nnetworks:\n  n: {forward: nat, vfs: [v]}\nsteps:\n  - start:\n", 3, "'vfs' only applies to forward: hostdev"),
    ("guards: x\nsteps:\n  - repeat: {times: 0, steps: [check: null]}\n", 3, "too small (must be >= 1)"),
    ("guards: x\ntags: [a, a]\nsteps:\n  - start:\n", 2, "'a' is listed twice"),
    ("guards: x\nsteps:\n  - start:\n---\nguards: y\n", 4, "more than one YAML document"),
    ("guards: x\nsteps:\n  - start:\n    name: \x07\n", 4, "character YAML does not allow"),
    ("guards: 2016-13-45\nsteps:\n  - start:\n", 1, "cannot read '2016-13-45'"),
    ("guards: x\nsteps:\n  - start:\n  - check: {<<: 1}\n", 4, "`<<` merge needs a mapping"),
])
def test_edge_cases(text, line, message):
    with pytest.raises(ScenarioError) as info:
        load_text(text, "edge.yaml")
    e = info.value
    assert message in e.message, str(e)
    assert (e.file, e.line) == ("edge.yaml", line) and e.hint


def test_double_braces_are_literal_and_ids_have_a_mac_placeholder():
    [sc] = load_text("guards: x\nsteps:\n  - attach: {id: x1, xml: '<a>{{x1}} {x1.mac}</a>'}\n  - detach: x1\n",
                     "braces.yaml")
    assert sc.steps[0].arg.spec == {"xml": "<a>{{x1}} {x1.mac}</a>"}


def test_unreadable_file_is_a_scenario_error(tmp_path):
    with pytest.raises(ScenarioError) as info:
        load_file(tmp_path / "missing.yaml")
    assert info.value.file == str(tmp_path / "missing.yaml") and "cannot read" in info.value.message


def test_duplicate_names_across_files_point_at_the_second(tmp_path):
    body = "guards: x\nsteps:\n  - start:\n"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "same.yaml").write_text(body)
    (tmp_path / "b" / "same.yaml").write_text(body)
    scenarios = load_file(tmp_path / "a" / "same.yaml") + load_file(tmp_path / "b" / "same.yaml")
    with pytest.raises(ScenarioError) as info:
        check_unique_names(scenarios)
    e = info.value
    assert (e.file, e.line) == (str(tmp_path / "b" / "same.yaml"), 1)
    assert str(tmp_path / "a" / "same.yaml") in e.hint and "> 1 | guards: x" in e.snippet
    check_unique_names(scenarios[:1] + load_file(GOOD / "multi.yaml"))


# ---- versions -------------------------------------------------------------------------------

@pytest.mark.parametrize("version, spec, ok", [
    ("9.0.0", ">=9.0.0", True),
    ("9.0", ">=9.0.0", True),
    ("8.10.0", ">=8.9", True),
    ("10.0.0", ">=9.0, <10", False),
    ("9.5.1", ">=9.0, <10", True),
    ("8.2.2 (Debian 1:8.2.2+ds-0ubuntu1)", "==8.2.2", True),
    ("8.2.2", "!=8.2.2", False),
    ("7.0", ">7", False),
    ("7.0.1", ">7", True),
    ("6.9", "<= 6.10", True),
])
def test_version_satisfies(version, spec, ok):
    assert version_satisfies(version, spec) is ok


@pytest.mark.parametrize("spec", ["9.0.0", ">=", ">=9.x", "=>9", ">=9,", ""])
def test_bad_version_constraint_is_refused(spec):
    with pytest.raises(ValueError, match="bad version constraint"):
        parse_version_constraint(spec)


def test_schema_constraint_pattern_agrees_with_the_parser():
    pattern = json.loads(SCHEMA_PATH.read_text())["$defs"]["versionConstraint"]["pattern"]
    for spec in [">=9.0.0", ">=8.0, <10", "== 1", "9.0.0", ">=9,", "=>9"]:
        try:
            parse_version_constraint(spec)
            parses = True
        except ValueError:
            parses = False
        assert bool(re.search(pattern, spec)) is parses, spec


# ---- the schema itself ------------------------------------------------------------------------

def test_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(json.loads(SCHEMA_PATH.read_text()))


def test_schema_actions_match_the_format_doc():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "scenario-format.md").read_text()
    table = doc.split("| action | argument | does |", 1)[1].split("\n\n", 1)[0]
    documented = [a for row in table.splitlines()[2:] for a in re.findall(r"`([a-z-]+)`", row.split("|")[1])]
    assert sorted(actions()) == sorted(documented)
