"""A waiting daemon-restart scenario is not starved by overlapping readers (runner._wait_for_writer)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from harness.engine import runner


def test_no_writer_waiting_means_no_wait(tmp_path):
    t0 = time.monotonic()
    runner._wait_for_writer(tmp_path / "bed.writer-waiting")
    assert time.monotonic() - t0 < 0.2


def test_a_dead_writer_does_not_block_readers(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    f = tmp_path / "bed.writer-waiting"
    f.write_text(str(p.pid))
    t0 = time.monotonic()
    runner._wait_for_writer(f)
    assert time.monotonic() - t0 < 0.2


def test_readers_wait_while_a_live_writer_waits_and_go_when_it_has_the_bed(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    f = tmp_path / "bed.writer-waiting"
    f.write_text(str(p.pid))
    done = threading.Event()
    threading.Thread(target=lambda: (runner._wait_for_writer(f), done.set()), daemon=True).start()
    try:
        assert not done.wait(1.5), "a reader went ahead of a waiting writer"
        f.unlink()                     # the writer got its lock
        assert done.wait(3)
    finally:
        p.kill()
        p.wait()


def test_own_pid_never_waits(tmp_path):
    f = tmp_path / "bed.writer-waiting"
    f.write_text(str(os.getpid()))
    t0 = time.monotonic()
    runner._wait_for_writer(f)
    assert time.monotonic() - t0 < 0.2
