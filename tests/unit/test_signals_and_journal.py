"""Ctrl-C reaches the main thread (helper threads block it), and a dead run's journal entry is not 'live'."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from harness.engine import conn as conn_mod
from harness.engine.journal import Entry, _start_time


def _blocked_in_thread(name: str) -> set[int]:
    t = next(t for t in threading.enumerate() if t.name == name)
    status = Path(f"/proc/self/task/{t.native_id}/status").read_text()
    mask = int(next(ln for ln in status.splitlines() if ln.startswith("SigBlk:")).split()[1], 16)
    return {s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if mask & (1 << (s - 1))}


def test_libvirt_event_loop_thread_blocks_sigint_and_sigterm():
    conn_mod._ensure_event_loop()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        blocked = _blocked_in_thread("libvirt-events")
        if blocked:
            break
        time.sleep(0.05)
    assert blocked == {signal.SIGINT, signal.SIGTERM}


def test_libvirt_call_threads_block_sigint_and_sigterm_main_thread_does_not():
    pool = conn_mod._call_pool()
    try:
        in_worker = pool.submit(lambda: signal.pthread_sigmask(signal.SIG_BLOCK, [])).result(timeout=10)
    finally:
        pool.shutdown()
    assert {signal.SIGINT, signal.SIGTERM} <= in_worker
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_a_live_owner_is_alive_a_zombie_or_a_reused_pid_is_not():
    assert Entry(domain="hx-x", networks=[], pci=[]).owner_alive()
    p = subprocess.Popen(["sleep", "0.3"])
    try:
        started = _start_time(p.pid)
        assert started is not None
        e = Entry(domain="hx-x", networks=[], pci=[], pid=p.pid, pid_start=started)
        assert e.owner_alive()
        deadline = time.monotonic() + 10          # it exits; unreaped, it stays a zombie
        while Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not e.owner_alive()
        assert not Entry(domain="hx-x", networks=[], pci=[], pid=p.pid, pid_start=str(int(started) + 1)).owner_alive()
    finally:
        p.wait()
    assert not e.owner_alive()


def test_a_libvirt_call_stuck_for_good_does_not_keep_the_process_from_exiting():
    # A call that never returns (a VF held by an orphaned QEMU: virNodeDeviceReAttach blocks) times out, and
    # then the process must still exit: the interpreter joined the old executor's worker at exit and hung.
    code = ("import threading, time\n"
            "from harness.engine import conn\n"
            "c = conn.Conn.__new__(conn.Conn)\n"
            "c._pool, c.call_timeout, c.seconds = conn._call_pool(), 0.5, 0.0\n"
            "try:\n"
            "    c.call(threading.Event().wait)\n"
            "except conn.LibvirtTimeout as e:\n"
            "    print('timed out:', e)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                       cwd=Path(__file__).resolve().parents[2])
    assert p.returncode == 0 and "timed out: libvirt call wait did not return within 0 s" in p.stdout, p.stderr
