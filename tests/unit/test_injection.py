"""Scenario values that reach XML or a shell in the bed cannot change what runs.

Where scenario strings go (audit, see also the report of the change that added this file):
- shell (bed.ssh): only the domain name `hx-<scenario name>-<tag>-<hex>` (runner.py: qemu.log tail and
  collection; steps.py: console log grep, save file rm) and PCI addresses the harness read from the bed.
  So the scenario name must be shell-inert: the loader refuses anything but `[a-z0-9][a-z0-9-]*`, and
  (the gap this file found) also a trailing newline, which Python's `$` let through every schema pattern.
- XML (xmlbuild, ElementTree): names, syms, bridge, dev, MAC, alias. The loader refuses hostile values for
  each; xmlbuild also keeps any value it is handed as data (the literal string, no extra element).
- raw `xml:` is pasted into libvirt on purpose (incident reproduction); it never reaches a shell.
"""
from __future__ import annotations

import json
import shlex
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.engine import xmlbuild
from harness.engine.xmlbuild import PciAddr, Resolved
from harness.scenario.loader import ScenarioError, load_text
from harness.scenario.model import Device, Domain, Network

HOSTILE = ["a'b", 'a"b', "<x/>", "$(touch /tmp/pwned)", "`id`", ";rm -rf /", "../../etc/passwd", "a\nb",
           "ok\n"]   # the last one: `$` in Python matches before a final newline

FILE = "inj.yaml"

# One scenario per field; @@ is where the hostile value goes (as a YAML double-quoted string, on its own line).
FIELDS = {
    "scenario name": """\
guards: x
name: @@
steps:
  - start:
""",
    "tag": """\
guards: x
tags:
  - @@
steps:
  - start:
""",
    "host device sym": """\
guards: x
devices:
  @@: {kind: vf}
steps:
  - start:
""",
    "network sym": """\
guards: x
networks:
  @@: {forward: nat}
steps:
  - start:
""",
    "device id": """\
guards: x
domain:
  devices:
    - interface:
        id: @@
        type: user
steps:
  - start:
""",
    "interface device (sym)": """\
guards: x
devices:
  vf1: {kind: vf}
domain:
  devices:
    - interface:
        id: h1
        type: hostdev
        device: @@
steps:
  - start:
""",
    "interface network (sym)": """\
guards: x
networks:
  lan: {forward: nat}
domain:
  devices:
    - interface:
        id: n1
        type: network
        network: @@
steps:
  - start:
""",
    "bridge": """\
guards: x
domain:
  devices:
    - interface:
        id: b1
        type: bridge
        bridge: @@
steps:
  - start:
""",
    "direct dev": """\
guards: x
domain:
  devices:
    - interface:
        id: d1
        type: direct
        dev: @@
steps:
  - start:
""",
    "mac": """\
guards: x
domain:
  devices:
    - interface:
        id: u1
        type: user
        mac: @@
steps:
  - start:
""",
    "interface alias": """\
guards: x
domain:
  devices:
    - interface:
        id: u1
        type: user
        alias: @@
steps:
  - start:
""",
    "hostdev alias": """\
guards: x
devices:
  e1: {kind: e1000e}
domain:
  devices:
    - hostdev:
        id: h0
        device: e1
        alias: @@
steps:
  - start:
""",
    "detach id": """\
guards: x
steps:
  - start:
  - detach: @@
""",
    "network step argument": """\
guards: x
networks:
  lan: {forward: nat, create: false}
steps:
  - network-start: @@
""",
    "declared host bridge": """\
guards: x
host:
  bridges:
    - @@
steps:
  - start:
""",
}


def _with(template: str, value: str) -> tuple[str, int]:
    lines = template.splitlines()
    line = next(i for i, ln in enumerate(lines, 1) if "@@" in ln)
    return template.replace("@@", json.dumps(value)), line


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_the_templates_load_with_a_plain_value(field):
    text, _ = _with(FIELDS[field], {"mac": "52:54:00:12:34:56", "interface alias": "ua-x",
                                    "hostdev alias": "ua-x", "interface device (sym)": "vf1",
                                    "interface network (sym)": "lan", "network step argument": "lan",
                                    "scenario name": "plain", "bridge": "virbr0", "direct dev": "enp2s0",
                                    "declared host bridge": "virbr0"}.get(field, "ok1"))
    if field == "detach id":
        text = text.replace("  - start:\n", "  - start:\n  - attach: {interface: {id: ok1, type: user}}\n")
    assert load_text(text, FILE)


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
@pytest.mark.parametrize("field", sorted(FIELDS))
def test_hostile_value_is_refused_at_its_line(field, value):
    text, line = _with(FIELDS[field], value)
    with pytest.raises(ScenarioError) as ei:
        load_text(text, FILE)
    e = ei.value
    assert (e.file, e.line) == (FILE, line), (str(e), line)
    assert str(e).startswith(f"{FILE}:{line}:")


