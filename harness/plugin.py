"""pytest glue: a YAML file in scenarios/ becomes a collector, each scenario an item.

Validation happens at collection, so `pytest --collect-only` is the offline lint. Running an item
needs a target: --libvirt-uri, a bed that is up, or (by default) a bed this session brings up and
takes down again. Results land in results/<date>_<suite>_<libvirt>/ when the session ends.
"""
from __future__ import annotations

import itertools
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

import libvirt
import pytest
from filelock import FileLock

from harness import paths
from harness.bed import state
from harness.errors import HarnessError
from harness.progress import say
from harness.report.records import Failure, ScenarioRecord, StepFailed, StepRecord
from harness.report.run_folder import RunFolder

# What only collecting or running a scenario needs (the loader, the engine, bed lifecycle) is imported there:
# pytest loads this plugin for the unit tests too, and those modules cost more than all of the above.

SCENARIO_DIRS = ("scenarios",)


def pytest_addoption(parser):
    g = parser.getgroup("harness", "libvirt alias harness")
    g.addoption("--bed", dest="hx_bed", default=None,
                help="name of a running bed to use (harness bed status); several, comma-separated: xdist worker "
                     "gwN takes the N-th (round robin), so workers do not wait on each other's bed lock")
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
    g.addoption("--longest-first", dest="hx_longest_first", action="store_true",
                help="run the scenarios expected to take longest first (engine/plan.py cost); with xdist's "
                     "--maxschedchunk 1 the workers then finish together (harness run -n N does both)")
    g.addoption("--results-dir", dest="hx_results", default=None, help="where run folders go (default results/)")


def _is_controller(config) -> bool:
    return not hasattr(config, "workerinput")


def bed_for_worker(names: str | None, worker: str | None) -> str | None:
    """The bed this process uses from --bed's comma-separated list: worker gwN takes the N-th, round robin
    (the controller and a run without xdist take the first)."""
    beds = [n for n in (names or "").split(",") if n]
    if not beds:
        return None
    n = int(worker[2:]) if worker and worker.startswith("gw") and worker[2:].isdigit() else 0
    return beds[n % len(beds)]


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
    # Also a scenario file named on the command line, wherever it is (harness explore writes them to results/).
    if file_path.suffix in (".yaml", ".yml") and (file_path.parent.name in SCENARIO_DIRS
                                                  or parent.session.isinitpath(file_path)):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(config, items):
    """--longest-first: scenarios by expected time, longest first (stable: the rest keep their order). Every
    xdist worker sorts alike, so the collections still match."""
    if not config.getoption("hx_longest_first"):
        return
    from harness.engine import plan
    items.sort(key=lambda i: -plan.cost(i.scenario) if isinstance(i, ScenarioItem) else 0.0)


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session):
    """After the last item: wait for the teardowns still overlapping (engine/teardown.py), so that one
    which left something behind still fails this run."""
    try:
        return (yield)
    finally:
        hx = getattr(session.config, "_hx", None)
        t = getattr(hx, "_target", None)
        if t is not None and t.reaper is not None:
            t.reaper.close()


def pytest_sessionfinish(session):
    """Every process (xdist workers too) removes the shared networks its scenarios used."""
    hx = getattr(session.config, "_hx", None)
    t = getattr(hx, "_target", None)
    if t is None or t.shared_networks is None:
        return
    for problem in t.shared_networks.close():
        print(f"harness: {problem}; the next session on this bed removes it (journal {t.lock_dir / 'journal'})")


def pytest_unconfigure(config):
    hx = getattr(config, "_hx", None)
    if hx is not None:
        hx.finish()


