"""Hostile input (issue 13): no scenario file can hang or crash collection, and raw XML reaches nothing on
the host beyond the run's leased PCI devices, its own networks and what it declares under `host:`.

Every bad file is one located error (file:line:column, a hint, a snippet) in well under a second, and
the other files still collect. The fuzz tests below run every load under a 2 s alarm, so a hang fails
the example instead of the suite.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.engine import xmlbuild
from harness.engine.xmlbuild import PciAddr, Resolved
from harness.scenario import loader
from harness.scenario.loader import PYTEST_MARKS, ScenarioError, load_file, load_text
from harness.scenario.model import Domain

REPO = Path(__file__).resolve().parents[2]
BAD = REPO / "tests" / "data" / "bad"
FILE = "hostile.yaml"
HANG_S = 2.0
FUZZ = settings(max_examples=150, deadline=int(HANG_S * 1000),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Hang(Exception):
    pass


@contextlib.contextmanager
def within(seconds: float = HANG_S):
    """Fail (instead of hanging the suite) when the block runs longer than `seconds`."""
    def alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def located(text: str | bytes, filename: str = FILE, **kw) -> ScenarioError | None:
    """Loads (None), or the ScenarioError, which must point at a line the file has; within 2 s, no other error."""
    with within():
        try:
            load_text(text, filename, **kw)
            return None
        except ScenarioError as e:
            s = text if isinstance(text, str) else text.decode("utf-8", errors="replace")
            lines = len(re.findall(r"\r\n|[\n\r\x85\u2028\u2029]", s)) + 1
            assert e.file == filename and 1 <= e.line <= lines, (e.line, lines, str(e))
            assert e.column >= 1 and e.message and e.hint, str(e)
            assert str(e).startswith(f"{filename}:{e.line}:{e.column}: ")
            return e


def refused(text: str, **kw) -> ScenarioError:
    e = located(text, **kw)
    assert e is not None, "loaded, but must be refused"
    return e


# ---- 1: merges and aliases count against the node limit -----------------------------------------

def merge_bomb(levels: int, fan: int = 2, empty: bool = False) -> str:
    lines = ["guards: x", "steps:", "  - start:", "b0: &b0 {}" if empty else "b0: &b0 {k: v}"]
    lines += [f"b{i}: &b{i} {{<<: [{', '.join([f'*b{i - 1}'] * fan)}]}}" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text", [
    merge_bomb(40), merge_bomb(40, fan=8), merge_bomb(6, fan=300, empty=True), merge_bomb(40, fan=2, empty=True),
], ids=["doubling", "fan-8", "empty-sources", "empty-doubling"])
def test_merge_bombs_are_a_located_error_in_well_under_a_second(text):
    t0 = time.monotonic()
    e = refused(text)
    assert time.monotonic() - t0 < 1.0
    assert "expands to more than" in e.message and "`<<` merges" in e.hint
    assert e.line > 4 and e.snippet.count(">") == 1   # the top-level key whose value explodes


def test_the_reviewed_bomb_file_is_refused_in_well_under_a_second():
    bomb = BAD / "merge-bomb.yaml"
    assert bomb.stat().st_size < 1300 and bomb.read_text().count("<<") == 40
    t0 = time.monotonic()
    with within(), pytest.raises(ScenarioError, match="expands to more than"):
        load_file(bomb)
    assert time.monotonic() - t0 < 1.0


def test_a_long_merge_chain_is_refused_not_a_recursion_error():
    lines = ["guards: x", "steps:", "  - start:", "c0: &c0 {k: v}"]
    lines += [f"c{i}: &c{i} {{<<: *c{i - 1}}}" for i in range(1, 800)]
    e = refused("\n".join(lines) + "\n")   # whichever limit comes first, never a RecursionError
    assert "merges nested deeper than 64" in e.message or "expands to more than" in e.message, str(e)
    assert "merges nested deeper than 64" in refused("\n".join(lines[:80]) + "\n").message


def test_merges_a_scenario_really_uses_still_load():
    [sc] = load_text(textwrap.dedent("""\
        guards: x
        networks:
          lan: &net {forward: nat}
          wan: {<<: *net, create: false}
        steps:
          - start:
        """), FILE)
    assert (sc.networks["wan"].forward, sc.networks["wan"].create) == ("nat", False)


def test_a_file_over_128_kib_is_refused_before_parsing(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"guards: x\nsteps:\n  - start:\n" + b"# filler\n" * 15_000)
    with within(), pytest.raises(ScenarioError, match="larger than 128 KiB") as info:
        load_file(big)
    assert info.value.line == 1


# ---- 8: numbers, regexes ---------------------------------------------------------------------------

NUMBER_FIELDS = {   # field -> a scenario with @@ where the number goes
    "timeout": "guards: x\nsteps:\n  - start:\n    timeout: @@\n",
    "repeat.times": "guards: x\nsteps:\n  - repeat:\n      times: @@\n      steps: [check: null]\n",
    "root_ports": "guards: x\ndomain:\n  root_ports: @@\nsteps:\n  - start:\n",
    "memory_mib": "guards: x\ndomain:\n  memory_mib: @@\nsteps:\n  - start:\n",
    "vcpus": "guards: x\ndomain:\n  vcpus: @@\nsteps:\n  - start:\n",
    "requires.vfs": "guards: x\nrequires:\n  vfs: @@\nsteps:\n  - start:\n",
}
HUGE = ["9" * 400, "0x" + "f" * 5000, "0b" + "1" * 20000, "1:" * 300 + "0", "-" + "9" * 4000, "1" * 5000]
NON_FINITE = [".inf", "-.inf", ".nan", ".NaN", "1.0e+999", "-1.5e+400"]


@pytest.mark.parametrize("field", sorted(NUMBER_FIELDS))
@pytest.mark.parametrize("value", HUGE + NON_FINITE)
def test_huge_and_non_finite_numbers_are_a_located_error(field, value):
    template = NUMBER_FIELDS[field]
    e = refused(template.replace("@@", value))
    assert e.line == template[:template.index("@@")].count("\n") + 1, str(e)


@pytest.mark.parametrize("field, value, message", [
    ("timeout", "3601", "too large (must be <= 3600)"),
    ("timeout", "0", "too small (must be > 0)"),
    ("repeat.times", "1001", "too large (must be <= 1000)"),
    ("root_ports", "33", "too large (must be <= 32)"),
    ("memory_mib", "16385", "too large (must be <= 16384)"),
    ("vcpus", "65", "too large (must be <= 64)"),
    ("timeout", ".inf", "'.inf' is not a finite number"),
])
def test_limits_are_named_in_the_error(field, value, message):
    assert message in refused(NUMBER_FIELDS[field].replace("@@", value)).message


@pytest.mark.parametrize("field, value", [("timeout", "3600"), ("timeout", "0.5"), ("repeat.times", "1000"),
                                          ("root_ports", "32"), ("memory_mib", "16384"), ("vcpus", "64")])
def test_the_maximums_themselves_load(field, value):
    assert located(NUMBER_FIELDS[field].replace("@@", value)) is None


def test_nested_repeats_multiply_into_the_run_limit():
    text = ("guards: x\nsteps:\n  - repeat:\n      times: 50\n      steps:\n        - repeat:\n"
            "            times: 50\n            steps: [check: null]\n")
    e = refused(text)
    assert "more than 2000" in e.message and e.line == 4
    assert "more than 2000" in refused(text.replace("times: 50", "times: 40", 1)).message   # 1 + 40 * 51 = 2041
    assert located(text.replace("times: 50", "times: 39", 1)) is None                     # 1 + 39 * 51 = 1990


REGEX = "guards: x\nsteps:\n  - start:\n    expect: {error: @@}\n"


@pytest.mark.parametrize("pattern, message", [
    ("(" * 30 + "x" + ")" * 30, "groups nested more than 20 deep"),
    ("(?:" * 120 + ")" * 120, "groups nested more than 20 deep"),
    ("(" * 240 + ")" * 240, "groups nested more than 20 deep"),
    ("a{99999999999999999999}", "the repetition number is too large"),
    ("(", "missing ), unterminated subpattern"),
    ("x" * 600, "too long (at most 500 characters)"),
])
def test_regexes_that_would_crash_or_recurse_are_a_located_error(pattern, message):
    e = refused(REGEX.replace("@@", json.dumps("re:" + pattern)))
    assert message in e.message and e.line == 4


def test_the_catalog_style_regexes_load():
    for pattern in ["re:PCI device 0000:[0-9a-f:.]+ is in use by driver QEMU",
                    "re:cannot migrate domain|non-USB host devices|VFIO migration", "re:" + "(a)" * 20]:
        assert located(REGEX.replace("@@", json.dumps(pattern))) is None


def test_a_recursion_error_anywhere_is_still_a_located_error(monkeypatch):
    def deep(*a, **kw):
        raise RecursionError("maximum recursion depth exceeded")
    monkeypatch.setattr(loader._Loader, "validate", deep)
    e = refused("guards: x\nsteps:\n  - start:\n")
    assert "nests too deeply" in e.message


# ---- 6: tags that are pytest marks ------------------------------------------------------------------

@pytest.mark.parametrize("mark", sorted(PYTEST_MARKS))
def test_a_tag_that_is_a_pytest_mark_is_refused_at_its_line(mark):
    e = refused(f"guards: x\ntags:\n  - seed\n  - {mark}\nsteps:\n  - start:\n")
    assert (e.line, e.message) == (4, f"tag '{mark}' is a pytest mark") and "rename the tag" in e.hint


def test_marks_registered_in_the_session_are_refused_too():
    text = "guards: x\ntags: [seed, slow]\nsteps:\n  - start:\n"
    assert located(text) is None
    assert "tag 'slow' is a pytest mark" in refused(text, reserved_tags={"slow", "bed"}).message


# ---- 5: raw XML reaches nothing on the host it did not declare ---------------------------------------

HEAD = """\
guards: x
devices:
  vf1: {kind: vf}
  e1: {kind: e1000e}
