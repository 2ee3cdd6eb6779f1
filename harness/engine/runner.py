"""Runs one scenario through a fixed, visible sequence: lease devices, create networks, run each
step, snapshot, judge with the oracle, write artefacts, and always clean up.

The sequence only: what a run holds is its RunState (run_state.py), the files go through artefacts.py,
the removal through cleanup.py, so the order of these phases and their try/finally read in one place.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import libvirt
from filelock import ReadWriteLock

from harness import oracle
from harness.bed.qemu import pid_alive
from harness.engine import artefacts, cleanup, diagnose, shared_networks, steps, teardown
from harness.engine.devices import Leases
from harness.engine.journal import Entry, Journal
from harness.engine.plan import unmet_requirements
from harness.engine.run_state import RunState, ScenarioSkip, StepFailure
from harness.engine.steps import ACTIONS, StepContext
from harness.errors import HarnessError, InfrastructureError
from harness.progress import say
from harness.scenario.model import Step


def run_scenario(run: RunState, on_teardown: Callable[[teardown.Job], None] | None = None) -> list[dict]:
    """Run one scenario on its target; returns the steps' records when every step passed.

    Raises ScenarioSkip, StepFailure (the verdict), or InfrastructureError, HarnessError, libvirtError (not a
    verdict on libvirt); `run` holds what happened in every case (steps_log, current, cleanup_problems,
    phases). `on_teardown`: a passed scenario's teardown may overlap the next scenario (engine/teardown.py),
    and this is called in the main thread when it has finished; without it, teardown ends before the return.
    """
    return Runner(run, on_teardown).execute()


class Runner:
    """The fixed sequence of one run; everything the run holds is its RunState."""

    def __init__(self, run: RunState, on_teardown: Callable[[teardown.Job], None] | None = None):
        self.run = run
        run.art.mkdir(parents=True, exist_ok=True)
        # Called (in the main thread) when a handed-off teardown has finished.
        self.on_teardown = on_teardown
        self.teardown_job: teardown.Job | None = None

    # ---- the fixed sequence ----------------------------------------------------------
    def execute(self) -> list[dict]:
        run = self.run
        why = unmet_requirements(run.sc, run.t)
        if why:
            raise ScenarioSkip(why)
        # A daemon restart drops every worker's connection: such scenarios hold the bed alone.
        rw = ReadWriteLock(str(run.t.lock_dir / "bed.rwlock"), is_singleton=False)
        intent = run.t.lock_dir / "bed.writer-waiting"
        with run.phase("wait for the bed lock"):
            if run.exclusive:
                # Readers overlap (a teardown takes its read lock before its scenario lets go): without a
                # sign that a writer waits, other workers' scenarios could hold the bed for good.
                intent.write_text(str(os.getpid()))
                if run.t.reaper is not None:
                    run.t.reaper.drain()  # this worker's own teardowns hold read locks: let them finish
            else:
                _wait_for_writer(intent)
            lock = rw.write_lock() if run.exclusive else rw.read_lock()
            try:
                lock.__enter__()
            finally:
                if run.exclusive:
                    intent.unlink(missing_ok=True)
        try:
            try:
                run.t.conn.ensure()
            except HarnessError as e:     # named like any fault: a hung daemon is not "is the bed up?"
                raise self._infrastructure(e) from None
            return self._run_leased()
        finally:
            lock.__exit__(None, None, None)

    def _run_leased(self) -> list[dict]:
        run = self.run
        journal = Journal(run.t.lock_dir)
        leases = Leases(run.t.lock_dir, run.t.nics).__enter__()
        handed_off = False
        passed = False
        try:
            try:
                with run.phase("prepare (leases, journal, daemon state)"):
                    self._lease(leases)
                    # Written before anything exists in the bed: a run that dies now is swept next time.
                    own = [n for s, n in run.r.networks.items() if s not in run.shared]
                    journal.write(Entry(domain=run.dom_name, networks=sorted(own),
                                        pci=[str(a) for a in run.r.addrs.values()], scenario=run.sc.name))
                    run.daemon_before = diagnose.daemon_state(run.t)
                    run.prepare()
                with run.phase("networks"):
                    self._create_networks()
                self._run_steps()
                passed = True
            except (libvirt.libvirtError, HarnessError) as e:
                if isinstance(e, InfrastructureError):
                    raise
                raise self._infrastructure(e) from None
            finally:
                # Cleanup runs whatever writing artefacts does (a full results disk raised out of here once:
                # the domain stayed in the bed while its VF lease was released).
                try:
                    with run.phase("logs"):
                        artefacts.collect_logs(run)
                except Exception as e:
                    artefacts.problem(run, "logs", e)
                finally:
                    if passed and not run.artefact_problems and self._may_overlap():
                        self.teardown_job = cleanup.hand_off(run, leases, journal, self.on_teardown)
                        handed_off = True
                    else:
                        cleanup.cleanup(run)
                        if not run.cleanup_problems:
                            journal.remove(run.dom_name)
        finally:
            if not handed_off:
                leases.__exit__(None, None, None)
        if run.artefact_problems:     # the steps passed and the bed is clean, but the evidence is incomplete
            more = len(run.artefact_problems) - 1
            raise InfrastructureError(
                f"during the artefact writes: could not write {run.artefact_problems[0]}"
                + (f" (and {more} more file{'s' if more > 1 else ''})" if more else "")
                + f"; the steps passed and the bed was cleaned up, the artefacts in {run.art} are incomplete",
                hint="free space in the results directory (or use --results-dir elsewhere) and run again")
        return run.steps_log

    # ---- teardown overlapped with the next scenario (engine/teardown.py says why) -------
    def _may_overlap(self) -> bool:
        return self.on_teardown is not None and teardown.enabled() and not self.run.exclusive

    def _infrastructure(self, e: Exception) -> InfrastructureError:
        """Wrap what libvirt or SSH said with the fault the bed shows (killed daemon, dead bed, hang)."""
        run = self.run
        said = e.get_error_message() if isinstance(e, libvirt.libvirtError) else getattr(e, "message", str(e))
        try:
            why = diagnose.explain(run.t, run.daemon_before, run.daemon_before.get("Epoch"))
            if diagnose.HUNG in why:
                why += "; " + diagnose.revive(run.t)
        except Exception as d:   # the diagnosis must never hide the error itself
            why = f"(could not inspect the bed: {d})"
        where = run.current or "set-up"
        return InfrastructureError(f"during {where}: {said}" + (f"\n  fault: {why}" if why else ""),
                                   hint=getattr(e, "hint", None))

    def _connection_lost(self) -> bool:
        c = self.run.t.conn
        if c.closed or c.virconn is None:
            return True
        try:
            return not c.call(c.virconn.isAlive, timeout=20)
        except (libvirt.libvirtError, HarnessError):
            return True

    def _lease(self, leases: Leases) -> None:
        run = self.run
        for sym, hd in run.sc.devices.items():
            nic = leases.lease(sym, hd.kind)
            run.r.addrs[sym] = Leases.addr(nic)
            if nic.ifname:
                run.r.ifnames[sym] = nic.ifname
        for sym, net in run.sc.networks.items():
            if sym in run.shared:
                if run.t.shared_networks is None:
                    run.t.shared_networks = shared_networks.SharedNetworks(run.t)
                sh = run.t.shared_networks.get(net.forward)
                run.r.networks[sym] = sh.name
                if sh.bridge:
                    run.r.bridges[sym] = sh.bridge
                continue
            run.r.networks[sym] = f"{run.dom_name}-{sym}"[:60]
            if net.forward != "hostdev":
                run.subnets[sym] = leases.lease_index("subnet", 250)
        if run.r.addrs:
            say(f"{run.sc.name}: leased " + ", ".join(f"{s}={a}" for s, a in run.r.addrs.items()))

    def _create_networks(self) -> None:
        run = self.run
        for sym, net in run.sc.networks.items():
            if net.create and sym not in run.shared:
                steps.define_network(run, sym)
                steps.start_network(run, sym)

    # ---- steps -----------------------------------------------------------------------
    def snapshot(self, removed: list[str] | None = None) -> oracle.Snapshot:
        run = self.run
        s = oracle.Snapshot(removed_events=list(removed or []))
        d = run.dom
        if d is None:
            return s
        c = run.t.conn
        try:
            if c.call(d.isActive):
                try:
                    s.live_xml = c.call(d.XMLDesc, 0)
                    s.qemu_ids = c.qemu_ids(d)
                except libvirt.libvirtError as e:   # QEMU went away between the calls
                    if e.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID or c.call(d.isActive):
                        raise
                    s.live_xml = s.qemu_ids = None
            if s.live_xml is None:
                s.state = domain_state(c.call(d.state))
            if c.call(d.isPersistent):
                s.inactive_xml = c.call(d.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE)
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
            run.dom = None
            s.state = "gone (undefined)"
        return s

    def _run_steps(self) -> None:
        run = self.run
        with run.phase("snapshot before the steps"):
            run.before = self.snapshot()
        run.index = 0
        for step in run.sc.steps:
            self._run_step(step)

    def _run_step(self, step: Step) -> None:
        run = self.run
        if step.action == "repeat":
            for _ in range(step.times):
                for sub in step.steps:
                    self._run_step(sub)
            return
        i = run.index
        run.index += 1
        say(f"{run.sc.name}: step {i + 1} {step.describe()} ({step.mark})")
        run.current = f"step {i + 1} '{step.describe()}' ({step.mark})"
        sctx = StepContext(run=run, step=step)
        lv0 = run.t.libvirt_seconds
        t0 = time.monotonic()
        err: str | None = None
        try:
            with run.phase(f"step {i + 1} {step.action}"):
                ACTIONS[step.action](sctx)
        except libvirt.libvirtError as e:
            if self._connection_lost():     # libvirtd or the bed went away: not libvirt's answer
                raise self._infrastructure(e) from None
            err = e.get_error_message() or str(e)
        except HarnessError as e:
            if isinstance(e, InfrastructureError) or self._connection_lost():
                raise self._infrastructure(e) from None
            err = e.message
        with run.phase(f"step {i + 1} snapshot"):
            after = self.snapshot(sctx.removed)
        dur = time.monotonic() - t0
        entry = {"index": i, "step": step.describe(), "line": step.mark.line if step.mark else None,
                 "verdict": "passed", "duration_s": round(dur, 3),
                 "libvirt_s": round(run.t.libvirt_seconds - lv0, 3),
                 "error": err,          # libvirt's text, also when the step expected it (harness diff)
                 "aliases": {k: v for k, v in oracle.aliases_by_id(after.live_xml or after.inactive_xml,
                                                                  run.keys).items()}}
        if sctx.info is not None:
            entry["upgrade"] = sctx.info
        added = oracle.implicit_devices(run.before, after, step.action)
        if added:
            run.implicit |= added
            entry["implicit_devices"] = sorted(added)
        run.steps_log.append(entry)
        artefacts.write_step(run, i, step, after)
        v = oracle.step_error(step.expect.get("error"), err)
        if v is not None:
            self._fail(entry, i, step, v.check, v.expected, v.actual, err)
        ctx = oracle.Context(step=step.action, hostdev_networks=run.hostdev_networks(), keys=run.keys,
                             user_aliases=run.user_aliases, expect_aliases=step.expect.get("aliases", {}),
                             may_change=set(step.expect.get("changes", [])), expect_removed=sctx.expect_removed,
                             implicit=set(run.implicit))
        if err is None and step.action == "attach":
            ctx.attached, ctx.attach_flags = step.arg.id, step.flags
        if err is None and step.action in ("detach", "wait-removed"):
            ctx.detached, ctx.detach_flags = step.arg, step.flags
        violations = oracle.check(run.before, after, ctx)
        if violations:
            v = violations[0]
            self._fail(entry, i, step, v.check, v.expected, v.actual, err, violations)
        run.before = after

    def _fail(self, entry, i, step, check, expected, actual, err=None, violations=None):
        entry["verdict"] = "failed"
        evidence = artefacts.qemu_log_tail(self.run) if check == "domain-running" else None
        raise StepFailure(i, step, check, expected, actual, err, violations or [], evidence)


_SHUTOFF_REASONS = {libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN: "unknown", libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "guest shut down",
                    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: "destroyed", libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: "crashed",
                    libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED: "migrated", libvirt.VIR_DOMAIN_SHUTOFF_SAVED: "saved",
                    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: "failed to start",
                    libvirt.VIR_DOMAIN_SHUTOFF_FROM_SNAPSHOT: "from snapshot",
                    libvirt.VIR_DOMAIN_SHUTOFF_DAEMON: "stopped by the daemon"}


def _wait_for_writer(intent: Path, limit: float = 300.0) -> None:
    """A new scenario lets a waiting daemon-restart scenario (another worker's) go first; a writer that
    died leaves a file whose pid is gone, and the wait is bounded in any case."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            pid = int(intent.read_text().strip() or "0")
        except (OSError, ValueError):
            return
        if pid == os.getpid() or not pid_alive(pid):
            return
        time.sleep(0.5)


def domain_state(st: list[int]) -> str:
    """libvirt's [state, reason] as words for a failure message."""
    state, reason = st[0], st[1]
    if state == libvirt.VIR_DOMAIN_SHUTOFF:
        return f"shut off ({_SHUTOFF_REASONS.get(reason, f'reason {reason}')})"
    if state == libvirt.VIR_DOMAIN_CRASHED:
        return "crashed"
    return f"in state {state} (reason {reason})"

