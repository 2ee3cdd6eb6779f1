"""One scenario's record, typed: the plugin fills it in while the scenario runs, and its to_json() is what
records/<scenario>.json and summary.json hold for it (the shape report.html, harness diff, compare and mutants
read; keys in the order they always had)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class StepRecord:
    """One step as the runner logs it (engine/runner.py, _run_step): what ran, its verdict, the aliases after it."""
    index: int
    step: str
    line: int | None
    verdict: str
    duration_s: float
    libvirt_s: float
    error: str | None                    # libvirt's text, also when the step expected it (harness diff)
    aliases: dict[str, str | None]
    upgrade: dict | None = None          # upgrade-libvirt steps only
    extra: dict[str, Any] = field(default_factory=dict)   # keys a newer runner logs, kept as they are

    @classmethod
    def from_json(cls, d: dict) -> StepRecord:
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in known}, extra={k: v for k, v in d.items() if k not in known})

    @classmethod
    def from_log(cls, log: list[dict]) -> list[StepRecord]:
        return [cls.from_json(d) for d in log]

    def to_json(self) -> dict:
        out = {"index": self.index, "step": self.step, "line": self.line, "verdict": self.verdict,
               "duration_s": self.duration_s, "libvirt_s": self.libvirt_s, "error": self.error,
               "aliases": self.aliases}
        if self.upgrade is not None:
            out["upgrade"] = self.upgrade
        return out | self.extra


@dataclass
class Failure:
    """Why a scenario is an error and no verdict on libvirt: check is "infrastructure", "interrupted" or
    "cleanup" (a teardown that left something behind)."""
    message: str
    check: str
    artefacts: str

    def to_json(self) -> dict:
        return {"message": self.message, "check": self.check, "artefacts": self.artefacts}

    @classmethod
    def left_behind(cls, file: str, problems: list[str], artefacts: str) -> Failure:
        """An error: the steps passed, but the teardown after them left something behind (or could not run)."""
        return cls(f"{file}: the steps passed, but the teardown after them left something behind:\n  "
                   + "\n  ".join(problems), "cleanup", artefacts)

    @classmethod
    def untrusted_bed(cls, met: Failure | None, why: Exception, file: str, artefacts: str) -> Failure:
        """An error: the bed cannot be trusted (`why`); what the attempt met (`met`, a failure too) stays first."""
        if met is None:
            return cls(f"{file}: {why}", "infrastructure", artefacts)
        text = met.message if str(why) in met.message else f"{met.message}\n  {why}"
        return cls(text, "infrastructure", met.artefacts)


@dataclass
class StepFailed(Failure):
    """A verdict on libvirt: the step that failed, the check, what was expected and what happened."""
    step_index: int
    step: str
    line: int | None
    expected: str
    actual: str
    libvirt_error: str | None
    violations: list[str]
    evidence: str | None                 # e.g. the tail of qemu.log when QEMU went away

    @classmethod
    def of(cls, e, sc, artefacts: str) -> StepFailed:
        """From the runner's StepFailure `e` in scenario `sc`."""
        return cls(step_index=e.index, step=e.step.describe(), line=e.step.mark.line if e.step.mark else None,
                   check=e.check, expected=e.expected, actual=e.actual, libvirt_error=e.libvirt_error,
                   violations=[str(v) for v in e.violations], artefacts=artefacts, evidence=e.evidence,
                   message=f"{sc.file}:{e.step.mark.line if e.step.mark else '?'}: step {e.index + 1} "
                           f"'{e.step.describe()}' [{e.check}] expected {e.expected}; got {e.actual}")

    def to_json(self) -> dict:
        return {"step_index": self.step_index, "step": self.step, "line": self.line, "check": self.check,
                "expected": self.expected, "actual": self.actual, "libvirt_error": self.libvirt_error,
                "violations": self.violations, "artefacts": self.artefacts, "evidence": self.evidence,
                "message": self.message}

    def describe(self, sc) -> str:
        """What pytest prints for the failure: the step, the check, expected against actual, the artefacts."""
        lines = [f"scenario {sc.name} failed at step {self.step_index + 1} '{self.step}' ({sc.file}:{self.line})",
                 f"  guards:    {' '.join(sc.guards.split())[:160]}",
                 f"  check:     {self.check}",
                 f"  expected:  {self.expected}",
                 f"  actual:    {self.actual}"]
        if self.libvirt_error:
            lines.append(f"  libvirt:   {self.libvirt_error}")
        for v in self.violations[1:]:
            lines.append(f"  also:      {v}")
        if self.evidence:
            lines += ["  qemu.log (last lines):"] + [f"    {ln}" for ln in self.evidence.splitlines()]
        lines.append(f"  artefacts: {self.artefacts}  (live/inactive XML per step, qemu.log, libvirtd.log)")
        return "\n".join(lines)


@dataclass
class ScenarioRecord:
    """A scenario's verdict and what led to it. Until the scenario says otherwise its verdict is "error":
    an exception nobody expected leaves a red record, never a missing one."""
    scenario: str
    nodeid: str
    file: str
    line: int
    tags: list[str]
    guards: str
    artefacts: str                       # relative to the run folder
    verdict: str = "error"
    duration_s: float = 0.0
    attempts: int = 0
    skip_reason: str | None = None
    failure: Failure | None = None
    steps: list[StepRecord] = field(default_factory=list)
    libvirt_s: float | None = None
    libvirt_version: str | None = None
    bed: str | None = None               # the bed it ran on (a run may have one per xdist worker)
    phases: list[dict] = field(default_factory=list)    # where the time went (engine/runner.py, phase)
    teardown_s: float | None = None      # a teardown overlapped with the next scenario, once it is done
    bed_replaced: list[str] = field(default_factory=list)   # why a bed that failed under an attempt was replaced

    @classmethod
    def start(cls, sc, nodeid: str, artefacts: str) -> ScenarioRecord:
        return cls(scenario=sc.name, nodeid=nodeid, file=sc.file, line=sc.mark.line if sc.mark else 1, tags=sc.tags,
                   guards=sc.guards, artefacts=artefacts)

    def to_json(self) -> dict:
        out = {"scenario": self.scenario, "nodeid": self.nodeid, "file": self.file, "line": self.line,
               "tags": self.tags, "guards": self.guards, "verdict": self.verdict, "duration_s": self.duration_s,
               "attempts": self.attempts, "skip_reason": self.skip_reason,
               "failure": self.failure.to_json() if self.failure is not None else None,
               "steps": [s.to_json() for s in self.steps], "artefacts": self.artefacts,
               "libvirt_s": self.libvirt_s, "libvirt_version": self.libvirt_version, "phases": self.phases}
        if self.teardown_s is not None:
            out["teardown_s"] = self.teardown_s
        if self.bed is not None:
            out["bed"] = self.bed
        if self.bed_replaced:
            out["bed_replaced"] = self.bed_replaced
        return out


def as_json(record: ScenarioRecord | dict) -> dict:
    """A record as summary.json holds it; one read back from records/*.json is that already."""
    return record.to_json() if isinstance(record, ScenarioRecord) else record
