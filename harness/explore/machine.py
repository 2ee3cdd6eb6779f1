"""The Hypothesis state machine and the budgeted exploration.

Each Hypothesis example is one sequence: the rules write scenario steps (model.Sequence, with the
preconditions), and when the sequence is complete `teardown` runs it as a scenario through the engine's
run_scenario, the code every catalog scenario runs through. So one step implementation and one oracle (after
every step); the bed lock, the journal, the device leases and the cleanup (also on Ctrl-C) are the
scenario's own; and the file a failure is written to is exactly the text that ran. A failing step (the
runner's StepFailure) fails the example; Hypothesis then shrinks the sequence against the real bed (each
attempt is a real run unless its answer is already known) and replays the minimal one last.

Why the run happens in teardown and not rule by rule: a scenario's domain XML depends on all of its
devices (a usb-net NIC hot-plugged later needs the xhci controller at start), and a restart-daemon step
makes the scenario take the bed's lock exclusively: both are known only once the sequence is complete.
"""
from __future__ import annotations

import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import libvirt
from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis import seed as hyp_seed
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule, run_state_machine_as_test

from harness import paths
from harness.engine.run_state import RunState, ScenarioSkip, StepFailure
from harness.engine.runner import run_scenario
from harness.errors import HarnessError
from harness.explore import model
from harness.progress import say
from harness.scenario.loader import load_text


class BudgetSpent(KeyboardInterrupt):
    """Ends the search when the budget is spent.

    Why a KeyboardInterrupt: it is the one exception Hypothesis's engine lets through without concluding the
    example. Any other (a BaseException, or reject()) is recorded in Hypothesis's data tree as "this example
    ended here"; an earlier example with the same first draws went on drawing, so Hypothesis stops the run with
    FlakyStrategyDefinition ("the second run stopped drawing earlier") instead of ending it.
    """


class ShrinkSpent(BudgetSpent):
    """The shrinking allowance is spent: the smallest failing sequence so far (Explorer.finding) is the result."""


class SequenceFailed(Exception):
    """A sequence failed (the finding is Explorer.finding). Raised from one place, so that Hypothesis sees
    one bug whether the answer came from the bed or from an earlier run of the same steps."""


class Aborted(BaseException):
    """An infrastructure error (bed, connection, cleanup): not libvirt's answer, so nothing to shrink."""


@dataclass
class Finding:
    seq: model.Sequence
    failure: StepFailure
    run: RunState
    yaml_text: str
    artefacts: Path


class Explorer:
    """One exploration: the target, the clock, the counters, and how a sequence is run on the bed."""

    def __init__(self, target, budget_s: float, shrink_s: float, work: Path):
        self.t = target
        self.budget_s, self.shrink_s = budget_s, shrink_s
        self.work = work
        self.t0 = time.monotonic()
        self.sequences = self.bed_runs = self.steps = self.failures = 0
        self._failed: dict[tuple, Finding] = {}       # (initial devices, steps up to the failing one) -> finding
        self._passed: list[tuple] = []
        self.first_failure_s: float | None = None
        self.finding: Finding | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def time_left(self) -> float:
        if self.first_failure_s is not None:     # shrinking: its own allowance after the first failure
            return max(0.0, self.first_failure_s + self.shrink_s - self.elapsed())
        return max(0.0, self.budget_s - self.elapsed())

    def admit(self) -> None:
        """Before a sequence is built. While searching, a spent budget ends the search; while shrinking, a
        spent allowance ends it too, and the last failing sequence is the result: every candidate Hypothesis's
        shrinker runs is smaller than its best so far, so the last one that failed is the smallest."""
        if self.time_left() > 0:
            return
        raise BudgetSpent() if self.first_failure_s is None else ShrinkSpent()

    def progress(self, what: str = "") -> None:
        left = self.time_left()
        phase = "shrinking" if self.first_failure_s is not None else "searching"
        say(f"explore: {phase}: {self.sequences} sequences tried ({self.bed_runs} run on the bed), "
            f"{self.steps} steps run, "
            f"{int(left // 60)}m{int(left % 60):02d}s left, {self.failures} failing runs"
            + (f" ({what})" if what else ""))

    def execute(self, seq: model.Sequence) -> None:
        """Judge one complete sequence; a failure raises SequenceFailed (to Hypothesis), always from here.

        Known answers are not run again: a sequence that starts with a failing one's steps up to its failing
        step fails the same way (the runner stops there), and a prefix of a passing one passes (the oracle
        passed after each of its steps). Shrinking proposes many such sequences; each bed run costs ~20 s.
        """
        self.sequences += 1
        init, steps = _key(seq)
        known = next((f for (i, p), f in self._failed.items() if i == init and steps[:len(p)] == p), None)
        if known is None and not any(i == init and p[:len(steps)] == steps for i, p in self._passed):
            known = self._run(seq)
            if known is None:
                self._passed.append((init, steps))
            else:
                self._failed[(init, steps[:known.failure.index + 1])] = known
        if known is not None:
            self.failures += 1
            if self.first_failure_s is None:
                self.first_failure_s = self.elapsed()
            self.finding = known
            raise SequenceFailed(known.failure.check)

    def _run(self, seq: model.Sequence) -> Finding | None:
        """Run the sequence on the bed as a scenario: its finding, or None when every step passed."""
        self.bed_runs += 1
        n = self.bed_runs
        name = f"explore-seq-{n}"
        text = model.to_yaml(seq.scenario(guards="a sequence generated by harness explore", name=name))
        [sc] = load_text(text, f"{name}.yaml")
        art = self.work / name
        run = RunState(sc, self.t, art)
        found, verdict = None, "interrupted"
        try:
            run_scenario(run)
            verdict = "passed"
        except StepFailure as e:
            found = Finding(seq, e, run, text, art)
            verdict = f"failed at step {e.index + 1} [{e.check}]"
        except ScenarioSkip as e:
            raise Aborted(f"the bed cannot run exploration sequences: {e}") from None
        except (HarnessError, libvirt.libvirtError) as e:
            raise Aborted(f"infrastructure error in sequence {n} (not libvirt's answer): {e}") from None
        finally:
            self.steps += len(run.steps_log)
            self.progress(f"bed run {n}: {len(sc.steps)} steps, {verdict}")
            if verdict == "passed":
                shutil.rmtree(art, ignore_errors=True)
        if run.cleanup_problems:
            raise Aborted("a sequence's cleanup left something behind: " + "; ".join(run.cleanup_problems))
        return found


