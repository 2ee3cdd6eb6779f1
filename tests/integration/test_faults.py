"""Faults injected into a real bed while a scenario step is running (issue 6).

Each test runs the fault scenario below in a child pytest on the session's bed, waits until the
child says it is inside the long step, injects the fault from outside (as an operator or a crash
would), and then checks what a QA engineer relies on: the child ends by itself with an error that
names the fault, its results are written, no domain or network of the run is left, every VF is
back on its host driver, and the next run on the bed starts clean.

The bed-kill test uses a bed of its own (it kills it); the others share the session's bed.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import paths
from harness.bed import launcher, lifecycle, qmp, state
from harness.engine import diagnose

pytestmark = [pytest.mark.bed, pytest.mark.slow]

REPO = paths.REPO

#: The step the faults land in: an unplug request that no guest will ever acknowledge, waited for.
LONG_STEP = "step 4 wait-removed n1"

FAULT_SCENARIO = """\
guards: >-
  Fault-injection target (tests/integration/test_faults.py): a hostdev interface and a pool interface
  (a network the run creates), then a hot-plugged NIC whose unplug waits for a guest that never answers,
  so a fault lands while a step is running.
tags: [fault]
requires: {vfs: 2}
devices:
  vf1: {kind: vf}
  vf2: {kind: vf}
networks:
  pool: {forward: hostdev, vfs: [vf2]}
domain:
  devices:
    - interface: {id: hn0, type: hostdev, device: vf1}
    - interface: {id: pn0, type: network, network: pool}
steps:
  - start:
    expect: {aliases: {hn0: hostdev0, pn0: hostdev1}}
  - attach: {interface: {id: n1, type: user}}
    expect: {aliases: {n1: net0}}
  - detach: n1
    expect: {removed: false}
  - wait-removed: n1
    timeout: 150
"""

#: A short, healthy scenario: "the next run starts clean" means this passes right after a fault.
NEXT_SCENARIO = """\
guards: >-
  After a fault: a fresh run on the same bed must start (no leftovers refusal) and pass.
tags: [fault]
requires: {vfs: 2}
devices:
  vf1: {kind: vf}
  vf2: {kind: vf}
domain:
  devices:
    - interface: {id: hn0, type: hostdev, device: vf1}
    - interface: {id: hn1, type: hostdev, device: vf2}
steps:
  - start:
    expect: {aliases: {hn0: hostdev0, hn1: hostdev1}}
  - attach: {interface: {id: u1, type: user}}
    expect: {aliases: {u1: net0, hn0: hostdev0, hn1: hostdev1}}
"""


class Child:
    """A child pytest running one scenario file, its stderr watched line by line."""

    def __init__(self, tmp: Path, name: str, text: str, bed: str, env: dict | None = None,
                 extra: tuple[str, ...] = ()):
        d = tmp / name / "scenarios"      # the plugin collects YAML from folders named scenarios/
        d.mkdir(parents=True)
        (d / f"{name}.yaml").write_text(text)
        self.results = tmp / name / "results"
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self.t0 = time.monotonic()
        # env --default-signal=INT: a shell that starts jobs in the background (no job control, e.g. a CI
        # runner's `cmd &`) makes them ignore SIGINT, and Python then installs no KeyboardInterrupt
        # handler: the Ctrl-C test would wait forever. A person's Ctrl-C comes to a default disposition.
        self.p = subprocess.Popen(
            ["env", "--default-signal=INT", sys.executable, "-m", "pytest", str(d / f"{name}.yaml"), "-p", "harness.plugin", "-p", "no:cacheprovider",
             "-q", "-s", "-rfEs", "--rootdir", str(REPO), "-c", str(REPO / "pyproject.toml"),
             "--bed", bed, "--no-bed-up", "--results-dir", str(self.results), *extra],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=dict(os.environ, PYTEST_ADDOPTS="", **(env or {})))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.p.stdout:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()

    def wait_for(self, needle: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        with self._seen:
            while not any(needle in ln for ln in self.lines):
                left = deadline - time.monotonic()
                assert left > 0 and self.p.poll() is None, f"never saw {needle!r}:\n{self.output}"
                self._seen.wait(min(left, 1))

    def finish(self, timeout: float) -> int:
        """The child must end on its own: a fault never turns into a hang."""
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(timeout=30)
            pytest.fail(f"the run did not end within {timeout:.0f} s of the fault:\n{self.output}")
        time.sleep(0.2)   # the reader thread drains the pipe
        self.elapsed = time.monotonic() - self.t0
        return rc

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def records(self) -> dict[str, dict]:
        """The run's scenario records by name."""
        runs = [p for p in self.results.iterdir() if (p / "summary.json").exists()] if self.results.exists() else []
        assert len(runs) == 1, f"the run wrote no results in {self.results}:\n{self.output[-3000:]}"
        return {r["scenario"]: r for r in json.loads((runs[0] / "summary.json").read_text())["scenarios"]}

    def record(self) -> dict:
        (rec,) = self.records().values()
        return rec


