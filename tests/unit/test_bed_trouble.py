"""A bed that cannot be trusted any more (its VM died, its kernel stalled): how it is recognised, what is kept
of it, and which beds the harness may replace (harness/bed/lifecycle.py, plugin.HarnessSession)."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from harness.bed import lifecycle, qemu, template_store
from harness.bed.image import Image
from harness.bed.state import BedInfo
from harness.engine import heal

STALL = ("[  568.394976] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n"
         "[  568.395001] rcu: \t(detected by 1, t=21002 jiffies, g=9005, q=12 ncpus=2)\n")


def _bed(tmp_path: Path, pid: int) -> BedInfo:
    d = tmp_path / "beds" / "b1"
    d.mkdir(parents=True)
    return BedInfo(name="b1", suite="trixie", via="qemu", dir=str(d), ssh_port=4022, pid=pid, accel="tcg")


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


@pytest.fixture
def qemu_like():
    """A live process whose command line says qemu-system (what qemu.alive looks for): sleep, started with that
    argv[0], once its exec is done. Popen may return before that (its cmdline is still python's, then briefly
    empty). The earlier `bash -c 'exec -a qemu-system-x86_64 sleep'` had "qemu-system" in bash's own cmdline,
    so the wait ended before the exec, and two tests met the empty cmdline in CI."""
    p = subprocess.Popen(["qemu-system-x86_64", "600"], executable="sleep")
    try:
        deadline = time.monotonic() + 30
        while _cmdline(p.pid) != b"qemu-system-x86_64\x00600\x00" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert qemu.alive(p.pid), _cmdline(p.pid)
        yield p.pid
    finally:
        p.kill()
        p.wait()


@pytest.fixture
def results(tmp_path, monkeypatch):
    r = tmp_path / "results"
    monkeypatch.setenv("HARNESS_RESULTS", str(r))
    return r


def test_a_well_bed_has_no_trouble(tmp_path, qemu_like):
    bed = _bed(tmp_path, qemu_like)
    bed.serial_log.write_text("[    1.0] Linux version 6.12\nhx-bed ready\n")
    assert lifecycle.trouble(bed) == ""


def test_a_stalled_kernel_is_trouble_and_quoted(tmp_path, qemu_like):
    bed = _bed(tmp_path, qemu_like)
    bed.serial_log.write_text("boot\n" + STALL)
    why = lifecycle.trouble(bed)
    assert "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:" in why and str(bed.serial_log) in why


def test_a_dead_vm_is_trouble_with_qemus_last_words(tmp_path):
    p = subprocess.Popen(["true"])
    p.wait()
    bed = _bed(tmp_path, p.pid)
    bed.qemu_log.write_text("qemu-system-x86_64: warning: nic hxpf0 has no peer\n"
                            "qemu-system-x86_64: ../hw/net/igb_core.c:123: igb_x: Assertion `0' failed.\n")
    why = lifecycle.trouble(bed)
    assert why.startswith(f"its VM is gone (pid {p.pid} exited or was killed)"), why
    assert why.endswith("; QEMU's last words: qemu-system-x86_64: ../hw/net/igb_core.c:123: igb_x: Assertion `0' "
                        "failed."), why     # its start-up warnings are not last words


def test_keep_logs_copies_the_evidence_and_never_the_keys_or_the_disk(tmp_path, results):
    bed = _bed(tmp_path, 0)
    for f in ("serial.log", "qemu.log", "qemu.cmdline", "state.json", "id_ed25519", "host_ed25519",
              "overlay.qcow2"):
        (bed.path / f).write_text(f)
    kept = lifecycle.keep_logs(bed, "its kernel stalled")
    assert kept is not None and kept.parent == results / "beds-lost" and kept.name.endswith("-b1")
    assert sorted(os.listdir(kept)) == ["qemu.cmdline", "qemu.log", "serial.log", "state.json", "why.txt"]
    assert (kept / "why.txt").read_text() == "its kernel stalled\n"


def test_keep_logs_adds_a_launchers_own_logs_beside_the_console(tmp_path, results):
    bed = _bed(tmp_path, 0)
    (bed.path / "serial.log").write_text("console")
    (bed.path / "vagrant-up.log").write_text("vagrant said no")
    kept = lifecycle.keep_logs(bed, "vagrant up failed", extra=(bed.path / "vagrant-up.log", bed.path / "gone.log"))
    assert sorted(os.listdir(kept)) == ["serial.log", "vagrant-up.log", "why.txt"]
    assert (kept / "vagrant-up.log").read_text() == "vagrant said no"


def test_cleanup_of_a_dead_bed_keeps_its_logs_and_removes_its_folder(tmp_path, results):
    p = subprocess.Popen(["true"])
    p.wait()
    bed = _bed(tmp_path, p.pid)
    bed.serial_log.write_text(STALL)
    done = lifecycle._cleanup(bed)
    assert not bed.path.exists()
    (kept,) = (results / "beds-lost").iterdir()
    assert (kept / "serial.log").read_text() == STALL
    assert any(line.startswith(f"kept its logs in {kept} (its VM is gone") for line in done), done


def test_cleanup_of_a_well_bed_keeps_nothing(tmp_path, results, qemu_like, monkeypatch):
    bed = _bed(tmp_path, qemu_like)
    bed.serial_log.write_text("fine\n")
    # the stand-in has no QMP socket: stopping it would wait out the 10 s grace of a real QEMU's 'quit'
    monkeypatch.setattr(lifecycle.LAUNCHERS["qemu"], "down", lambda b: os.kill(b.pid, 9) or [])
    lifecycle._cleanup(bed)
    assert not bed.path.exists() and not (results / "beds-lost").exists()


def test_qemus_log_is_not_hardware_so_older_templates_stay_valid(tmp_path):
    img = Image(suite="trixie", key="trixie-0123456789ab", dir=tmp_path / "img")
    bed = _bed(tmp_path, 0)
    cmd = qemu.command(bed, img, qemu.overlay_path(bed))
    assert cmd[cmd.index("-D") + 1] == str(bed.qemu_log)
    without = [a for i, a in enumerate(cmd) if a != "-D" and cmd[i - 1] != "-D"]
    assert template_store.hardware_args(cmd, bed.dir, "b1", 4022) == \
        template_store.hardware_args(without, bed.dir, "b1", 4022)


def test_only_beds_this_run_brought_up_are_replaced(tmp_path):
    bed = _bed(tmp_path, 0)
    assert not heal.disposable(bed, ("sid-1",))           # a person's bed: it may hold their libvirt
    (bed.path / "brought-up-by").write_text("sid-1")
    assert heal.disposable(bed, ("sid-1",))
    assert not heal.disposable(bed, ("sid-2",))           # another session's (a child run on its parent's bed)
    bed.via = "vagrant"
    assert not heal.disposable(bed, ("sid-1",))


def test_a_broken_bed_that_is_not_ours_ends_the_scenario_at_once_and_says_how_to_get_a_fresh_one(tmp_path, qemu_like):
    """Each scenario on it waited out the same timeouts before (~100 s each, 20 min for a catalog)."""
    from types import SimpleNamespace

    from harness.errors import HarnessError
    bed = _bed(tmp_path, qemu_like)
    t = SimpleNamespace(bed=bed)
    bed.serial_log.write_text("boot\n")
    assert heal.heal(t, probe_ssh=False, owners=("sid-1",)) == ""           # well: nothing to do
    bed.serial_log.write_text("boot\n" + STALL)
    with pytest.raises(HarnessError) as e:
        heal.heal(t, probe_ssh=False, owners=("sid-1",))
    assert "the bed b1 cannot be trusted: " in e.value.message and "rcu_preempt detected stalls" in e.value.message
    assert "harness bed down --name b1" in e.value.hint
    assert t.bed is bed and qemu.alive(qemu_like)                            # nothing replaced, nothing killed


def test_a_libvirt_call_on_a_failed_bed_is_abandoned_without_waiting_out_its_timeout(monkeypatch):
    from harness.engine import conn as conn_mod
    monkeypatch.setattr(conn_mod, "ABANDON_EVERY", 0.2)
    monkeypatch.setattr(conn_mod.Conn, "connect", lambda self, timeout=60.0: None)   # the bounded wait alone
    c = conn_mod.Conn("qemu+ssh://root@127.0.0.1:1/system")
    try:
        answers = iter(["", "the bed's kernel reports trouble: 'rcu: INFO: rcu_preempt detected stalls'"])
        c.abandon_if = lambda: next(answers, "")
        t0 = time.monotonic()
        with pytest.raises(conn_mod.LibvirtTimeout, match=r"libvirt call sleep abandoned after \d+ s: the bed's "
                                                           r"kernel reports trouble"):
            c.call(time.sleep, 30, timeout=60)
        assert time.monotonic() - t0 < 5
        c.abandon_if = lambda: ""          # a well bed: the call runs to its end
        assert c.call(time.sleep, 0.5) is None
    finally:
        c.close()


def test_a_bed_a_run_owns_may_be_replaced_by_the_sessions_it_starts(tmp_path, monkeypatch):
    monkeypatch.delenv(heal.OWNER_ENV, raising=False)
    assert heal.owners("sid-1") == ("sid-1", "sid-1")
    bed = _bed(tmp_path, 0)
    heal.own(bed, "harness run (pid 7)")
    assert os.environ[heal.OWNER_ENV] == "harness run (pid 7)"
    assert heal.disposable(bed, heal.owners("sid-2"))           # the run's pytest session
    monkeypatch.delenv(heal.OWNER_ENV)
    assert not heal.disposable(bed, heal.owners("sid-2"))       # a session the run did not start


def test_an_untrusted_bed_makes_an_error_that_keeps_what_the_attempt_met_first():
    from harness.errors import HarnessError
    from harness.report.records import Failure, StepFailed
    why = HarnessError("the bed b1 cannot be trusted: its VM is gone", hint="harness bed down --name b1")
    first = Failure.untrusted_bed(None, why, "scenarios/x.yaml", "artefacts/x")
    assert (first.message, first.check) == ("scenarios/x.yaml: " + str(why), "infrastructure")
    assert Failure.untrusted_bed(first, why, "scenarios/x.yaml", "a").message == first.message    # said once
    step = StepFailed(message="scenarios/x.yaml:12: step 3 'attach n2' [domain-running] expected running; got "
                              "shut off", check="domain-running", artefacts="artefacts/x", step_index=2,
                      step="attach n2", line=12, expected="running", actual="shut off", libvirt_error=None,
                      violations=[], evidence=None)
    f = Failure.untrusted_bed(step, why, "scenarios/x.yaml", "b")
    assert f.message.splitlines()[0] == step.message and f.message.endswith("hint: harness bed down --name b1")
    assert (type(f), f.check, f.artefacts) == (Failure, "infrastructure", "artefacts/x")   # an error, no verdict


def test_a_port_left_in_time_wait_by_a_bed_that_went_down_is_free_for_the_next_bed():
    """A bed's QEMU killed with an SSH connection open leaves its side in TIME_WAIT for a minute; QEMU binds
    its hostfwd with SO_REUSEADDR, so the port is free for it (a plain bind, as before, called it taken)."""
    import socket
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)    # as QEMU's hostfwd listens
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    assert qemu.port_taken(port)                     # listening: taken
    cli = socket.create_connection(("127.0.0.1", port))
    conn, _ = srv.accept()
    conn.close()                                     # the bed's side closes first (QEMU killed) ...
    srv.close()
    cli.recv(1)
    cli.close()                                      # ... so its side waits in TIME_WAIT
    ss = subprocess.run(["ss", "-tanH", "state", "time-wait", f"sport = :{port}"], capture_output=True, text=True)
    assert str(port) in ss.stdout, ss.stdout         # the kernel's own view: the port is in TIME_WAIT
    assert not qemu.port_taken(port)