networks:
  lan: {forward: nat}
"""


def raw_device(xml: str, extra: str = "") -> str:
    return HEAD + extra + "domain:\n  devices:\n    - id: d1\n      xml: |\n" + textwrap.indent(
        textwrap.dedent(xml).strip() + "\n", " " * 8) + "steps:\n  - start:\n"


def raw_attach(xml: str, extra: str = "") -> str:
    return HEAD + extra + "steps:\n  - start:\n  - attach:\n      id: d1\n      xml: |\n" + textwrap.indent(
        textwrap.dedent(xml).strip() + "\n", " " * 8)


def raw_domain(xml: str, extra: str = "") -> str:
    return HEAD + extra + "domain:\n  xml: |\n" + textwrap.indent(textwrap.dedent(xml).strip() + "\n", " " * 4) \
        + "steps:\n  - start:\n"


# (XML, the 1-based line inside the XML that the error must point at, text of the message)
REFUSED_DEVICES = {
    "usb hostdev by vendor/product": ("""\
        <hostdev mode='subsystem' type='usb'>
          <source><vendor id='0x1234'/><product id='0xbeef'/></source>
        </hostdev>""", 1, "<hostdev mode='subsystem' type='usb'>"),
    "scsi hostdev": ("<hostdev mode='subsystem' type='scsi'><source><adapter name='scsi_host0'/></source></hostdev>",
                     1, "type='scsi'"),
    "capabilities hostdev": ("<hostdev mode='capabilities' type='storage'><source><block>/dev/sda</block></source>"
                             "</hostdev>", 1, "mode='capabilities'"),
    "pci hostdev, literal address": ("""\
        <hostdev mode='subsystem' type='pci'>
          <source>
            <address domain='0x0000' bus='0x00' slot='0x19' function='0x0'/>
          </source>
        </hostdev>""", 3, "by a literal address"),
    "hostdev interface, literal address": ("""\
        <interface type='hostdev'>
          <source><address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/></source>
        </interface>""", 2, "by a literal address"),
    "disk on a host block device": ("""\
        <disk type='block' device='disk'>
          <source dev='/dev/sda'/>
          <target dev='vdb'/>
        </disk>""", 1, "<disk type='block'> with a <source> uses host storage"),
    "disk on a host file": ("<disk type='file'><source file='/etc/shadow'/><target dev='vdb'/></disk>", 1,
                            "host storage"),
    "network disk": ("<disk type='network'><source protocol='nbd' name='x'><host name='10.0.0.1'/></source>"
                     "<target dev='vdb'/></disk>", 1, "host storage"),
    "filesystem": ("<filesystem type='mount'><source dir='/'/><target dir='root'/></filesystem>", 1,
                   "<filesystem type='mount'>"),
    "serial on a host file": ("""\
        <serial type='file'>
          <source path='/root/.ssh/authorized_keys'/>
        </serial>""", 1, "<serial type='file'> connects to a host file"),
    "console on a host device": ("<console type='dev'><source path='/dev/ttyS0'/></console>", 1, "type='dev'"),
    "channel on a host socket": ("<channel type='unix'><source mode='bind' path='/run/x'/>"
                                 "<target type='virtio'/></channel>", 1, "type='unix'"),
    "serial on a host port": ("<serial type='tcp'><source mode='bind' host='0.0.0.0' service='4555'/></serial>", 1,
                              "type='tcp'"),
    "serial log file": ("""\
        <serial type='pty'>
          <log file='/var/log/x.log'/>
        </serial>""", 2, "<log file='/var/log/x.log'> names a host path"),
    "interface on an undeclared host network": ("""\
        <interface type='network'>
          <source network='default'/>
        </interface>""", 2, "uses host network 'default', which the scenario does not declare"),
    "interface on an undeclared host bridge": ("<interface type='bridge'><source bridge='br0'/></interface>", 1,
                                               "uses host bridge 'br0'"),
    "macvtap on an undeclared host NIC": ("<interface type='direct'><source dev='eth0' mode='bridge'/></interface>",
                                          1, "uses host NIC 'eth0'"),
    "interface script": ("""\
        <interface type='ethernet'>
          <script path='/tmp/x.sh'/>
        </interface>""", 2, "<script> in an <interface> runs a host script"),
    "interface backend": ("<interface type='user'><backend tap='/dev/net/tun'/></interface>", 1, "<backend>"),
    "existing host tap": ("<interface type='ethernet'><target dev='tap9' managed='no'/></interface>", 1,
                          "existing host tap"),
    "vhostuser interface": ("<interface type='vhostuser'><source type='unix' path='/tmp/s' mode='client'/>"
                            "</interface>", 1, "<interface type='vhostuser'> uses host sockets"),
    "host TPM": ("<tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>", 1,
                 "<tpm> uses the host's TPM"),
    "host smartcard": ("<smartcard mode='host'/>", 1, "smartcard reader"),
    "shared memory": ("<shmem name='x'/>", 1, "shared memory"),
    "host input device": ("<input type='evdev'><source dev='/dev/input/event0'/></input>", 1, "names a host path"),
    "rng on a host device": ("<rng model='virtio'><backend model='random'>/dev/hwrng</backend></rng>", 1,
                             "names a host path"),
    "not XML": ("""\
        <interface type='user'>
          <model type='virtio'>
        </interface>""", 3, "raw XML does not parse: mismatched tag"),
    "entities": ("<!DOCTYPE i [<!ENTITY a 'a'>]><interface type='user'/>", 1, "<!DOCTYPE>"),
    "a domain as a device": ("<domain type='kvm'/>", 1, "<domain> is not a device"),
}

REFUSED_DOMAINS = {
    "qemu:commandline": ("""\
        <domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
          <memory unit='MiB'>128</memory>
          <qemu:commandline>
            <qemu:arg value='-device'/>
            <qemu:arg value='vfio-pci,host=0000:00:19.0'/>
          </qemu:commandline>
        </domain>""", 3, "<qemu:commandline> hands options to the hypervisor"),
    "qemu namespace under another prefix": ("<domain type='kvm' xmlns:q='http://libvirt.org/schemas/domain/qemu/1.0'>"
                                            "<q:capabilities><q:add capability='x'/></q:capabilities></domain>", 1,
                                            "<qemu:capabilities>"),
    "qemu prefix not declared": ("<domain type='kvm'>\n<qemu:commandline/>\n</domain>", 2, "unbound prefix"),
    "host kernel": ("<domain type='kvm'><os><type>hvm</type><kernel>/etc/shadow</kernel></os></domain>", 1,
                    "<kernel>/etc/shadow</kernel> names a host path"),
    "emulator": ("<domain type='kvm'>\n<devices>\n<emulator>/bin/sh</emulator>\n</devices>\n</domain>", 3,
                 "<emulator>/bin/sh</emulator>"),
    "loader": ("<domain type='kvm'><os><loader readonly='yes'>/tmp/fw.fd</loader></os></domain>", 1, "<loader>"),
    "seclabel": ("<domain type='kvm'><seclabel type='none'/></domain>", 1, "<seclabel>"),
    "lxc domain": ("<domain type='lxc'><name>x</name></domain>", 1, "<domain type='lxc'> is not a QEMU domain"),
    "malformed": ("""\
        <domain type='kvm'>
          <memory unit='MiB'>128</memory>
          <devices>
            <interface type='user'>
          </devices>
        </domain>""", 5, "raw XML does not parse"),
    "two roots": ("<domain type='kvm'/>\n<domain type='kvm'/>", 2, "junk after document element"),
    "no element": ("<!-- only a comment -->", 1, "raw XML does not parse: no element found"),
    "a device as the domain": ("<interface type='user'/>", 1, "<interface> is not a domain"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_DEVICES))
def test_raw_device_xml_reaching_the_host_is_refused_at_its_line(case):
    xml, xml_line, message = REFUSED_DEVICES[case]
    for text, first_xml_line in ((raw_device(xml), 11), (raw_attach(xml), 12)):   # at start, and attached
        e = refused(text)
        assert message in e.message, str(e)
        assert e.line == first_xml_line + xml_line - 1, str(e)


@pytest.mark.parametrize("case", sorted(REFUSED_DOMAINS))
def test_raw_domain_xml_reaching_the_host_is_refused_at_its_line(case):
    xml, xml_line, message = REFUSED_DOMAINS[case]
    e = refused(raw_domain(xml))
    assert message in e.message, str(e)
    assert e.line == 9 + xml_line - 1, str(e)


ALLOWED_DEVICES = [
    "<interface type='hostdev' managed='yes'><source><address type='pci' {vf1.address}/></source></interface>",
    "<hostdev mode='subsystem' type='pci' managed='yes'><source><address {e1.address}/></source></hostdev>",
    "<interface type='network'><mac address='{d1.mac}'/><source network='{lan.name}'/></interface>",
    "<interface type='direct'><source dev='{e1.ifname}' mode='bridge'/></interface>",
    "<interface type='user'><model type='virtio'/><alias name='ua-x'/></interface>",
    "<interface type='ethernet'><model type='virtio'/></interface>",
    "<disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>",
    "<serial type='pty'><target port='0'/></serial>",
    "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>",
]


@pytest.mark.parametrize("xml", ALLOWED_DEVICES)
def test_raw_device_xml_within_the_run_loads(xml):
    assert located(raw_device(xml)) is None


@pytest.mark.parametrize("xml, host", [
    ("<interface type='network'><source network='default'/></interface>", "networks: [default]"),
    ("<interface type='bridge'><source bridge='virbr0'/></interface>", "bridges: [virbr0]"),
    ("<interface type='direct'><source dev='enp2s0' mode='bridge'/></interface>", "nics: [enp2s0]"),
])
def test_host_networks_bridges_and_nics_load_once_declared(xml, host):
    assert "does not declare" in refused(raw_device(xml)).message
    assert located(raw_device(xml, f"host: {{{host}}}\n")) is None


def test_host_takes_only_networks_bridges_and_nics():
    e = refused("guards: x\nhost: {bridge: [virbr0]}\nsteps:\n  - start:\n")
    assert "unknown key 'bridge' in host" in e.message and "did you mean 'bridges'?" in e.hint


def test_host_is_per_scenario_and_may_be_shared_in_a_multi_file():
    text = textwrap.dedent("""\
        host: {bridges: [virbr0]}
        domain:
          devices:
            - {id: b1, xml: "<interface type='bridge'><source bridge='virbr0'/></interface>"}
        scenarios:
          - {name: one, guards: x, steps: [start: null]}
          - {name: two, guards: x, host: {bridges: [br1]}, steps: [start: null]}
        """)
    e = refused(text)
    assert "uses host bridge 'virbr0'" in e.message and e.line == 4


def test_raw_domain_with_the_guest_files_and_metadata_loads():
    assert located(raw_domain("""\
        <domain type='auto'>
          <metadata><x:note xmlns:x='urn:hx'>/anything/here</x:note></metadata>
          <description>/not/a/path/libvirt/reads</description>
          <memory unit='MiB'>128</memory>
          <os><type>hvm</type><kernel>{guest.kernel}</kernel><initrd>{guest.initrd}</initrd>
            <cmdline>console=ttyS0 init=/init</cmdline></os>
          <devices><serial type='pty'/><console type='pty'/></devices>
        </domain>""", "")) is None


def test_the_catalog_raw_xml_scenario_still_loads():
    [sc] = load_file(REPO / "scenarios" / "raw-xml-incident.yaml")
    assert [d.kind for d in sc.domain.devices] == ["xml"]


def test_run_time_check_of_leased_pci_still_refuses_a_literal_address():
    r = Resolved(addrs={"vf1": PciAddr.parse("0000:01:10.0")})
    from harness.errors import HarnessError
    from harness.scenario.model import Device
    dev = Device("h1", "xml", {"xml": "<hostdev mode='subsystem' type='pci'><source>"
                                      "<address domain='0x0000' bus='0x00' slot='0x19' function='0x0'/>"
                                      "</source></hostdev>"})
    with pytest.raises(HarnessError, match="not a device leased for this run"):
        xmlbuild.device_element(dev, r)


# ---- fuzz: merges and anchors, numbers, regexes, raw XML (each load under a 2 s alarm) -----------------

@st.composite
def anchored_yaml(draw):
    """Mappings that merge, and lists that alias, the anchors before them (mostly the latest ones, so the
    expansion multiplies), used somewhere in a scenario."""
    maps, lists, lines = [], [], ["guards: x"]
    for i in range(draw(st.integers(1, 40))):
        earlier = maps + lists
        recent = st.sampled_from(earlier[-3:]) if earlier else st.nothing()
        if maps and draw(st.booleans()):
            refs = draw(st.lists(st.sampled_from(maps[-3:]), min_size=1, max_size=6))
            own = draw(st.sampled_from(["", f", k{i}: v", f", k{i}: *{draw(recent)}"]))
            lines.append(f"a{i}: &a{i} {{<<: [{', '.join('*' + r for r in refs)}]{own}}}")
            maps.append(f"a{i}")
        elif earlier and draw(st.booleans()):
            refs = draw(st.lists(recent, min_size=1, max_size=6))
            lines.append(f"a{i}: &a{i} [{', '.join('*' + r for r in refs)}]")
            lists.append(f"a{i}")
        else:
            lines.append(f"a{i}: &a{i} {{k{i}: v{i}}}")
            maps.append(f"a{i}")
    last = f"*{draw(st.sampled_from(maps))}"
    lines.append(draw(st.sampled_from([
        "steps:\n  - start:", f"domain: {{<<: {last}}}\nsteps:\n  - start:",
        f"steps:\n  - start:\n    expect: {{<<: {last}}}", f"steps:\n  - check:\n    <<: {last}",
        f"networks: {{lan: {{<<: {last}, forward: nat}}}}\nsteps:\n  - start:"])))
    return "\n".join(lines) + "\n"


@FUZZ
@given(anchored_yaml())
def test_fuzz_merges_and_anchors(text):
    located(text)


number_text = st.one_of(
    st.integers(-(10 ** 30), 10 ** 30).map(str),
    st.integers(0, 10 ** 30).map(hex),
    st.integers(0, 10 ** 30).map(lambda i: "0o" + format(i, "o")),
    st.integers(1, 4000).map(lambda n: "9" * n),
    st.integers(1, 4000).map(lambda n: "0x" + "f" * n),
    st.lists(st.integers(0, 59), min_size=2, max_size=80).map(lambda xs: ":".join(map(str, xs))),
    st.floats(allow_nan=True, allow_infinity=True).map(
        lambda f: ".nan" if f != f else (".inf" if f == float("inf") else "-.inf" if f == -float("inf") else
                                         repr(f) if "." in repr(f) else repr(f).replace("e", ".0e"))),
    st.sampled_from(NON_FINITE + ["1_000", "+12", "0", "-0", "1e3", "1.0e+3", "~", "true"]),
)


@FUZZ
@given(st.sampled_from(sorted(NUMBER_FIELDS)), number_text)
def test_fuzz_numbers(field, value):
    e = located(NUMBER_FIELDS[field].replace("@@", value))
    if e is None and field != "requires.vfs":
        [sc] = load_text(NUMBER_FIELDS[field].replace("@@", value), FILE)
        assert sc.domain.root_ports <= 32 and sc.domain.memory_mib <= 16384 and sc.domain.vcpus <= 64
        for step in sc.steps:
            assert step.times <= 1000 and (step.timeout is None or 0 < step.timeout <= 3600)


regex_text = st.recursive(
    st.text(alphabet="ab.*+?^$|\\{},0123456789-", max_size=6),
    lambda inner: st.one_of(
        inner.map(lambda r: f"({r})"), inner.map(lambda r: f"(?:{r})"), inner.map(lambda r: f"[{r}]"),
        st.tuples(inner, inner).map("|".join), st.tuples(inner, inner).map("".join),
        st.tuples(inner, st.integers(0, 10 ** 25)).map(lambda t: f"{t[0]}{{{t[1]}}}")),
    max_leaves=40)


@FUZZ
@given(regex_text)
def test_fuzz_regexes(pattern):
    text = REGEX.replace("@@", json.dumps("re:" + pattern))
    if located(text) is None:   # what lint accepts compiles at run time too
        re.compile(pattern)


XML_TAGS = ["domain", "devices", "interface", "hostdev", "source", "address", "disk", "filesystem", "serial",
            "console", "channel", "target", "os", "kernel", "emulator", "seclabel", "qemu:commandline", "qemu:arg",
            "metadata", "rng", "backend", "script", "tpm", "model", "mac", "vendor", "product", "log", "alias"]
XML_ATTRS = {
    "type": ["pci", "usb", "file", "block", "network", "bridge", "direct", "user", "pty", "unix", "tcp", "kvm",
             "lxc", "hostdev", "vhostuser", "passthrough"],
    "mode": ["subsystem", "capabilities", "bind", "bridge", "host"],
    "file": ["/etc/shadow", "disk.img", "{guest.kernel}"], "dev": ["/dev/sda", "eth0", "{e1.ifname}", "vdb"],
    "path": ["/run/x.sock", "/dev/ttyS0"], "network": ["default", "{lan.name}"], "bridge": ["virbr0", "br0"],
    "bus": ["0x00", "0x01"], "slot": ["0x19"], "domain": ["0x0000"], "managed": ["yes", "no"],
    "value": ["-device", "vfio-pci,host=0000:00:19.0"], "address": ["{d1.mac}", "52:54:00:00:00:01"],
    "name": ["ua-x", "default"], "id": ["0x1234"],
}
xml_attrs = st.one_of(
    st.dictionaries(st.sampled_from(sorted(XML_ATTRS)), st.sampled_from(sorted({v for vs in XML_ATTRS.values()
                                                                                 for v in vs})), max_size=3),
    st.sampled_from(sorted(XML_ATTRS)).flatmap(lambda k: st.sampled_from(XML_ATTRS[k]).map(lambda v: {k: v})),
).map(lambda d: "".join(f" {k}={quoteattr(v)}" for k, v in d.items())) \
    | st.sampled_from([" {vf1.address}", " type='pci' {e1.address}"])
xml_text = st.sampled_from(["", "hvm", "/bin/sh", "{guest.kernel}", "/dev/urandom", "a&amp;b", "<!-- c -->"])
xml_tree = st.recursive(
    st.tuples(st.sampled_from(XML_TAGS), xml_attrs, xml_text).map(lambda t: f"<{t[0]}{t[1]}>{t[2]}</{t[0]}>"),
    lambda inner: st.tuples(st.sampled_from(XML_TAGS), xml_attrs, st.lists(inner, max_size=4))
    .map(lambda t: f"<{t[0]}{t[1]}>\n" + "\n".join(t[2]) + f"\n</{t[0]}>"),
    max_leaves=20)


@st.composite
def raw_xml_scenario(draw):
    as_domain = draw(st.booleans())
    xml = draw(xml_tree)
    if as_domain and draw(st.integers(0, 3)):
        xml = f"<domain type='kvm'>\n<devices>\n{xml}\n</devices>\n</domain>"
    if draw(st.booleans()):
        xml = xml.replace(">", " xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>", 1)
    if draw(st.integers(0, 4)) == 0:   # corrupt it
        at = draw(st.integers(0, len(xml)))
        xml = xml[:at] + draw(st.sampled_from(["<", ">", "&", "'", "</x>", "<!DOCTYPE d>", "{", "}}", ""])) \
            + xml[at + draw(st.integers(0, 3)):]
    host = draw(st.sampled_from(["", "host: {networks: [default], bridges: [virbr0], nics: [eth0]}\n"]))
    return (raw_domain(xml, host) if as_domain else raw_device(xml, host)), as_domain


@FUZZ
@given(raw_xml_scenario())
def test_fuzz_raw_xml(case):
    text, as_domain = case
    if located(text) is not None:
        return
    # what lint accepts builds at run time: no ParseError, and the leased-PCI check agrees
    [sc] = load_text(text, FILE)
    r = Resolved(addrs={"vf1": PciAddr.parse("0000:01:10.0"), "e1": PciAddr.parse("0000:00:03.0")},
                 ifnames={"vf1": "enp1s0v0", "e1": "enp0s3"}, networks={"lan": "hx-run-lan"}, salt="f")
    r.mac_for("d1")
    if as_domain:
        xmlbuild.domain_xml("hx-x", sc.domain, r, "qemu", [], "/tmp/console.log")
    else:
        xmlbuild.domain_xml("hx-x", Domain(devices=sc.domain.devices), r, "qemu", sc.domain.devices, "/tmp/c.log")


# ---- real collection: bad files are one located error each, the good one still collects -------------------

NASTY = {
    "merge-bomb.yaml": (BAD / "merge-bomb.yaml").read_text(),
    "tag-xfail.yaml": "guards: x\ntags: [xfail]\nsteps:\n  - start:\n",
    "tag-registered.yaml": "guards: x\ntags: [behaviour]\nsteps:\n  - start:\n",
    "timeout-huge.yaml": f"guards: x\nsteps:\n  - start:\n    timeout: {'9' * 400}\n",
    "timeout-inf.yaml": "guards: x\nsteps:\n  - start:\n    timeout: .inf\n",
    "regex-deep.yaml": "guards: x\nsteps:\n  - start:\n    expect: {error: \"re:" + "(" * 240 + ")" * 240 + "\"}\n",
    "root-ports.yaml": "guards: x\ndomain: {root_ports: 100000000}\nsteps:\n  - start:\n",
    "xml-malformed.yaml": raw_domain("<domain type='kvm'>\n<devices>\n</domain>"),
    "xml-qemu.yaml": (BAD / "xml-qemu-commandline.yaml").read_text(),
    "xml-usb.yaml": (BAD / "xml-usb-hostdev.yaml").read_text(),
    "zz-duplicate.yaml": "name: good\nguards: x\nsteps:\n  - start:\n",
}
GOOD_TEXT = "guards: x\ntags: [seed]\nsteps:\n  - start:\n"


def collect(tmp_path: Path, files: dict[str, str], conftest: str = "") -> tuple[subprocess.CompletedProcess, float]:
    folder = tmp_path / "scenarios"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    behaviour: a registered mark that changes runs\n")
    if conftest:
        (tmp_path / "conftest.py").write_text(conftest)
    env = dict(os.environ, HARNESS_CACHE=str(tmp_path / "cache"), HARNESS_RESULTS=str(tmp_path / "results"),
               PYTHONPATH=str(REPO))
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "harness.plugin",
                        "--collect-only", "-q", "scenarios"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=60)
    return p, time.monotonic() - t0


def test_collect_only_gives_one_located_error_per_bad_file_and_collects_the_good_one(tmp_path):
    p, took = collect(tmp_path, {"good.yaml": GOOD_TEXT, **NASTY})
    out = p.stdout + p.stderr
    assert p.returncode == 2, out           # collection errors; 3 would be an INTERNALERROR
    assert "INTERNALERROR" not in out and "Traceback" not in out, out
    assert took < 30, took
    assert "scenarios/good.yaml::good" in out and "1 test collected" in out, out
    assert out.count("ERROR collecting") == len(NASTY), out
    for name, text in NASTY.items():
        assert out.count(f"ERROR collecting scenarios/{name} ") == 1, (name, out)
        if name == "zz-duplicate.yaml":
            assert re.search(r"scenarios/zz-duplicate\.yaml:1:1: duplicate scenario name 'good'\n"
                             r"  hint: 'good' is already the scenario at scenarios/good\.yaml:1:1", out), out
            continue
        reserved = {"behaviour"} if name == "tag-registered.yaml" else ()
        e = located(text, f"scenarios/{name}", reserved_tags=reserved)
        assert e is not None and str(e).splitlines()[0] in out, (name, out)


def test_a_loader_bug_in_one_file_is_that_file_s_error_not_an_internalerror(tmp_path):
    """ScenarioFile.repr_failure never raises (it passed an argument pytest's Collector does not take)."""
    conftest = textwrap.dedent("""\
        import harness.scenario.loader as loader
        real = loader.load_file
        def load_file(path, **kw):
            if "boom" in str(path):
                raise RuntimeError("a bug in the loader")
            return real(path, **kw)
        loader.load_file = load_file
        """)
    p, _ = collect(tmp_path, {"good.yaml": GOOD_TEXT, "boom.yaml": GOOD_TEXT.replace("seed", "boom")}, conftest)
    out = p.stdout + p.stderr
    assert p.returncode == 2 and "INTERNALERROR" not in out, out
    assert "ERROR collecting scenarios/boom.yaml" in out and "RuntimeError: a bug in the loader" in out, out
    assert "scenarios/good.yaml::good" in out, out


def test_raw_xml_that_only_the_run_time_parser_refuses_is_a_lint_error(tmp_path):
    """Found by test_fuzz_raw_xml: expat takes '}' in a namespace URI, ElementTree (the run) does not."""
    from harness.scenario.loader import ScenarioError, load_file
    f = tmp_path / "brace.yaml"
    f.write_text("guards: x\ndevices:\n  vf1: {kind: vf}\ndomain:\n  devices:\n    - id: d1\n      xml: |\n"
                 "        <source xmlns:qemu='}}http://libvirt.org/schemas/domain/qemu/1.0'></source>\n"
                 "steps:\n  - start:\n")
    with pytest.raises(ScenarioError) as e:
        load_file(str(f))
    assert f"{f}:8:9: raw XML does not parse" in str(e.value)