class ScenarioFile(pytest.File):
    TAG_MARKER = "scenario tag"          # the description of the markers tags register
    NAMES = pytest.StashKey[dict]()      # scenario name -> the Scenario that has it, across the session's files

    @classmethod
    def registered_marks(cls, config) -> set[str]:
        """Marks registered in this session (pytest's own, plugins', the ini's), not the ones tags registered."""
        out = set()
        for line in config.getini("markers"):
            name, _, description = line.partition(":")
            if description.strip() != cls.TAG_MARKER:
                out.add(name.split("(")[0].strip())
        return out

    def collect(self):
        """The file's scenarios; names are checked across files here (not in pytest_collection_modifyitems,
        where a duplicate was an INTERNALERROR that stopped every file): the second file fails, located."""
        from harness.scenario.loader import check_unique_names, load_file
        rel = os.path.relpath(self.path, self.config.rootpath)
        scenarios = load_file(rel if not rel.startswith("..") else str(self.path),
                              reserved_tags=self.registered_marks(self.config))   # tags: [xfail]: an error
        names = self.config.stash.setdefault(self.NAMES, {})
        for sc in scenarios:
            first = names.get(sc.name)
            if first is not None and first.file != sc.file:
                check_unique_names([first, sc])   # raises: this file's located error, naming both places
        for sc in scenarios:
            names.setdefault(sc.name, sc)
            item = ScenarioItem.from_parent(self, name=sc.name, scenario=sc)
            item.add_marker(pytest.mark.scenario)
            for t in sc.tags:   # never one of pytest's own marks: the loader refused those
                self.config.addinivalue_line("markers", f"{t}: {self.TAG_MARKER}")
                item.add_marker(getattr(pytest.mark, t))
            yield item

    def repr_failure(self, excinfo, style=None):
        """Never raises: an exception here is an INTERNALERROR that stops the collection of every file."""
        from harness.scenario.loader import ScenarioError
        try:
            if isinstance(excinfo.value, (ScenarioError, HarnessError)):
                return str(excinfo.value)
            return super().repr_failure(excinfo)   # Collector.repr_failure takes no style
        except Exception as e:
            return (f"{self.path}: {type(excinfo.value).__name__} while collecting this file "
                    f"({type(e).__name__} while describing it)")