@pytest.mark.parametrize("stem", ["a'b", "a$(id)", "a;b", "a b", "a`id`"])
def test_file_stem_that_is_not_a_name_is_refused(stem):
    with pytest.raises(ScenarioError, match="file stem"):
        load_text("guards: x\nsteps:\n  - start:\n", f"scenarios/{stem}.yaml")


# --- whatever the loader accepts is inert in a shell ----------------------------------------------

name_like = st.text(st.sampled_from("ab-_.z09'\"$`;/ \n\t<>()&|*?!#~"), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(name_like)
def test_accepted_names_need_no_shell_quoting(value):
    """The scenario name (part of the domain name in shell commands) and the bridge/dev names (host
    interface names) are, when accepted at all, plain words: shlex.quote leaves them alone."""
    for field in ("scenario name", "bridge", "direct dev"):
        text, _ = _with(FIELDS[field], value)
        try:
            load_text(text, FILE)
        except ScenarioError:
            continue
        assert shlex.quote(value) == value and "\n" not in value, (field, value)


# --- whatever reaches xmlbuild stays data -----------------------------------------------------------

def _resolved() -> Resolved:
    r = Resolved(salt="run-1")
    r.addrs.update({"vf1": PciAddr.parse("0000:01:10.0"), "e1": PciAddr.parse("0000:02:00.0")})
    return r


def _shape(el: ET.Element) -> list:
    return [(e.tag, sorted(e.attrib)) for e in el.iter()]


def _iface(dev_id: str, **spec) -> Device:
    return Device(dev_id, "interface", {"id": dev_id, **spec})


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_xml_attributes_are_exactly_the_literal_value(value):
    cases = [  # (device with the hostile value, same device with a plain value, element path, attribute)
        (_iface("b1", type="bridge", bridge=value), _iface("b1", type="bridge", bridge="virbr0"), "source", "bridge"),
        (_iface("d1", type="direct", dev=value), _iface("d1", type="direct", dev="enp2s0"), "source", "dev"),
        (_iface("n1", type="network", network=value), _iface("n1", type="network", network="lan"), "source",
         "network"),
        (_iface("u1", type="user", alias=value), _iface("u1", type="user", alias="ua-x"), "alias", "name"),
        (_iface("u2", type="user", mac=value), _iface("u2", type="user", mac="52:54:00:00:00:01"), "mac", "address"),
        (Device("h0", "hostdev", {"id": "h0", "device": "e1", "alias": value}),
         Device("h0", "hostdev", {"id": "h0", "device": "e1", "alias": "ua-x"}), "alias", "name"),
    ]
    for evil, plain, path, attr in cases:
        text = xmlbuild.device_xml(evil, _resolved())
        el = ET.fromstring(text)
        assert el.find(path).get(attr) == value, text
        assert _shape(el) == _shape(ET.fromstring(xmlbuild.device_xml(plain, _resolved()))), text


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_domain_and_network_names_are_exactly_the_literal_value(value):
    dom = ET.fromstring(xmlbuild.domain_xml(value, Domain(), _resolved(), "qemu", [], value))
    plain = ET.fromstring(xmlbuild.domain_xml("hx-x", Domain(), _resolved(), "qemu", [], "/var/log/x.log"))
    assert dom.find("name").text == value
    assert dom.find("devices/serial/source").get("path") == value
    assert _shape(dom) == _shape(plain)
    raw = ET.fromstring(xmlbuild.domain_xml(value, Domain(xml="<domain><name>x</name></domain>"), _resolved(),
                                            "qemu", [], "/x"))
    assert raw.find("name").text == value and len(raw.findall(".//name")) == 1
    net = ET.fromstring(xmlbuild.network_xml(value, Network("lan", "nat"), _resolved(), 3))
    assert net.find("name").text == value
    assert _shape(net) == _shape(ET.fromstring(xmlbuild.network_xml("hx-n", Network("lan", "nat"), _resolved(), 3)))
