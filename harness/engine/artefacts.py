"""The files a run leaves in artefacts/<scenario>/: the live and inactive XML and QEMU's ids after every
step, qemu.log (with the guest console), a libvirtd.log excerpt, and what the cleanup could not remove.

Why a room of its own: a write that fails (a full results disk) must never stop the steps, the verdict or
the bed's cleanup. Every file goes through `write`, which notes a failure in the run's artefact_problems
instead of raising; the runner reports them once the bed is clean.
"""
from __future__ import annotations

import re
import shlex

from harness import oracle
from harness.engine.run_state import RunState
from harness.progress import say
from harness.report.run import os_error_text, redact
from harness.scenario.model import Step


def write(run: RunState, name: str, text: str) -> None:
    """One file under artefacts/, redacted like summary.json (logs from the bed can quote the URI or a
    key). A failed write (results disk full) is noted, never raised: the steps, the verdict and the
    bed's cleanup go on; the runner reports the problem at the end."""
    path = run.art / name
    try:
        path.write_text(redact(text))
    except OSError as e:
        try:
            path.unlink(missing_ok=True)     # a truncated log would read as the whole story
        except OSError:
            pass
        problem(run, name, e)


def problem(run: RunState, name: str, e: BaseException) -> None:
    text = f"{name}: {os_error_text(e)}" if isinstance(e, OSError) else f"{name}: {type(e).__name__}: {e}"
    if not run.artefact_problems:
        say(f"{run.sc.name}: could not write artefact {text}", warn=True)
    run.artefact_problems.append(text)


def write_step(run: RunState, i: int, step: Step, s: oracle.Snapshot) -> None:
    """What the snapshot after step i saw: live XML, inactive XML, QEMU's peripheral ids."""
    slug = re.sub(r"[^a-z0-9]+", "-", step.action)
    if s.live_xml:
        write(run, f"step-{i + 1:02d}-{slug}-live.xml", s.live_xml)
    if s.inactive_xml:
        write(run, f"step-{i + 1:02d}-{slug}-inactive.xml", s.inactive_xml)
    if s.qemu_ids is not None:
        write(run, f"step-{i + 1:02d}-{slug}-qemu-ids.txt", "\n".join(sorted(s.qemu_ids)) + "\n")


def collect_logs(run: RunState) -> None:
    if run.t.bed is None:
        return
    from harness.engine.session import bed_trouble
    failed = bed_trouble(run.t)
    if failed:       # a stalled bed answers no SSH: its console (kept with it, results/beds-lost/) says why
        write(run, "logs-error.txt", f"not collected: the bed failed: {failed}\n")
        return
    try:
        p = run.t.ssh(f"cat {shlex.quote(run.qemu_log)} 2>/dev/null; "
                      f"echo; echo '--- console ---'; cat {shlex.quote(run.console_log)} 2>/dev/null", timeout=30)
        write(run, "qemu.log", p.stdout)
        p = run.t.ssh("tail -n 400 /var/log/libvirt/libvirtd.log 2>/dev/null", timeout=30)
        write(run, "libvirtd.log", p.stdout)
    except Exception as e:   # logs are best effort; cleanup must still run
        write(run, "logs-error.txt", str(e))


def qemu_log_tail(run: RunState, n: int = 8) -> str | None:
    """The last lines QEMU wrote, so a 3 a.m. reader sees why it exited without opening artefacts."""
    if run.t.bed is None:
        return None
    try:
        p = run.t.ssh(f"tail -n {n} {shlex.quote(run.qemu_log)}", timeout=30)
        return p.stdout.strip() or None
    except Exception:   # best effort: the failure itself is already known
        return None
