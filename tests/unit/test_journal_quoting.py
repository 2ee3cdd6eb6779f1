"""Journal PCI addresses never reach the bed's shell as anything but PCI addresses.

Why: the journal is a file on disk that a later session reads back, and on_vfio() builds a shell
command (run in the bed over SSH) from the addresses in it. A malformed or hostile entry
("0000:03:00.0; reboot") must be dropped when read, refused if it gets to on_vfio anyway, and every
address is quoted for the shell.
"""
from __future__ import annotations

import glob
import json
import os
import shlex
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.engine import journal
from harness.engine.journal import Entry, Journal, on_vfio, valid_pci
from harness.errors import HarnessError

EVIL = "0000:03:00.0; touch /tmp/hx-journal-pwned"


class FakeTarget:
    """What on_vfio needs of a target: a bed and ssh(); the command runs in a local shell instead."""

    def __init__(self, run: bool = True):
        self.bed = SimpleNamespace(name="fake")
        self.commands: list[str] = []
        self.run = run

    def ssh(self, command: str, timeout: float = 60):
        self.commands.append(command)
        if not self.run:
            return SimpleNamespace(stdout="", returncode=0)
        return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=timeout)


def test_valid_pci():
    assert valid_pci("0000:03:00.0") and valid_pci("0000:ab:1f.7")
    for bad in ("03:00.0", "0000:03:00.8", EVIL, "0000:03:00.0\n", "$(reboot)", "", None, 3):
        assert not valid_pci(bad), bad


def test_entry_with_a_bad_pci_address_is_refused():
    with pytest.raises(ValueError, match="not PCI addresses"):
        Entry(domain="hx-x", pci=[EVIL])
    with pytest.raises(ValueError):
        Entry(domain="hx-x", pci="0000:03:00.0")        # not a list
    assert Entry(domain="hx-x", pci=["0000:03:00.0"]).pci == ["0000:03:00.0"]


def test_journal_drops_entries_with_bad_pci_addresses_keeps_good_ones(tmp_path):
    j = Journal(tmp_path)
    j.write(Entry(domain="hx-good", networks=["hx-n"], pci=["0000:03:10.0"]))
    good = json.loads((j.dir / "hx-good.json").read_text())
    (j.dir / "hx-evil.json").write_text(json.dumps({**good, "domain": "hx-evil", "pci": [EVIL]}))
    (j.dir / "hx-odd.json").write_text(json.dumps({**good, "domain": "hx-odd", "pci": [["0000:03:10.0"]]}))
    assert [e.domain for e in j.entries()] == ["hx-good"]
    assert sorted(p.name for p in j.dir.iterdir()) == ["hx-good.json"]


def test_on_vfio_refuses_bad_addresses(tmp_path):
    t = FakeTarget(run=False)
    with pytest.raises(HarnessError, match="not PCI addresses"):
        on_vfio(t, ["0000:03:10.0", EVIL])
    assert t.commands == []                                # nothing was sent to the bed


def test_on_vfio_quotes_even_what_validation_would_let_through(monkeypatch, tmp_path):
    """Quoting does not rest on the validation: with it switched off, the hostile string is one
    word of the loop (echoed back), not a command."""
    marker = tmp_path / "pwned"
    evil = f"0000:03:00.0; touch {marker}; x=$(touch {marker}) `touch {marker}`"
    monkeypatch.setattr(journal, "valid_pci", lambda a: True)
    t = FakeTarget()
    assert on_vfio(t, [evil, "0000:03:10.0"]) == []
    assert t.commands[0].startswith(f"for d in {shlex.quote(evil)} 0000:03:10.0; do "), t.commands
    assert not marker.exists()
    out = subprocess.run(["sh", "-c", t.commands[0]], capture_output=True, text=True, timeout=30).stdout
    assert out.splitlines()[0] == evil, out


def test_on_vfio_command_works_in_a_shell():
    """The quoted command still does its job: one 'ADDR DRIVER' line per device (this host's /sys)."""
    devs = sorted(os.path.basename(d) for d in glob.glob("/sys/bus/pci/devices/*"))
    if not devs:
        pytest.skip("no PCI devices in /sys")
    t = FakeTarget()
    assert on_vfio(t, devs[:3]) == [d for d in devs[:3]
                                    if os.path.basename(os.path.realpath(f"/sys/bus/pci/devices/{d}/driver"))
                                    == "vfio-pci" and Path(f"/sys/bus/pci/devices/{d}/driver").exists()]
    out = subprocess.run(["sh", "-c", t.commands[0]], capture_output=True, text=True, timeout=30).stdout
    assert [ln.split()[0] for ln in out.splitlines()] == devs[:3], out
    assert not Path("/tmp/hx-journal-pwned").exists()


def test_an_orphaned_qemu_of_the_domain_is_killed_and_others_are_left(tmp_path):
    # The real shell the cleanup sends to the bed, run here against stand-in processes with QEMU's -name form.
    import sys
    from types import SimpleNamespace

    from harness.engine.journal import kill_orphan_qemu

    def stand_in(name):
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "-name",
                                 f"guest={name},debug-threads=on"])
    mine, other = stand_in("hx-orphan-gw0abc-1"), stand_in("hx-orphan-gw0abc-12")
    t = SimpleNamespace(bed=object(), ssh=lambda cmd, timeout: subprocess.run(["sh", "-c", cmd], capture_output=True,
                                                                             text=True, timeout=timeout))
    try:
        done = kill_orphan_qemu(t, "hx-orphan-gw0abc-1")
        assert done == [f"QEMU of hx-orphan-gw0abc-1 (pid {mine.pid}) that libvirt no longer managed, killed"]
        assert mine.wait(timeout=10) == -9
        assert other.poll() is None                      # a name that only starts the same is not touched
        assert kill_orphan_qemu(t, "hx-orphan-gw0abc-1") == []
        with pytest.raises(HarnessError):
            kill_orphan_qemu(t, "hx-x; reboot")
    finally:
        for p in (mine, other):
            p.kill()
            p.wait()