class ScenarioItem(pytest.Item):
    def __init__(self, *, scenario, **kw):
        super().__init__(**kw)
        self.scenario = scenario
        self.record: ScenarioRecord | None = None
        self.run_state = None             # the engine's RunState of the latest attempt

    def reportinfo(self):
        line = self.scenario.mark.line - 1 if self.scenario.mark else 0
        return self.path, line, f"scenario {self.scenario.name}"

    def runtest(self):
        from harness.engine.run_state import RunState, ScenarioSkip, StepFailure
        from harness.engine.runner import run_scenario
        hx: HarnessSession = self.config._hx
        target = hx.target()
        sc = self.scenario
        art_rel = Path("artefacts") / sc.name
        self.record = ScenarioRecord.start(sc, self.nodeid, str(art_rel))
        if target.reaper is not None:
            target.reaper.collect()       # report the teardowns of earlier scenarios that have finished
        t0 = time.monotonic()
        lv0 = target.libvirt_seconds
        attempts = self.config.getoption("hx_retries") + 1
        try:
            for attempt in itertools.count():
                self.record.attempts = attempt + 1     # a dead or stalled bed is replaced first (or ends this)
                self._heal(hx, probe_ssh=attempt > 0 and self.record.verdict == "error")
                art = hx.run_dir / art_rel
                shutil.rmtree(art, ignore_errors=True)
                run = self.run_state = RunState(sc, target, art)
                try:
                    self.record.steps = StepRecord.from_log(run_scenario(run, on_teardown=self._teardown_done))
                    if run.cleanup_problems:      # the record says so too (it said nothing before)
                        self.record.failure = Failure.left_behind(sc.file, run.cleanup_problems, self.record.artefacts)
                        raise CleanupFailure(run.cleanup_problems)
                    self.record.verdict = "passed"
                    self.record.failure = None
                    return
                except ScenarioSkip as e:
                    self.record.verdict = "skipped"
                    self.record.skip_reason = str(e)
                    pytest.skip(str(e))
                except StepFailure as e:
                    self.record.steps = StepRecord.from_log(run.steps_log)
                    self.record.verdict = "failed"
                    self.record.failure = StepFailed.of(e, sc, str(art))
                    if attempt + 1 >= attempts:
                        if not self._rerun_on_fresh_bed(hx, probe_ssh=False):   # a stalled bed kills domains too
                            raise
                        attempts += 1
                except (HarnessError, libvirt.libvirtError) as e:   # infrastructure (a dropped connection,
                    # a stuck domain): also retried; the next attempt reconnects first
                    self.record.steps = StepRecord.from_log(run.steps_log)
                    self.record.verdict = "error"
                    where = "" if "during " in str(e) else f"during {run.current or 'set-up'}: "
                    left = "".join(f"\n  {p}" for p in run.cleanup_problems)
                    self.record.failure = Failure(message=f"{sc.file}: {where}{e}{left}", check="infrastructure",
                                                  artefacts=str(art))
                    if attempt + 1 >= attempts:
                        if not self._rerun_on_fresh_bed(hx, probe_ssh=True):
                            raise
                        attempts += 1
                except KeyboardInterrupt:
                    self.record.steps = StepRecord.from_log(run.steps_log)
                    self.record.verdict = "error"
                    self.record.failure = Failure(
                        message=f"{sc.file}: interrupted (Ctrl-C) during {run.current or 'set-up'}; "
                                + ("cleanup: " + "; ".join(run.cleanup_problems) if run.cleanup_problems
                                   else "cleaned up"),
                        check="interrupted", artefacts=str(art))
                    raise
        finally:
            self.record.duration_s = round(time.monotonic() - t0, 3)
            self.record.libvirt_s = round(target.libvirt_seconds - lv0, 3)
            self.record.libvirt_version = target.libvirt_version
            self.record.bed = target.bed.name if target.bed is not None else None
            self.record.phases = self.run_state.phases if self.run_state is not None else []
            hx.save_record(self.record)

    def _rerun_on_fresh_bed(self, hx, probe_ssh: bool) -> bool:
        """The bed failed under the last attempt (its QEMU died, its kernel stalled): the attempt said nothing
        about libvirt, so one more runs on the fresh bed that replaced it, retries or not (once a scenario)."""
        why = "" if self.record.bed_replaced else self._heal(hx, probe_ssh)
        if why:
            self.record.bed_replaced.append(why)
        return bool(why)

    def _heal(self, hx, probe_ssh: bool) -> str:
        """hx.heal; a broken bed that is not ours ends the scenario as an error (what an attempt met stays first)."""
        try:
            return hx.heal(probe_ssh=probe_ssh)
        except HarnessError as e:
            self.record.verdict = "error"
            self.record.failure = Failure.untrusted_bed(self.record.failure, e, self.scenario.file, self.record.artefacts)
            raise

    def _teardown_done(self, job) -> None:
        """A teardown handed off after this scenario passed has finished: record it; a teardown that left
        something behind makes the scenario an error and fails the run."""
        run = self.run_state
        self.record.teardown_s = round(job.seconds, 3)
        self.record.phases = run.phases
        problems = list(run.cleanup_problems) + ([job.error] if job.error else [])
        if problems:
            self.record.verdict = "error"
            self.record.failure = Failure.left_behind(self.scenario.file, problems, self.record.artefacts)
            self.session.testsfailed += 1
            tr = self.config.pluginmanager.get_plugin("terminalreporter")
            msg = f"harness: scenario {self.scenario.name}: {self.record.failure.message}"
            if tr is not None:
                tr.write_line(msg, red=True)
            else:
                print(msg)
        self.config._hx.save_record(self.record)

    def repr_failure(self, excinfo, style=None):
        from harness.engine.run_state import StepFailure
        from harness.scenario.loader import ScenarioError
        e = excinfo.value
        f = self.record.failure if self.record is not None else None
        if isinstance(e, StepFailure):
            return f.describe(self.scenario)
        if isinstance(e, (HarnessError, libvirt.libvirtError)) and f is not None and f.message:
            return (f"scenario {self.scenario.name}: infrastructure error (not a verdict on libvirt's aliases)\n"
                    f"  {f.message}\n  artefacts: {f.artefacts}")
        if isinstance(e, (HarnessError, ScenarioError, CleanupFailure)):
            return f"scenario {self.scenario.name}: {e}"
        return super().repr_failure(excinfo, style)


class CleanupFailure(Exception):
    def __init__(self, problems):
        super().__init__("cleanup left something behind:\n  " + "\n  ".join(problems))