def bed_ssh(bed: state.BedInfo, cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return bed.ssh(cmd, timeout=timeout)


def make_the_kernel_complain(bed: state.BedInfo) -> None:
    """The bed kernel's own console line of an RCU stall (what lifecycle.trouble looks for), through /dev/kmsg."""
    said = bed_ssh(bed, "echo '<3>rcu: INFO: rcu_preempt detected stalls on CPUs/tasks: (written by the test)' "
                        "> /dev/kmsg")
    assert said.returncode == 0, said.stderr


def assert_bed_clean(bed: state.BedInfo) -> None:
    """Nothing of any run left in the bed, every VF and e1000e back on its host driver."""
    p = bed_ssh(bed, "virsh list --all --name; virsh net-list --all --name")
    left = [n for n in p.stdout.split() if n.startswith(paths.PREFIX)]
    assert not left, f"left in the bed: {left}"
    p = bed_ssh(bed, "for d in /sys/bus/pci/devices/*; do [ -e $d/physfn ] || grep -q 0x10d3 $d/device || continue;"
                     " echo $(basename $d) $(basename $(readlink $d/driver 2>/dev/null) 2>/dev/null); done")
    rows = [ln.split() for ln in p.stdout.splitlines()]
    assert rows, "no VFs found in the bed"
    wrong = [r for r in rows if len(r) < 2 or r[1] == "vfio-pci"]
    assert not wrong, f"devices not on their host driver: {wrong}"


def assert_next_run_clean(tmp: Path, bed: str) -> str:
    nxt = Child(tmp, "after-fault", NEXT_SCENARIO, bed)
    rc = nxt.finish(timeout=600)
    assert rc == 0, f"the next run did not start clean:\n{nxt.output[-4000:]}"
    assert nxt.record()["verdict"] == "passed"
    return nxt.output


def bed_qmp(bed: state.BedInfo, command: str) -> None:
    """The bed QEMU's own monitor (one client at a time: retry while a previous one lets go)."""
    for attempt in range(5):
        try:
            with qmp.QMP(str(bed.path / "qmp.sock"), timeout=15) as q:
                assert "return" in q.cmd(command)
            return
        except (OSError, TimeoutError):
            if attempt == 4:
                raise
            time.sleep(2)


def libvirtd_pid(bed: state.BedInfo) -> str:
    return bed_ssh(bed, "systemctl show -p MainPID --value libvirtd").stdout.strip()


@pytest.fixture
def bed(hx_target):
    b = hx_target.bed
    assert_bed_clean(b)
    yield b
    # Whatever a failed test left, the session's bed must be usable by the next test.
    subprocess.run([sys.executable, "-m", "harness.cli", "bed", "sweep", "--name", b.name], cwd=REPO,
                   capture_output=True, timeout=300)


def start_fault_run(tmp_path, bed, env=None) -> Child:
    child = Child(tmp_path, "fault-hotplug", FAULT_SCENARIO, bed.name, env)
    child.wait_for(LONG_STEP)
    time.sleep(2)    # well inside the step: the unplug request is pending
    return child


def test_libvirtd_restarted_mid_step(tmp_path, bed):
    pid0 = libvirtd_pid(bed)
    child = start_fault_run(tmp_path, bed)
    assert bed_ssh(bed, "systemctl restart libvirtd", timeout=180).returncode == 0
    rc = child.finish(timeout=240)
    assert rc == 1
    out = child.output
    assert re.search(r"libvirtd was restarted during the scenario \(pid \d+ -> \d+\)", out), out[-3000:]
    assert "during step 4 'wait-removed n1'" in out
    rec = child.record()
    assert rec["verdict"] == "error" and "libvirtd was restarted" in rec["failure"]["message"]
    assert libvirtd_pid(bed) != pid0
    assert_bed_clean(bed)
    assert_next_run_clean(tmp_path, bed.name)


def test_libvirtd_sigkill_mid_step(tmp_path, bed):
    child = start_fault_run(tmp_path, bed)
    assert bed_ssh(bed, "systemctl kill -s KILL libvirtd").returncode == 0
    rc = child.finish(timeout=240)
    assert rc == 1
    out = child.output
    assert "libvirtd was killed by SIGKILL and restarted by systemd" in out, out[-3000:]
    assert "status=9/KILL" in out
    assert child.record()["verdict"] == "error"
    assert_bed_clean(bed)
    assert_next_run_clean(tmp_path, bed.name)


def test_test_domains_qemu_killed_mid_step(tmp_path, bed):
    child = start_fault_run(tmp_path, bed)
    p = bed_ssh(bed, f"kill -9 $(cat /run/libvirt/qemu/{paths.PREFIX}fault-hotplug-*.pid)")
    assert p.returncode == 0, p.stderr
    rc = child.finish(timeout=120)
    assert rc == 1
    out = child.output
    # Not an infrastructure error: QEMU dying under a hot-plug is exactly what a regression looks like.
    assert "check:     domain-running" in out, out[-3000:]
    assert "expected:  the domain to keep running across wait-removed" in out
    assert "shut off (crashed)" in out
    rec = child.record()
    assert rec["verdict"] == "failed" and rec["failure"]["check"] == "domain-running"
    assert child.elapsed < 150, "the wait should end on the domain's stopped event, not its timeout"
    assert_bed_clean(bed)
    assert_next_run_clean(tmp_path, bed.name)


def test_ctrl_c_mid_step(tmp_path, bed):
    child = start_fault_run(tmp_path, bed)
    child.p.send_signal(signal.SIGINT)
    rc = child.finish(timeout=120)
    assert rc == 2    # pytest: interrupted
    out = child.output
    assert "KeyboardInterrupt" in out
    rec = child.record()
    assert rec["verdict"] == "error"
    assert re.search(r"interrupted \(Ctrl-C\) during step 4 'wait-removed n1' \(\S*fault-hotplug.yaml:23:5\); "
                     r"cleaned up$", rec["failure"]["message"]), rec["failure"]
    assert_bed_clean(bed)
    assert_next_run_clean(tmp_path, bed.name)


def test_bed_hangs_mid_step_ssh_and_libvirt_time_out(tmp_path, bed):
    """The whole bed stops answering (QMP stop: SSH connects, nothing replies). The run gives up by
    itself, defers the cleanup it cannot do, and the next run removes what it left."""
    child = start_fault_run(tmp_path, bed, env={"HX_KEEPALIVE": "5,3"})
    bed_qmp(bed, "stop")
    try:
        rc = child.finish(timeout=300)
    finally:
        bed_qmp(bed, "cont")
    assert rc == 1
    out = child.output
    assert f"the bed {bed.name} is running but does not answer SSH (" in out, out[-3000:]
    assert "cleanup deferred, the bed does not answer" in out
    rec = child.record()
    assert rec["verdict"] == "error"
    lifecycle.wait_ready(bed, timeout=120)
    # The domain really was left behind (the bed was frozen), and the next run removes it, saying so.
    left = bed_ssh(bed, "virsh list --all --name").stdout.split()
    assert any(n.startswith(f"{paths.PREFIX}fault-hotplug") for n in left), left
    nxt = assert_next_run_clean(tmp_path, bed.name)
    assert re.search(r"removed leftovers of an interrupted run: domain hx-fault-hotplug-\S+, network "
                     r"hx-fault-hotplug-\S+-pool .*\(left by fault-hotplug, pid \d+", nxt), nxt[-3000:]
    assert_bed_clean(bed)


def test_libvirtd_hung_mid_step_is_named_hung(tmp_path, bed):
    """libvirtd stops answering while systemd still calls it active (SIGSTOP stands in for a deadlock; CI once
    met one on bookworm's 9.0.0 that said only 'libvirt call open did not return within 30 s'). The run ends by
    itself, names the hung daemon (told apart from a hung SSH transport by a `virsh version` inside the bed) and
    restarts it."""
    pid = libvirtd_pid(bed)
    child = start_fault_run(tmp_path, bed, env={"HX_KEEPALIVE": "5,3"})
    assert bed_ssh(bed, f"kill -STOP {pid}").returncode == 0
    try:
        rc = child.finish(timeout=400)
    finally:
        bed_ssh(bed, f"kill -CONT {pid}")
    assert rc == 1
    out = child.output
    assert (f"libvirtd (pid {pid}) is active but does not answer even inside the bed ('virsh version': no answer "
            f"within {diagnose.RPC_PROBE_S} s): the daemon hangs, not the SSH transport") in out, out[-3000:]
    # and revives it, saying so, so that the scenarios after this one (and a retry) find a live daemon
    new = libvirtd_pid(bed)
    assert new != pid and f"the harness restarted libvirtd (SIGKILL, now pid {new})" in out, out[-3000:]
    rec = child.record()
    assert rec["verdict"] == "error" and "does not answer even inside the bed" in rec["failure"]["message"]
    assert_next_run_clean(tmp_path, bed.name)
    assert_bed_clean(bed)


def test_bed_vm_killed_mid_step(tmp_path, spare_bed):
    """The spare bed (not the session's): killed with SIGKILL while the step runs, then brought up again."""
    b = spare_bed()
    name = b.name
    child = start_fault_run(tmp_path, b)
    os.kill(b.pid, signal.SIGKILL)
    rc = child.finish(timeout=300)
    assert rc == 1
    out = child.output
    assert f"the bed VM {name} is gone (its QEMU, pid {b.pid}, exited or was killed)" in out, out[-3000:]
    assert child.record()["verdict"] == "error"
    with pytest.raises(Exception, match="no bed is up"):
        lifecycle.find(name=name)
    b2 = lifecycle.up(suite=b.suite, name=name, memory_mib=b.memory_mib)   # cleans the dead bed's state, boots afresh
    assert b2.pid != b.pid
    assert_bed_clean(b2)
    assert_next_run_clean(tmp_path, name)


def test_a_disposable_bed_that_dies_mid_scenario_is_replaced_and_the_retry_passes(tmp_path, spare_bed):
    """CI's beds are TCG VMs on 2 cores; now and then one stalls (its kernel's RCU stall) or its QEMU dies (an
    assertion in QEMU 10.0's TCG). A bed that a test session or `harness run` brought up (from its template:
    nothing of a person's is lost) is then replaced by a fresh one of the same hardware, and the scenario runs
    once more there, retries or not (the attempt the bed failed under said nothing about libvirt); the old bed's
    console and QEMU logs are kept in results/beds-lost/. Here the spare bed stands in for such a bed, and dies
    by SIGKILL."""
    b = spare_bed()
    marker = b.path / "brought-up-by"
    marker.write_text("itest-session")         # what a session that brought it up writes
    lost = tmp_path / "results-of-beds"
    child = Child(tmp_path, "heal", NEXT_SCENARIO, b.name, env={"HARNESS_RESULTS": str(lost),
                                                                "HX_BED_OWNER": "itest-session"})
    try:
        child.wait_for("step 1 start")
        os.kill(b.pid, signal.SIGKILL)
        rc = child.finish(timeout=420)
        out = child.output
        assert rc == 0, out[-4000:]
        assert f"bed {b.name}: its VM is gone (pid {b.pid} exited or was killed); replacing it with a fresh bed" \
            in out, out[-4000:]
        new = state.load(b.name)
        assert new is not None and new.pid != b.pid and lifecycle.alive(new)
        assert f"the next attempt runs on a fresh bed (QEMU pid {new.pid})" in out, out[-4000:]
        rec = child.record()     # no retries asked for: the attempt the bed failed under did not count
        assert rec["verdict"] == "passed" and rec["attempts"] == 2, rec
        assert rec["bed_replaced"] == [f"its VM is gone (pid {b.pid} exited or was killed)"], rec
        (kept,) = (lost / "beds-lost").iterdir()
        assert (kept / "why.txt").read_text().startswith(f"its VM is gone (pid {b.pid}")
        assert sorted(f.name for f in kept.iterdir()) == ["qemu.cmdline", "qemu.log", "serial.log", "state.json",
                                                          "why.txt"]       # the evidence, never its keys
        assert (new.path / "brought-up-by").read_text() == "itest-session"   # the same session takes it down
        assert_bed_clean(new)
    finally:
        cur = state.load(b.name)
        if cur is not None:
            (cur.path / "brought-up-by").unlink(missing_ok=True)


#: Fails at its last step on any bed (libvirt names the user interface net0, not net9): a real failure.
FAILS_AFTER_A_RESTART = """\
guards: >-
  A scenario that fails on every bed, with a daemon restart before the failing step (time to make the bed's
  kernel complain first).
tags: [fault]
requires: {vfs: 1}
devices:
  vf1: {kind: vf}
domain:
  devices:
    - interface: {id: hn0, type: hostdev, device: vf1}
steps:
  - start:
    expect: {aliases: {hn0: hostdev0}}
  - restart-daemon:
  - attach: {interface: {id: u1, type: user}}
    expect: {aliases: {u1: net9}}
"""


def test_a_failure_under_a_bed_whose_kernel_complained_is_run_again_on_a_fresh_bed(tmp_path, spare_bed):
    """A bed kernel that stalls under a scenario makes libvirt look wrong (in one catalog run a stalled bed
    shut a domain off across restart-daemon: 'failed', though libvirt had done nothing wrong). So a failure
    under a bed whose console complained runs once more on a fresh bed, and only that attempt's verdict
    stands: here the scenario fails on any bed, so it is still 'failed', with the replaced bed on record.
    The complaint is the bed kernel's own console line, written through /dev/kmsg."""
    b = spare_bed()
    (b.path / "brought-up-by").write_text("itest-session")
    lost = tmp_path / "results-of-beds"
    child = Child(tmp_path, "stalled", FAILS_AFTER_A_RESTART, b.name,
                  env={"HARNESS_RESULTS": str(lost), "HX_BED_OWNER": "itest-session"})
    try:
        child.wait_for("step 2 restart-daemon")
        make_the_kernel_complain(b)
        rc = child.finish(timeout=420)
        out = child.output
        assert rc != 0, out[-4000:]
        rec = child.record()
        assert rec["verdict"] == "failed" and rec["attempts"] == 2, rec
        f = rec["failure"]
        assert (f["check"], f["expected"], f["actual"]) == ("expect", "u1 -> net9", "u1 -> net0"), f
        (why,) = rec["bed_replaced"]
        assert why.startswith("the bed's kernel reports trouble: '") and "(written by the test)" in why, why
        new = state.load(b.name)
        assert new is not None and new.pid != b.pid and lifecycle.alive(new)
        assert not launcher.kernel_trouble(new)                     # the last attempt ran on a quiet bed
        (kept,) = (lost / "beds-lost").iterdir()
        assert "(written by the test)" in (kept / "serial.log").read_text(errors="replace")
        assert_bed_clean(new)
    finally:
        cur = state.load(b.name)
        if cur is not None:
            (cur.path / "brought-up-by").unlink(missing_ok=True)


#: Two scenarios: the test makes the bed's kernel complain during the first; the second then meets the bed.
TWO_ON_ONE_BED = """\
domain:
  devices:
    - interface: {id: u0, type: user}
scenarios:
  - name: while-the-bed-complains
    guards: The bed's kernel complains during this scenario (written by the test); libvirt is unaffected.
    tags: [fault]
    steps:
      - start:
        expect: {aliases: {u0: net0}}
      - restart-daemon:
      - attach: {interface: {id: u1, type: user}}
        expect: {aliases: {u1: net1}}
  - name: after-the-complaint
    guards: Runs on a bed that complained and that this run may not replace.
    tags: [fault]
    steps:
      - start:
        expect: {aliases: {u0: net0}}
"""


def test_a_bed_that_complained_and_is_not_ours_ends_the_next_scenario_at_once_naming_the_fix(tmp_path, spare_bed):
    """A bed someone brought up is never replaced (it may hold their libvirt). Before, every scenario after its
    kernel complained still ran there and waited out the same timeouts: a catalog on two stalled beds took 20
    min to say so. Now the next scenario is an error before it starts anything, naming the complaint and the fix."""
    b = spare_bed()
    (b.path / "brought-up-by").unlink(missing_ok=True)          # a bed a person brought up
    child = Child(tmp_path, "untrusted", TWO_ON_ONE_BED, b.name)
    child.wait_for("step 2 restart-daemon")
    make_the_kernel_complain(b)
    rc = child.finish(timeout=420)
    out = child.output
    assert rc != 0, out[-4000:]
    recs = child.records()
    first = recs["while-the-bed-complains"]          # its steps passed; its teardown would not trust the bed
    assert [st["verdict"] for st in first["steps"]] == ["passed"] * 3, first
    assert first["verdict"] == "error" and first["failure"]["check"] == "cleanup", first
    assert "cleanup deferred, the bed does not answer" in first["failure"]["message"], first
    after = recs["after-the-complaint"]
    assert after["verdict"] == "error" and after["steps"] == [], after           # nothing ran on that bed
    msg = after["failure"]["message"]
    assert f"the bed {b.name} cannot be trusted: the bed's kernel reports trouble: '" in msg, msg
    assert "(written by the test)" in msg and f"harness bed down --name {b.name}" in msg, msg
    cur = state.load(b.name)
    assert cur is not None and cur.pid == b.pid and lifecycle.alive(cur)          # not replaced, not killed


def test_leftovers_are_refused_then_swept_and_a_stray_vf_given_back(tmp_path, hx_target, bed):
    """libvirt-tck style: hx-* objects no live run owns make the next run refuse to start (saying
    what and how to fix it); `harness bed sweep` removes them and hands a stray VF back."""
    c = hx_target.conn
    c.ensure()
    suffix = os.urandom(2).hex()
    dom = c.call(c.virconn.defineXML, f"<domain type='qemu'><name>{paths.PREFIX}leftover-{suffix}</name>"
                                   "<memory unit='MiB'>32</memory><os><type arch='x86_64'>hvm</type></os></domain>")
    c.call(c.virconn.networkDefineXML, f"<network><name>{paths.PREFIX}leftover-{suffix}</name></network>")
    vf = [n for n in hx_target.nics if n.kind == "vf"][-1].pci
    nodedev = "pci_" + vf.replace(":", "_").replace(".", "_")
    assert bed_ssh(bed, f"virsh nodedev-detach {nodedev}").returncode == 0
    try:
        refused = Child(tmp_path, "refused", NEXT_SCENARIO, bed.name)
        assert refused.finish(timeout=300) != 0
        out = refused.output
        assert (f"leftovers of an earlier run are in the target: domain {paths.PREFIX}leftover-{suffix}, "
                f"network {paths.PREFIX}leftover-{suffix}, device {vf} left on vfio-pci") in out, out[-3000:]
        assert "run 'harness bed sweep' (or pytest --sweep) to remove them" in out
        assert c.call(dom.isPersistent)        # refusing removed nothing

        p = subprocess.run([sys.executable, "-m", "harness.cli", "bed", "sweep", "--name", bed.name],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert f"domain {paths.PREFIX}leftover-{suffix}" in p.stdout
        assert f"network {paths.PREFIX}leftover-{suffix}" in p.stdout
        assert f"{vf} back on its host driver" in p.stdout
        assert_bed_clean(bed)
    finally:
        bed_ssh(bed, f"virsh nodedev-reattach {nodedev}; virsh undefine {paths.PREFIX}leftover-{suffix}; "
                     f"virsh net-undefine {paths.PREFIX}leftover-{suffix}")
