"""pytest glue: a YAML file in scenarios/ becomes a collector, each scenario an item.

Validation happens at collection, so `pytest --collect-only` is the offline lint. Running an item
needs a target: --libvirt-uri, a bed that is up, or (by default) a bed this session brings up and
takes down again. Results land in results/<date>_<suite>_<libvirt>/ when the session ends.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from pathlib import Path

import libvirt
import pytest
from filelock import FileLock

from harness import paths
from harness.errors import HarnessError
from harness.progress import say

SCENARIO_DIRS = ("scenarios",)


def pytest_addoption(parser):
    g = parser.getgroup("harness", "libvirt alias harness")
    g.addoption("--bed", dest="hx_bed", default=None, help="name of a running bed to use (harness bed status)")
    g.addoption("--suite", dest="hx_suite", default=os.environ.get("HARNESS_SUITE", "trixie"),
                help="suite of the bed to use or bring up (trixie, bookworm, sid)")
    g.addoption("--libvirt-uri", dest="hx_uri", default=None,
                help="run scenarios against this libvirt URI instead of a bed (steps needing a shell are errors)")
    g.addoption("--no-bed-up", dest="hx_no_up", action="store_true",
                help="fail instead of bringing a bed up when none is running")
    g.addoption("--keep-bed", dest="hx_keep", action="store_true",
                help="leave a bed this session brought up running at the end")
    g.addoption("--sweep", dest="hx_sweep", action="store_true",
                help="remove leftovers of earlier runs (hx-* domains/networks) instead of refusing to run")
    g.addoption("--harness-retries", dest="hx_retries", type=int, default=0,
                help="re-run a failed scenario up to N times; a pass on retry is reported as flaky")
    g.addoption("--results-dir", dest="hx_results", default=None, help="where run folders go (default results/)")


def _is_controller(config) -> bool:
    return not hasattr(config, "workerinput")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    config.addinivalue_line("markers", "scenario: a YAML scenario run against libvirt")
    if _is_controller(config):
        sid = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
    else:
        sid = config.workerinput["hx_session"]
    config._hx = HarnessSession(config, sid)
    if _is_controller(config) and not config.option.xmlpath and not config.option.collectonly:
        config.option.xmlpath = str(config._hx.staging / "junit.xml")


def pytest_configure_node(node):   # xdist: hand the session id to every worker
    node.workerinput["hx_session"] = node.config._hx.sid


def pytest_collect_file(parent, file_path: Path):
    if file_path.suffix in (".yaml", ".yml") and file_path.parent.name in SCENARIO_DIRS:
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(session, config, items):
    from harness.scenario.loader import check_unique_names
    scenarios = [i.scenario for i in items if isinstance(i, ScenarioItem)]
    check_unique_names(scenarios)


def pytest_unconfigure(config):
    hx = getattr(config, "_hx", None)
    if hx is not None:
        hx.finish()


class ScenarioFile(pytest.File):
    def collect(self):
        from harness.scenario.loader import load_file
        rel = os.path.relpath(self.path, self.config.rootpath)
        for sc in load_file(rel if not rel.startswith("..") else str(self.path)):
            item = ScenarioItem.from_parent(self, name=sc.name, scenario=sc)
            item.add_marker(pytest.mark.scenario)
            for t in sc.tags:
                self.config.addinivalue_line("markers", f"{t}: scenario tag")
                item.add_marker(getattr(pytest.mark, t))
            yield item

    def repr_failure(self, excinfo, style=None):
        from harness.scenario.loader import ScenarioError
        if isinstance(excinfo.value, (ScenarioError, HarnessError)):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)


class ScenarioItem(pytest.Item):
    def __init__(self, *, scenario, **kw):
        super().__init__(**kw)
        self.scenario = scenario
        self.record: dict = {}

    def reportinfo(self):
        line = self.scenario.mark.line - 1 if self.scenario.mark else 0
        return self.path, line, f"scenario {self.scenario.name}"

    def runtest(self):
        from harness.engine.runner import Runner, ScenarioSkip, StepFailure
        hx: HarnessSession = self.config._hx
        target = hx.target()
        sc = self.scenario
        art_rel = Path("artefacts") / sc.name
        self.record = {"scenario": sc.name, "nodeid": self.nodeid, "file": sc.file,
                       "line": sc.mark.line if sc.mark else 1, "tags": sc.tags, "guards": sc.guards,
                       "verdict": "error", "duration_s": 0.0, "attempts": 0, "skip_reason": None,
                       "failure": None, "steps": [], "artefacts": str(art_rel)}
        t0 = time.monotonic()
        lv0 = target.libvirt_seconds
        retries = self.config.getoption("hx_retries")
        try:
            for attempt in range(retries + 1):
                self.record["attempts"] = attempt + 1
                art = hx.run_dir / art_rel
                shutil.rmtree(art, ignore_errors=True)
                runner = Runner(sc, target, art)
                self.runner = runner
                try:
                    self.record["steps"] = runner.run()
                    if runner.cleanup_problems:
                        raise CleanupFailure(runner.cleanup_problems)
                    self.record["verdict"] = "passed"
                    self.record["failure"] = None
                    return
                except ScenarioSkip as e:
                    self.record["verdict"] = "skipped"
                    self.record["skip_reason"] = str(e)
                    pytest.skip(str(e))
                except StepFailure as e:
                    self.record["steps"] = runner.steps_log
                    self.record["verdict"] = "failed"
                    self.record["failure"] = failure_dict(e, sc, str(art))
                    if attempt == retries:
                        raise
                except (HarnessError, libvirt.libvirtError) as e:   # infrastructure (a dropped connection,
                    # a stuck domain): also retried; the next attempt reconnects first
                    self.record["steps"] = runner.steps_log
                    self.record["verdict"] = "error"
                    where = "" if "during " in str(e) else f"during {runner.current or 'set-up'}: "
                    left = "".join(f"\n  {p}" for p in runner.cleanup_problems)
                    self.record["failure"] = {"message": f"{sc.file}: {where}{e}{left}",
                                              "check": "infrastructure", "artefacts": str(art)}
                    if attempt == retries:
                        raise
                except KeyboardInterrupt:
                    self.record["steps"] = runner.steps_log
                    self.record["verdict"] = "error"
                    self.record["failure"] = {"message": f"{sc.file}: interrupted (Ctrl-C) during "
                                                         f"{runner.current or 'set-up'}; " + ("cleanup: " + "; ".join(runner.cleanup_problems)
                                                                if runner.cleanup_problems else "cleaned up"),
                                              "check": "interrupted", "artefacts": str(art)}
                    raise
        finally:
            self.record["duration_s"] = round(time.monotonic() - t0, 3)
            self.record["libvirt_s"] = round(target.libvirt_seconds - lv0, 3)
            self.record["libvirt_version"] = target.libvirt_version
            hx.save_record(self.record)

    def repr_failure(self, excinfo, style=None):
        from harness.engine.runner import StepFailure
        from harness.scenario.loader import ScenarioError
        e = excinfo.value
        if isinstance(e, StepFailure):
            return format_failure(self.record["failure"], self.scenario)
        if isinstance(e, (HarnessError, libvirt.libvirtError)) and (self.record.get("failure") or {}).get("message"):
            f = self.record["failure"]
            return (f"scenario {self.scenario.name}: infrastructure error (not a verdict on libvirt's aliases)\n"
                    f"  {f['message']}\n  artefacts: {f['artefacts']}")
        if isinstance(e, (HarnessError, ScenarioError, CleanupFailure)):
            return f"scenario {self.scenario.name}: {e}"
        return super().repr_failure(excinfo, style)


class CleanupFailure(Exception):
    def __init__(self, problems):
        super().__init__("cleanup left something behind:\n  " + "\n  ".join(problems))


def failure_dict(e, sc, artefacts: str) -> dict:
    return {"step_index": e.index, "step": e.step.describe(), "line": e.step.mark.line if e.step.mark else None,
            "check": e.check, "expected": e.expected, "actual": e.actual, "libvirt_error": e.libvirt_error,
            "violations": [str(v) for v in e.violations], "artefacts": artefacts, "evidence": e.evidence,
            "message": f"{sc.file}:{e.step.mark.line if e.step.mark else '?'}: step {e.index + 1} "
                       f"'{e.step.describe()}' [{e.check}] expected {e.expected}; got {e.actual}"}


def format_failure(f: dict, sc) -> str:
    lines = [f"scenario {sc.name} failed at step {f['step_index'] + 1} '{f['step']}' ({sc.file}:{f['line']})",
             f"  guards:    {' '.join(sc.guards.split())[:160]}",
             f"  check:     {f['check']}",
             f"  expected:  {f['expected']}",
             f"  actual:    {f['actual']}"]
    if f.get("libvirt_error"):
        lines.append(f"  libvirt:   {f['libvirt_error']}")
    for v in f.get("violations", [])[1:]:
        lines.append(f"  also:      {v}")
    if f.get("evidence"):
        lines += ["  qemu.log (last lines):"] + [f"    {ln}" for ln in f["evidence"].splitlines()]
    lines.append(f"  artefacts: {f['artefacts']}  (live/inactive XML per step, qemu.log, libvirtd.log)")
    return "\n".join(lines)


class HarnessSession:
    """Per-process state: the target (opened lazily), staging folder, and the end-of-run report."""

    def __init__(self, config, sid: str):
        self.config = config
        self.sid = sid
        self._target = None
        self.root = Path(config.getoption("hx_results") or paths.results_dir())
        self.staging = self.root / f".staging-{sid}"     # only pytest's junit.xml, until the run folder exists
        self.run_dir: Path | None = None

    # ---- target ----------------------------------------------------------------------
    def target(self):
        if self._target is None:
            self._target = self._open()
        return self._target

    def _open(self):
        from harness.bed import lifecycle, state
        from harness.engine import session
        cfg = self.config
        uri = cfg.getoption("hx_uri")
        if uri:
            t = session.open_target(uri=uri)
        else:
            with FileLock(str(paths.beds_dir() / f"session-{self.sid}.lock")):
                suite = cfg.getoption("hx_suite")
                name = cfg.getoption("hx_bed")
                try:
                    bed = lifecycle.find(name=name, suite=None if name else suite)
                except HarnessError:
                    if cfg.getoption("hx_no_up") or name:
                        raise
                    bed = lifecycle.up(suite=suite)
                    (bed.path / "brought-up-by").write_text(self.sid)
                bed = state.load(bed.name) or bed
                t = session.open_target(bed=bed)
        self._check_leftovers(t)
        self._claim_run_dir(t.meta())
        return t

    def _claim_run_dir(self, meta: dict) -> None:
        """The first process to open the target names the run folder; xdist workers share it."""
        from harness.report import run as report
        note = paths.beds_dir() / f"session-{self.sid}.rundir"
        with FileLock(str(note) + ".lock"):
            if note.exists():
                self.run_dir = Path(note.read_text())
                return
            meta = dict(meta, started=self.sid.split("-")[0])
            self.run_dir = report.make_run_dir(self.root, meta)
            (self.run_dir / "meta.json").write_text(json.dumps(meta))
            note.write_text(str(self.run_dir))

    def _check_leftovers(self, t):
        from harness.engine import session
        flag = paths.beds_dir() / f"session-{self.sid}.checked"
        with FileLock(str(flag) + ".lock"):
            if flag.exists():
                return
            for line in session.sweep_orphans(t):
                say(f"removed leftovers of an interrupted run: {line}")
            left = session.leftovers(t)
            if left and self.config.getoption("hx_sweep"):
                session.sweep(t)
            elif left:
                raise HarnessError("leftovers of an earlier run are in the target: " + ", ".join(left),
                                   hint="run 'harness bed sweep' (or pytest --sweep) to remove them")
            flag.write_text("ok")

    # ---- results ---------------------------------------------------------------------
    def save_record(self, record: dict) -> None:
        d = self.run_dir / "records"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{record['scenario']}.json").write_text(json.dumps(record, indent=1))

    def finish(self) -> None:
        if not _is_controller(self.config):
            return
        try:
            self._write_run()
        finally:
            try:
                self._bed_down_if_ours()
            finally:
                for f in paths.beds_dir().glob(f"session-{self.sid}*"):
                    f.unlink(missing_ok=True)

    def _write_run(self) -> None:
        note = paths.beds_dir() / f"session-{self.sid}.rundir"
        if not note.exists():          # no scenario ran: nothing to report
            shutil.rmtree(self.staging, ignore_errors=True)
            return
        from harness.report import run as report
        run_dir = Path(note.read_text())
        records = [json.loads(p.read_text()) for p in sorted((run_dir / "records").glob("*.json"))]
        if not records:                # the target was used by tests only, no scenario ran
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.rmtree(self.staging, ignore_errors=True)
            return
        meta = json.loads((run_dir / "meta.json").read_text())
        meta.update({"run_id": self.sid, "command": " ".join(self.config.invocation_params.args),
                     "harness_version": __import__("harness").__version__,
                     "finished": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())})
        shutil.rmtree(run_dir / "records", ignore_errors=True)
        (run_dir / "meta.json").unlink(missing_ok=True)
        if (self.staging / "junit.xml").exists():
            shutil.move(str(self.staging / "junit.xml"), run_dir / "junit.xml")
        shutil.rmtree(self.staging, ignore_errors=True)
        prev = report.previous_run(self.root, meta.get("suite"), self.sid)
        comparison = report.compare(prev, {"meta": meta, "scenarios": records}) if prev is not None else None
        summary = report.write_run(run_dir, meta, records, comparison=comparison)
        report.append_history(self.root, summary, run_dir)
        if comparison is not None:
            (run_dir / "compare.txt").write_text(report.format_compare(comparison))
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        msg = f"harness: results in {run_dir} (report.html, summary.json)"
        if tr is not None:
            tr.write_line(msg)
        else:
            print(msg)

    def _bed_down_if_ours(self) -> None:
        if self.config.getoption("hx_keep"):
            return
        from harness.bed import lifecycle, state
        for bed in state.all_beds():
            marker = bed.path / "brought-up-by"
            if marker.exists() and marker.read_text() == self.sid:
                for line in lifecycle.down(bed.name):
                    print(f"harness: bed {bed.name}: {line}")


@pytest.fixture(scope="session")
def hx_target(request):
    """The session's target (the bed the scenarios use), for the project's own integration tests."""
    return request.config._hx.target()
