"""Name the fault behind an infrastructure error, so the 3 a.m. reader does not have to.

"client socket is closed" says nothing; "libvirtd was killed by SIGKILL at 10:31:07 and restarted by
systemd" does. Each probe is bounded and cheap, and runs only after something already went wrong.
"""
from __future__ import annotations

import re
import subprocess
import time

from harness.bed import launcher
from harness.errors import HarnessError

#: systemctl properties that tell a restart, a crash and a kill apart.
_PROPS = "MainPID,NRestarts,Result,ActiveState,ExecMainCode,ExecMainStatus"
_TRANSITIONAL = {"deactivating", "activating", "reloading"}
#: how long a restart in progress may take to settle before it is reported as it stands (TCG bed: 5-40 s)
SETTLE_S = 60
#: how long libvirtd may take to answer `virsh version` inside the bed before it counts as hung
RPC_PROBE_S = 15
#: the words that mark a hung daemon in explain()'s sentence (runner revives the daemon on them)
HUNG = "does not answer even inside the bed"


def _ask(t) -> subprocess.CompletedProcess:
    return t.bed.ssh(f"systemctl show libvirtd -p {_PROPS}; echo Epoch=$(date +%s)", timeout=20)


def _props(p: subprocess.CompletedProcess) -> dict[str, str]:
    return dict(ln.split("=", 1) for ln in p.stdout.splitlines() if "=" in ln)


def daemon_state(t) -> dict[str, str]:
    """libvirtd's systemd properties (and the bed's clock), or {} when the bed cannot be asked."""
    if t.bed is None:
        return {}
    try:
        return _props(_ask(t))
    except subprocess.TimeoutExpired:
        return {}


def explain(t, before: dict[str, str], since_epoch: str | None = None) -> str:
    """One sentence (or a few) naming what happened to the bed, libvirtd or the connection."""
    if t.bed is None:
        return "the libvirt connection failed (no bed to inspect: --libvirt-uri target)"
    from harness.bed import lifecycle
    if not lifecycle.alive(t.bed):
        said = launcher.qemu_said(t.bed)
        return (f"the bed VM {t.bed.name} is gone (its QEMU, pid {t.bed.pid}, exited or was killed)"
                + (f"; QEMU's last words: {said}" if said else "") + f"; serial log: {t.bed.serial_log}")
    def hung(why: str) -> str:
        return (f"the bed {t.bed.name} is running but does not answer SSH ({why}): "
                + (launcher.kernel_trouble(t.bed)
                   or f"a hung guest, a stopped sshd or a stuck network; serial log: {t.bed.serial_log}"))
    try:
        p = _ask(t)
    except subprocess.TimeoutExpired:
        return hung("no reply within 20 s")
    now = _props(p)
    if p.returncode == 255 or not now:
        return hung("ssh: " + (" ".join(p.stderr.split())[:160] or f"exit status {p.returncode}"))
    # Caught mid-restart ("deactivating"): the close callback fires as libvirtd starts to stop. Let systemd
    # finish (bounded) so the sentence says what happened, not what was happening.
    settle = time.monotonic() + SETTLE_S
    while now.get("ActiveState") in _TRANSITIONAL and time.monotonic() < settle:
        time.sleep(1)
        try:
            now = _props(_ask(t)) or now
        except subprocess.TimeoutExpired:
            break
    old_pid, new_pid = before.get("MainPID"), now.get("MainPID")
    journal = ""
    if since_epoch:
        try:
            p = t.bed.ssh(f"journalctl -u libvirtd --since @{since_epoch} -o short-precise --no-pager "
                          "| grep -E 'Main process exited|Stopping|Stopped|Started|Failed|Killed' | tail -n 4",
                          timeout=20)
            journal = "; ".join(ln.split(": ", 1)[-1] for ln in p.stdout.strip().splitlines())
        except (subprocess.TimeoutExpired, HarnessError):
            pass
    if old_pid and new_pid and old_pid != new_pid:
        how = "restarted"
        if before.get("NRestarts") != now.get("NRestarts") or "status=9/KILL" in journal:
            how = "killed" + (" by SIGKILL" if "9/KILL" in journal else "") + " and restarted by systemd"
        return (f"libvirtd was {how} during the scenario (pid {old_pid} -> {new_pid})"
                + (f"; systemd says: {journal}" if journal else ""))
    if now.get("ActiveState") != "active":
        return (f"libvirtd is {now.get('ActiveState')} (result {now.get('Result')})"
                + (f"; systemd says: {journal}" if journal else ""))
    return hung_daemon(t, new_pid or "")


def hung_daemon(t, pid: str) -> str:
    """'' when libvirtd answers inside the bed; else a sentence naming a hung daemon and what its threads
    wait in. Why: systemd calls a deadlocked daemon 'active', and a remote call that never returns looks the
    same whether the daemon or the SSH transport hangs; a local `virsh version` tells them apart."""
    if not pid.isdigit() or pid == "0":
        return ""
    cmd = (f"timeout {RPC_PROBE_S} virsh -c qemu:///system version >/dev/null 2>&1; echo rc=$?; "
           f"ps -L -o stat=,wchan:32= -p {pid} | sort | uniq -c | sort -rn | head -n 4")
    try:
        p = t.bed.ssh(cmd, timeout=RPC_PROBE_S + 20)
    except (subprocess.TimeoutExpired, HarnessError):
        return ""
    m = re.search(r"^rc=(\d+)$", p.stdout, re.M)
    if m is None or m.group(1) == "0":
        return ""
    threads = "; ".join(" ".join(ln.split()) for ln in p.stdout[m.end():].splitlines() if ln.strip())
    how = f"no answer within {RPC_PROBE_S} s" if m.group(1) == "124" else f"exit status {m.group(1)}"
    return (f"libvirtd (pid {pid}) is active but {HUNG} ('virsh version': {how}): "
            f"the daemon hangs, not the SSH transport; its threads (count, state, wait channel): {threads or '?'}")


def revive(t) -> str:
    """Restart a hung libvirtd (SIGKILL: a deadlocked daemon may not stop on SIGTERM; the domains' QEMUs
    keep running and the new daemon takes them over), so that the scenarios after the one it hung in run on
    a live daemon and a retry means something. Returns what was done, for the fault line."""
    p = t.bed.ssh("systemctl kill -s KILL libvirtd; systemctl restart libvirtd; "
                  f"( {launcher.libvirtd_wait_sh(60)} ) >/dev/null 2>&1; "
                  "systemctl show -p MainPID --value libvirtd", timeout=180)
    new = p.stdout.strip().splitlines()[-1:] or ["?"]
    return f"the harness restarted libvirtd (SIGKILL, now pid {new[0]}) so that the next scenarios find a live daemon"