class HarnessSession:
    """Per-process state: the target (opened lazily), staging folder, and the end-of-run report."""

    def __init__(self, config, sid: str):
        self.config = config
        self.sid = sid
        self._target = None
        self.root = Path(config.getoption("hx_results") or paths.results_dir())
        self.results = RunFolder(sid, self.root, paths.beds_dir())   # the run folder, records, the summary
        self.staging = self.results.staging    # pytest's junit.xml until the run folder exists
        self.spill = self.results.spill        # what the results disk refused, until the summary is written

    @property
    def run_dir(self) -> Path | None:
        return self.results.path

    @property
    def _records(self) -> dict:
        """This process's records (a test empties it to be an xdist worker, whose records only the disk has)."""
        return self.results.records

    # ---- target ----------------------------------------------------------------------
    def target(self):
        if self._target is None:
            self._target = self._open()
        return self._target

    def _open(self):
        from harness.bed import lifecycle
        from harness.engine import heal, session
        cfg = self.config
        uri = cfg.getoption("hx_uri")
        if uri:
            t = session.open_target(uri=uri)
        else:
            with FileLock(str(paths.beds_dir() / f"session-{self.sid}.lock")):
                suite = cfg.getoption("hx_suite")
                name = bed_for_worker(cfg.getoption("hx_bed"),
                                      getattr(cfg, "workerinput", {}).get("workerid"))
                try:
                    bed = lifecycle.find(name=name, suite=None if name else suite)
                except HarnessError:
                    if cfg.getoption("hx_no_up") or name:
                        raise
                    bed = lifecycle.up(suite=suite)
                    lifecycle.mark_disposable(bed, self.sid)
                bed = state.load(bed.name) or bed
                why = lifecycle.trouble(bed)
                if why and heal.disposable(bed, heal.owners(self.sid)):
                    bed = lifecycle.replace(bed, why)
                elif why:
                    raise heal.untrusted(bed, why)
                t = session.open_target(bed=bed)
        self._check_leftovers(t)
        self._claim_run_dir(t.meta())
        return t

    def heal(self, probe_ssh: bool) -> str:
        """Replace the session's bed if it died or stalled (engine/heal.py); why, if it was replaced."""
        from harness.engine import heal
        return heal.heal(self._target, probe_ssh, heal.owners(self.sid)) if self._target is not None else ""

    def _claim_run_dir(self, meta: dict) -> None:
        self.results.claim(meta)

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

    # ---- results (harness/report/run_folder.py writes them) ------------------------------
    def save_record(self, record: ScenarioRecord | dict) -> None:
        self.results.save(record)

    def finish(self) -> None:
        if not _is_controller(self.config):
            return
        try:
            self.results.write(" ".join(self.config.invocation_params.args), self._say, self._fail_run)
        except BaseException:          # whatever went wrong, the spilled records and junit.xml stay
            self.results.keep |= {self.spill, self.staging}
            raise
        finally:
            try:
                self._bed_down_if_ours()
            finally:
                for f in paths.beds_dir().glob(f"session-{self.sid}*"):
                    if f in self.results.keep:
                        continue
                    if f.is_dir():
                        shutil.rmtree(f, ignore_errors=True)
                    else:
                        f.unlink(missing_ok=True)

    def _say(self, msg: str, red: bool = False) -> None:
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(msg, red=red, bold=red)
        else:
            print(msg, file=sys.stderr if red else sys.stdout)

    def _fail_run(self, why: str | None = None) -> None:
        """Make the session exit non-zero, saying `why` first, unless it already fails (then nothing is said)."""
        session = self.config.pluginmanager.get_plugin("session")
        if session is not None and session.exitstatus == pytest.ExitCode.OK:
            if why:
                self._say(why, red=True)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _bed_down_if_ours(self) -> None:
        if self.config.getoption("hx_keep"):
            return
        from harness.bed import lifecycle
        for bed in state.all_beds():
            marker = bed.path / "brought-up-by"
            if marker.exists() and marker.read_text() == self.sid:
                for line in lifecycle.down(bed.name):
                    print(f"harness: bed {bed.name}: {line}")


@pytest.fixture(scope="session")
def hx_target(request):
    """The session's target (the bed the scenarios use), for the project's own integration tests."""
    return request.config._hx.target()