def _key(seq: model.Sequence) -> tuple[str, tuple[str, ...]]:
    return (model.to_yaml([d.spec() for d in seq.initial]), tuple(model.to_yaml(s) for s in seq.steps))


_EXPLORER: Explorer | None = None


def _explorer() -> Explorer:
    if _EXPLORER is None:
        raise RuntimeError("the exploration machine runs only inside explore()")
    return _EXPLORER


class ExploreMachine(RuleBasedStateMachine):
    """Rules: the catalog's step kinds. Separate rules for each passthrough kind give hot-plug next to
    passthrough devices (where the alias bugs were) more weight than the slow lifecycle steps, which
    share one rule (a domain start costs ~9 s under TCG, a daemon restart more)."""

    def __init__(self):
        super().__init__()
        self.seq = model.Sequence()
        self.ready = False

    @initialize(kinds=st.lists(st.sampled_from(model.KINDS), max_size=3))
    def start_domain(self, kinds):
        _explorer().admit()
        for k in kinds:
            self.seq.add_initial(k)
        self.seq.start()
        self.ready = True

    @precondition(lambda self: self.seq.running)
    @rule(kind=st.sampled_from(model.INTERFACE_KINDS))
    def attach_interface(self, kind):
        self.seq.attach(kind)

    @precondition(lambda self: self.seq.running and self.seq.may_add("hostdev"))
    @rule()
    def attach_hostdev_interface(self):
        self.seq.attach("hostdev")

    @precondition(lambda self: self.seq.running)
    @rule()
    def attach_pool_interface(self):
        self.seq.attach("pool")        # when the pool is full: the step expects libvirt's error

    @precondition(lambda self: self.seq.running and self.seq.may_add("plain-hostdev"))
    @rule()
    def attach_plain_hostdev(self):
        self.seq.attach("plain-hostdev")

    @precondition(lambda self: bool(self.seq.usb_live()))
    @rule(data=st.data())
    def detach_usb_nic(self, data):
        self.seq.detach(data.draw(st.sampled_from(self.seq.usb_live()), label="usb nic"))

    @precondition(lambda self: bool(self.seq.network_live()))
    @rule(data=st.data(), link=st.sampled_from(("down", "up")))
    def update_link(self, data, link):
        self.seq.update(data.draw(st.sampled_from(self.seq.network_live()), label="interface"), link)

    @precondition(lambda self: self.seq.running)
    @rule(op=st.sampled_from(model.LIFECYCLE))
    def lifecycle(self, op):
        self.seq.lifecycle(op)

    def teardown(self):
        # Hypothesis calls teardown in a `finally`: while a rule's exception (a rejected or overrun
        # example, Ctrl-C) propagates, the sequence is incomplete and must not touch the bed.
        if self.ready and sys.exc_info()[0] is None:
            _explorer().execute(self.seq)


def _machine() -> ExploreMachine:
    return ExploreMachine()


def database() -> DirectoryBasedExampleDatabase:
    """In the harness cache: a failure found once is tried first by the next run."""
    return DirectoryBasedExampleDatabase(str(paths.cache_dir() / "hypothesis"))


def explore(target, budget_s: float, seed: int | None = None, max_sequences: int | None = None, max_rules: int = 5,
            shrink_s: float = 300.0, work: Path | None = None) -> tuple[Explorer, int, BaseException | None]:
    """Search until the budget is spent (or max_sequences ran, or a failure was shrunk).

    Returns the explorer (counters, finding), the seed used, and what ended the search if not a finding.
    With an explicit seed the example database is neither read nor written, so the run repeats exactly.
    """
    global _EXPLORER
    used_seed = seed if seed is not None else random.SystemRandom().randrange(2 ** 32)
    work = work or (paths.results_dir() / "explore" / f".work-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    ex = Explorer(target, budget_s, shrink_s, work)
    factory = hyp_seed(used_seed)(_machine)
    conf = settings(max_examples=max_sequences or 1_000_000, stateful_step_count=max_rules, deadline=None,
                    suppress_health_check=list(HealthCheck), database=None if seed is not None else database(),
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                    report_multiple_bugs=False, print_blob=False,
                    verbosity=Verbosity.debug if os.environ.get("HX_EXPLORE_DEBUG") else Verbosity.quiet)
    _EXPLORER = ex
    ended: BaseException | None = None
    try:
        run_state_machine_as_test(factory, settings=conf)
    except ShrinkSpent:
        ended = SequenceFailed(ex.finding.failure.check) if ex.finding is not None else None
    except BudgetSpent:
        pass
    except SequenceFailed as e:
        ended = e
    except Exception as e:      # e.g. Hypothesis's FlakyFailure: the minimal sequence passed when replayed
        ended = e
    finally:
        _EXPLORER = None
    return ex, used_seed, ended
