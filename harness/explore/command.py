"""`harness explore`: find the bed, explore within the budget, write the finding, print both paths.

Exit 0: nothing found within the budget; 1: a failure, written as a scenario and a virsh script; 2: bad
input or an infrastructure error (bed, connection, cleanup), which is never reported as a libvirt finding.
"""
from __future__ import annotations

import os
import re
import shutil

from harness import paths
from harness.errors import HarnessError
from harness.explore import machine, writer
from harness.progress import say

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|)\s*$")


def parse_duration(text: str) -> float:
    """'10m', '90s', '1h', '300' (seconds) -> seconds."""
    m = _DURATION.match(text or "")
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"not a duration: {text!r} (e.g. 10m, 90s, 1h)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def _origin(bed, t, seed: int) -> str:
    from harness.libvirt_build.install import installed_build
    try:
        build = installed_build(bed).get("id") or "?"
    except Exception:      # the finding matters more than naming the build
        build = "?"
    return f"seed {seed}, libvirt {t.libvirt_version} build {build}, suite {t.suite}"


def run(args) -> int:
    """--bed B, else the running bed of --suite, else one brought up for this run (and taken down after)."""
    from harness.bed import lifecycle
    try:
        bed, ours = lifecycle.find(name=args.bed, suite=None if args.bed else args.suite), False
    except HarnessError:
        if args.bed:
            raise
        bed, ours = lifecycle.up(suite=args.suite, name=f"hx-explore-{args.suite}"), True
    try:
        return _explore(args, bed)
    finally:
        if ours:
            for line in lifecycle.down(bed.name):
                print(f"bed {bed.name}: {line}")


def _explore(args, bed) -> int:
    from harness.engine import session
    t = session.open_target(bed=bed)
    for line in session.sweep_orphans(t):
        say(f"removed leftovers of an interrupted run: {line}")
    left = session.leftovers(t)
    if left:
        raise HarnessError("leftovers of an earlier run are in the bed: " + ", ".join(left),
                           hint=f"run 'harness bed sweep --name {bed.name}' to remove them")
    say(f"explore: bed {bed.name} (libvirt {t.libvirt_version}), budget {args.budget:.0f} s"
        + (f", seed {args.seed}" if args.seed is not None else "")
        + (f", at most {args.max_sequences} sequences" if args.max_sequences else ""))
    try:
        ex, seed, ended = machine.explore(t, args.budget, seed=args.seed, max_sequences=args.max_sequences,
                                          max_rules=args.max_rules, shrink_s=args.shrink_budget)
    except machine.Aborted as e:
        raise HarnessError(str(e), hint="see 'harness bed status'; nothing it created is left in the bed") from None
    except KeyboardInterrupt:
        _remove_own(t)
        raise
    finally:
        if t.shared_networks is not None:
            for problem in t.shared_networks.close():
                say(f"explore: {problem}", warn=True)
    try:
        return _report(ex, seed, ended, bed, t)
    finally:
        shutil.rmtree(ex.work, ignore_errors=True)     # artefacts of the shrinking attempts


def _remove_own(t) -> None:
    """A Ctrl-C that lands inside a sequence's own cleanup leaves that sequence's journal entry behind: finish the
    job now, from the journal (the next session would, but the command says everything was cleaned up)."""
    from harness.engine.journal import Journal, remove_objects
    j = Journal(t.lock_dir)
    for e in j.entries():
        if e.pid == os.getpid() and e.domain.startswith(f"{paths.PREFIX}explore-seq-"):
            done = remove_objects(t, e)
            j.remove(e.domain)
            if done:
                say(f"explore: interrupted during a cleanup; removed {', '.join(done)}")


def _report(ex, seed, ended, bed, t) -> int:
    ttf = f", first failure after {ex.first_failure_s:.0f} s" if ex.first_failure_s is not None else ""
    print(f"explore: {ex.sequences} sequences, {ex.steps} steps in {ex.elapsed():.0f} s "
          f"({60 * ex.steps / max(ex.elapsed(), 1):.1f} steps/min){ttf}; seed {seed} "
          f"(--seed {seed} repeats the generated sequences)")
    if ex.finding is None:
        if ended is not None:
            raise HarnessError(f"exploration ended without a finding: {type(ended).__name__}: {ended}")
        print("explore: nothing found within the budget")
        return 0
    f = ex.finding
    if ended is not None and not isinstance(ended, machine.SequenceFailed):
        print(f"explore: note: the minimal sequence did not fail again when replayed ({type(ended).__name__})")
    yaml_path, sh = writer.write(f, _origin(bed, t, seed))
    kept = yaml_path.with_suffix(".artefacts")
    shutil.rmtree(kept, ignore_errors=True)
    if f.artefacts.exists():
        shutil.move(str(f.artefacts), kept)
    print(f"explore: found: step {f.failure.index + 1} '{f.failure.step.describe()}' [{f.failure.check}] "
          f"expected {f.failure.expected}; got {f.failure.actual}")
    print(f"scenario: {yaml_path}")
    print(f"virsh script: {sh}")
    print(f"artefacts: {kept}")
    return 1
