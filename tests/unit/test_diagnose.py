"""diagnose.explain on scripted systemd answers: a restart caught mid-way is reported once it settled."""
from __future__ import annotations

import subprocess
from types import SimpleNamespace

import pytest

from harness.bed import lifecycle
from harness.engine import diagnose


class FakeBed:
    name, pid, serial_log = "hx-fake", 4242, "/nonexistent/serial.log"

    def __init__(self, states: list[dict], virsh: str = "rc=0\n"):
        self.states = states
        self.asked = 0
        self.virsh = virsh

    def ssh(self, cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        if "virsh" in cmd:
            return subprocess.CompletedProcess(cmd, 0, self.virsh, "")
        if cmd.startswith("journalctl"):
            return subprocess.CompletedProcess(cmd, 0, "x: Stopping libvirtd.service\nx: Started libvirtd.service\n", "")
        st = self.states[min(self.asked, len(self.states) - 1)]
        self.asked += 1
        return subprocess.CompletedProcess(cmd, 0, "".join(f"{k}={v}\n" for k, v in st.items()) + "Epoch=1\n", "")


@pytest.fixture(autouse=True)
def bed_alive(monkeypatch):
    monkeypatch.setattr(lifecycle, "alive", lambda bed: True)
    monkeypatch.setattr(diagnose.time, "sleep", lambda s: None)


BEFORE = {"MainPID": "100", "NRestarts": "0", "ActiveState": "active", "Result": "success"}


def test_restart_caught_while_deactivating_is_reported_as_a_restart():
    bed = FakeBed([{"MainPID": "100", "NRestarts": "0", "ActiveState": "deactivating", "Result": "success"},
                   {"MainPID": "0", "NRestarts": "0", "ActiveState": "activating", "Result": "success"},
                   {"MainPID": "200", "NRestarts": "0", "ActiveState": "active", "Result": "success"}])
    why = diagnose.explain(SimpleNamespace(bed=bed), BEFORE, "1")
    assert why.startswith("libvirtd was restarted during the scenario (pid 100 -> 200)"), why
    assert "Started libvirtd.service" in why and bed.asked == 3


def test_a_daemon_that_never_settles_is_reported_as_it_stands(monkeypatch):
    monkeypatch.setattr(diagnose, "SETTLE_S", 0)
    bed = FakeBed([{"MainPID": "100", "NRestarts": "0", "ActiveState": "deactivating", "Result": "success"}])
    why = diagnose.explain(SimpleNamespace(bed=bed), BEFORE, "1")
    assert why.startswith("libvirtd is deactivating (result success)"), why
    assert bed.asked == 1


def test_an_active_daemon_that_answers_inside_the_bed_is_no_finding():
    bed = FakeBed([BEFORE])
    assert diagnose.explain(SimpleNamespace(bed=bed), BEFORE, None) == ""


def test_an_active_daemon_that_does_not_answer_inside_the_bed_is_named_hung_with_its_threads():
    bed = FakeBed([BEFORE], virsh="rc=124\n     21 Sl futex_wait_queue\n      1 Sl do_poll\n")
    why = diagnose.explain(SimpleNamespace(bed=bed), BEFORE, None)
    assert why.startswith("libvirtd (pid 100) is active but does not answer even inside the bed ('virsh version': "
                          "no answer within 15 s): the daemon hangs"), why
    assert why.endswith("21 Sl futex_wait_queue; 1 Sl do_poll"), why


STALL = ("[  309.431361] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n"
         "[  309.432266] rcu: \t0-...!: (0 ticks this GP) idle=1170/0/0x0 softirq=28413/28413 fqs=0\n"
         "[  372.451217] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n")


class SilentBed(FakeBed):
    """A bed whose SSH times out (its vCPU stopped taking timer interrupts, say)."""

    def ssh(self, cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        raise subprocess.TimeoutExpired(cmd, timeout)


def test_a_bed_that_does_not_answer_is_explained_by_its_kernel_console(tmp_path):
    bed = SilentBed([BEFORE])
    bed.serial_log = tmp_path / "serial.log"
    bed.serial_log.write_text("[   56.79] systemd-ssh-generator[666]: Failed to query local AF_VSOCK CID\n" + STALL)
    why = diagnose.explain(SimpleNamespace(bed=bed), BEFORE, None)
    assert why.startswith("the bed hx-fake is running but does not answer SSH (no reply within 20 s): the bed's "
                          "kernel reports trouble: '[  309.431361] rcu: INFO: rcu_preempt detected stalls on "
                          "CPUs/tasks:', and 1 more such lines"), why
    assert str(bed.serial_log) in why


def test_a_quiet_console_keeps_the_generic_sentence(tmp_path):
    bed = SilentBed([BEFORE])
    bed.serial_log = tmp_path / "serial.log"
    bed.serial_log.write_text("[   56.79] systemd-ssh-generator[666]: Failed to query local AF_VSOCK CID\n")
    why = diagnose.explain(SimpleNamespace(bed=bed), BEFORE, None)
    assert why.endswith(f"a hung guest, a stopped sshd or a stuck network; serial log: {bed.serial_log}"), why
    bed.serial_log = tmp_path / "missing.log"
    assert "a hung guest" in diagnose.explain(SimpleNamespace(bed=bed), BEFORE, None)
