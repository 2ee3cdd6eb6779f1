"""A finding as files: the minimal scenario (for the catalog) and a plain virsh script (for a libvirt bug report).

The scenario is the text that ran, renamed and with a `guards:` text saying what failed. The script does the
same steps with virsh and the same XML (xmlbuild, with the run's VF addresses and MACs), printing the aliases
after each step, so a libvirt developer can run it on any host with those devices, without the harness.
"""
from __future__ import annotations

import copy
import hashlib
import shlex
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

from harness import paths
from harness.engine import xmlbuild
from harness.explore import model

REPRO = "hx-repro"


def finding_name(yaml_steps: list, check: str) -> str:
    digest = hashlib.sha256(yaml.safe_dump(yaml_steps).encode()).hexdigest()[:8]
    return f"explore-{check}-{digest}"


def guards_text(failure, origin: str) -> str:
    step = failure.step.describe()
    return (f"Found by harness explore ({origin}) and shrunk against the real libvirtd: step {failure.index + 1} "
            f"'{step}' failed the {failure.check} check: expected {failure.expected}; got {failure.actual}")


def scenario_text(seq: model.Sequence, failure, origin: str) -> tuple[str, str]:
    """(name, YAML text) of the minimal scenario: the steps up to the failing one (later ones never ran)."""
    seq = copy.copy(seq)
    seq.steps = seq.steps[:failure.index + 1]
    body = seq.scenario(guards="-")
    name = finding_name([body["domain"], body["steps"]], failure.check)   # same steps, other devices: other file
    return name, model.to_yaml(seq.scenario(guards=guards_text(failure, origin), name=name))


_HEADER = """#!/bin/sh
# {name}: the steps of {yaml} with plain virsh (no harness), for a libvirt bug report.
# {guards}
# Run as root on the libvirt host. Host devices as leased in the run that found it (edit for your host):
{devices}
# Prints the device aliases after every step; removes what it created on exit.
DOM={dom}
D=$(mktemp -d)
aliases() {{ virsh dumpxml "$DOM" | awk '/<(interface|hostdev) /{{d=1}} d && /<alias /{{print "  " $0}} /<\\/(interface|hostdev)>/{{d=0}}'; }}
run() {{ echo "+ $*"; "$@" || echo "  -> exit $?"; }}
refused() {{ want=$1; shift; echo "+ $*   (libvirt must refuse: $want)"; if "$@"; then echo "  -> UNEXPECTED: it succeeded"; fi; }}
cleanup() {{
  virsh destroy "$DOM" >/dev/null 2>&1; virsh undefine --managed-save "$DOM" >/dev/null 2>&1
{net_cleanup}  rm -rf "$D"
}}
trap cleanup EXIT
"""


def _file(path: str, text: str) -> list[str]:
    return [f"cat > \"$D/{path}\" <<'EOF'", text, "EOF"]


def virsh_script(run, failure, name: str, yaml_path: Path, guards: str) -> str:
    sc = run.sc
    r = copy.deepcopy(run.r)
    r.networks = {sym: f"{REPRO}-{sym}" for sym in sc.networks}
    devs = list(run.devs.values())
    leased = [f"#   {sym} ({sc.devices[sym].kind}): {a}" for sym, a in r.addrs.items()]
    net_cleanup = "".join(f"  virsh net-destroy {n} >/dev/null 2>&1; virsh net-undefine {n} >/dev/null 2>&1\n"
                          for n in r.networks.values())
    out = [_HEADER.format(name=name, yaml=yaml_path.name, guards=" ".join(guards.split()), dom=REPRO,
                          devices="\n".join(leased) or "#   (none)", net_cleanup=net_cleanup)]
    for i, (sym, net) in enumerate(sc.networks.items()):
        out += _file(f"net-{sym}.xml", xmlbuild.network_xml(r.networks[sym], net, r, 251 - i))
        out += [f"run virsh net-define \"$D/net-{sym}.xml\"", f"run virsh net-start {r.networks[sym]}"]
    out += _file("domain.xml", xmlbuild.domain_xml(REPRO, sc.domain, r, run.virt_type, devs,
                                                   f"/var/log/libvirt/qemu/{REPRO}-console.log"))
    out.append('run virsh define "$D/domain.xml"')
    for i, step in enumerate(sc.steps[:failure.index + 1]):
        out.append(f"\necho '--- step {i + 1}: {step.describe()}'")
        if i == failure.index:
            out.append(f"# harness explore: this step failed the {failure.check} check: "
                       f"expected {' '.join(failure.expected.split())}; got {' '.join(str(failure.actual).split())}")
        out += _step_lines(i, step, run, r)
        out.append("aliases")
    return "\n".join(out) + "\n"


def _step_lines(i: int, step, run, r) -> list[str]:
    a = step.action
    want = step.expect.get("error")
    flag = {"live": "--live", "config": "--config", "both": "--live --config", "current": "--current"}[step.flags]
    cmds: list[str]
    pre: list[str] = []
    if a in ("attach", "detach", "update"):
        dev = step.arg if a == "attach" else run.devs[step.arg if a == "detach" else step.arg["id"]]
        el = xmlbuild.device_element(dev, r)
        if a == "update":
            for old in el.findall("link"):
                el.remove(old)
            ET.SubElement(el, "link", state=step.arg["link"])
        pre = _file(f"step{i + 1}.xml", ET.tostring(el, encoding="unicode"))
        cmds = [f"virsh {a}-device \"$DOM\" \"$D/step{i + 1}.xml\" {flag}"]
    elif a == "save-restore":
        f = f"/var/lib/libvirt/qemu/save/{REPRO}.save"
        cmds = [f"virsh save \"$DOM\" {f}", f"virsh restore {f}"]
        pre = []
    else:
        cmds = {"start": ["virsh start \"$DOM\""], "destroy": ["virsh destroy \"$DOM\""],
                "restart-daemon": ["systemctl restart libvirtd"],
                "managedsave-start": ["virsh managedsave \"$DOM\"", "virsh start \"$DOM\""],
                "suspend-resume": ["virsh suspend \"$DOM\"", "virsh resume \"$DOM\""]}[a]
    if want is not None:
        return pre + [f"refused {shlex.quote(want)} {cmds[0]}"] + [f"run {c}" for c in cmds[1:] if a != "save-restore"]
    lines = pre + [f"run {c}" for c in cmds]
    if a == "save-restore":
        lines.append(f"rm -f /var/lib/libvirt/qemu/save/{REPRO}.save")
    return lines


def write(finding, origin: str, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write results/explore/<date>/<name>.yaml and <name>.sh; returns both paths."""
    out_dir = out_dir or (paths.results_dir() / "explore" / time.strftime("%Y-%m-%d"))
    out_dir.mkdir(parents=True, exist_ok=True)
    name, text = scenario_text(finding.seq, finding.failure, origin)
    yaml_path = out_dir / f"{name}.yaml"
    yaml_path.write_text(text)
    guards = guards_text(finding.failure, origin)
    sh = out_dir / f"{name}.sh"
    sh.write_text(virsh_script(finding.run, finding.failure, name, yaml_path, guards))
    sh.chmod(0o755)
    return yaml_path, sh
