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
import sys
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
    # Also a scenario file named on the command line, wherever it is (harness explore writes them to results/).
    if file_path.suffix in (".yaml", ".yml") and (file_path.parent.name in SCENARIO_DIRS
                                                  or parent.session.isinitpath(file_path)):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


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
        self.record: dict = {}
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
        self.record = {"scenario": sc.name, "nodeid": self.nodeid, "file": sc.file,
                       "line": sc.mark.line if sc.mark else 1, "tags": sc.tags, "guards": sc.guards,
                       "verdict": "error", "duration_s": 0.0, "attempts": 0, "skip_reason": None,
                       "failure": None, "steps": [], "artefacts": str(art_rel)}
        if target.reaper is not None:
            target.reaper.collect()       # report the teardowns of earlier scenarios that have finished
        t0 = time.monotonic()
        lv0 = target.libvirt_seconds
        retries = self.config.getoption("hx_retries")
        try:
            for attempt in range(retries + 1):
                self.record["attempts"] = attempt + 1
                art = hx.run_dir / art_rel
                shutil.rmtree(art, ignore_errors=True)
                runner = self.run_state = RunState(sc, target, art)
                try:
                    self.record["steps"] = run_scenario(runner, on_teardown=self._teardown_done)
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
            self.record["phases"] = self.run_state.phases if self.run_state is not None else []
            hx.save_record(self.record)

    def _teardown_done(self, job) -> None:
        """A teardown handed off after this scenario passed has finished: record it; a teardown that left
        something behind makes the scenario an error and fails the run."""
        runner = self.run_state
        self.record["teardown_s"] = round(job.seconds, 3)
        self.record["phases"] = runner.phases
        problems = list(runner.cleanup_problems) + ([job.error] if job.error else [])
        if problems:
            self.record["verdict"] = "error"
            self.record["failure"] = {
                "message": f"{self.scenario.file}: the steps passed, but the teardown after them left something "
                           "behind:\n  " + "\n  ".join(problems),
                "check": "cleanup", "artefacts": self.record["artefacts"]}
            self.session.testsfailed += 1
            tr = self.config.pluginmanager.get_plugin("terminalreporter")
            msg = f"harness: scenario {self.scenario.name}: {self.record['failure']['message']}"
            if tr is not None:
                tr.write_line(msg, red=True)
            else:
                print(msg)
        self.config._hx.save_record(self.record)

    def repr_failure(self, excinfo, style=None):
        from harness.engine.run_state import StepFailure
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
        # pytest's junit.xml until the run folder exists. Not on the results disk: pytest writes it in
        # sessionfinish, and a write that fails there (disk full) skips unconfigure, i.e. the summary.
        self.staging = paths.beds_dir() / f"session-{sid}.staging"
        # Records and meta.json the results disk refused (full): kept here until the summary is written.
        self.spill = paths.beds_dir() / f"session-{sid}.spill"
        self.run_dir: Path | None = None
        self._records: dict[str, dict] = {}    # this process's records, in case no disk takes them
        self._meta: dict | None = None
        self._keep: set[Path] = set()          # session files finish() must not remove (they hold verdicts)

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
            try:
                self.run_dir = report.make_run_dir(self.root, meta)
            except OSError as e:
                raise HarnessError(f"could not create the run folder in {self.root}: {report.os_error_text(e)}",
                                   hint=f"free space there (df -h {self.root}) or pass --results-dir") from None
            self._meta = meta
            self._put("meta.json", json.dumps(report.redact_tree(meta)))
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
        """One scenario's record (its verdict), on disk at once: xdist workers hand theirs over this way.

        Written atomically and redacted (a kept record may be uploaded with results/). A results disk
        that refuses it sends it to the session's spill folder; never raised, as it runs while the
        scenario's own exception (its verdict) is on its way to pytest.
        """
        from harness.report import run as report
        self._records[record["scenario"]] = record
        try:
            self._put(f"records/{record['scenario']}.json", json.dumps(report.redact_tree(record), indent=1))
        except OSError as e:
            say(f"could not keep the record of {record['scenario']} (verdict {record.get('verdict')}) on any "
                f"disk: {report.os_error_text(e)}", warn=True)

    def _put(self, rel: str, text: str) -> Path:
        """run_dir/rel, written atomically; if the results disk refuses it, the spill folder takes it."""
        from harness.report import run as report
        path = self.run_dir / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            report.write_atomic(path, text)
            return path
        except OSError as e:
            spilled = self.spill / rel
            spilled.parent.mkdir(parents=True, exist_ok=True)
            report.write_atomic(spilled, text)
            say(f"could not write {path}: {report.os_error_text(e)}; kept in {spilled} until the run's "
                f"summary is written", warn=True)
            return spilled

    def finish(self) -> None:
        if not _is_controller(self.config):
            return
        try:
            self._write_run()
        except BaseException:          # whatever went wrong, the spilled records and junit.xml stay
            self._keep |= {self.spill, self.staging}
            raise
        finally:
            try:
                self._bed_down_if_ours()
            finally:
                for f in paths.beds_dir().glob(f"session-{self.sid}*"):
                    if f in self._keep:
                        continue
                    if f.is_dir():
                        shutil.rmtree(f, ignore_errors=True)
                    else:
                        f.unlink(missing_ok=True)

    def _write_run(self) -> None:
        """summary.json, report.html, the history line, junit.xml and compare.txt from the records.

        The records (run_dir/records, meta.json, the spill folder) are removed only once the summary
        and the history line are on disk. If any write fails (a full disk), one message says what
        failed and where the verdicts are, and the session exits non-zero.
        """
        note = paths.beds_dir() / f"session-{self.sid}.rundir"
        if not note.exists():          # no scenario ran: nothing to report
            shutil.rmtree(self.staging, ignore_errors=True)
            return
        from harness.report import run as report
        run_dir = Path(note.read_text())
        records = self._all_records(run_dir)
        if not records:                # the target was used by tests only, no scenario ran
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.rmtree(self.staging, ignore_errors=True)
            shutil.rmtree(self.spill, ignore_errors=True)
            return
        bad = [r["scenario"] for r in records if r.get("verdict") in ("failed", "error")]
        session = self.config.pluginmanager.get_plugin("session")
        if bad and session is not None and session.exitstatus == pytest.ExitCode.OK:
            # e.g. an overlapped teardown that failed in an xdist worker after its item was reported
            self._say(f"harness: not every scenario passed: {', '.join(bad)}", red=True)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        meta = self._run_meta(run_dir)
        meta.update({"run_id": self.sid, "command": " ".join(self.config.invocation_params.args),
                     "harness_version": __import__("harness").__version__,
                     "finished": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())})
        failed: dict[str, BaseException] = {}
        comparison = summary = None
        try:
            prev = report.previous_run(self.root, meta.get("suite"), self.sid)
            comparison = report.compare(prev, {"meta": meta, "scenarios": records}) if prev is not None else None
        except Exception as e:         # a damaged previous run must not cost this run its summary
            failed["comparison with the previous run"] = e
        try:                           # the verdicts first, while there may still be room for them
            summary = report.write_run(run_dir, meta, records, comparison=comparison)
        except Exception as e:
            failed["summary.json/report.html"] = e
        try:                           # even without a summary: the line holds every verdict
            report.append_history(self.root, summary or report.redact_tree(
                {"meta": meta, "counts": report.count(records), "scenarios": records}), run_dir)
        except Exception as e:
            failed[f"the line in {self.root / report.HISTORY}"] = e
        if (self.staging / "junit.xml").exists():
            try:
                report.copy_redacted(self.staging / "junit.xml", run_dir / "junit.xml")
            except Exception as e:
                failed["junit.xml"] = e
        if comparison is not None:
            try:
                report.write_atomic(run_dir / "compare.txt", report.format_compare(comparison))
            except Exception as e:
                failed["compare.txt"] = e
        safe = summary is not None and not any(k.startswith("the line in") for k in failed)
        if safe:
            shutil.rmtree(run_dir / "records", ignore_errors=True)
            (run_dir / "meta.json").unlink(missing_ok=True)
            shutil.rmtree(self.spill, ignore_errors=True)
        if "junit.xml" not in failed:
            shutil.rmtree(self.staging, ignore_errors=True)
        if not failed:
            self._say(f"harness: results in {run_dir} (report.html, summary.json)")
            return
        self._keep |= {p for p in (self.spill, self.staging) if p.exists()}    # what the message names
        self._say(self._not_written(run_dir, records, failed, safe), red=True)
        session = self.config.pluginmanager.get_plugin("session")
        if session is not None and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _all_records(self, run_dir: Path) -> list[dict]:
        """Every scenario's record: run_dir/records, the spill folder, and this process's own."""
        by_name: dict[str, dict] = {}
        for d in (run_dir / "records", self.spill / "records"):
            for p in sorted(d.glob("*.json")):
                try:
                    rec = json.loads(p.read_text())
                    by_name[rec["scenario"]] = rec
                except (OSError, ValueError, KeyError) as e:
                    say(f"skipping unreadable record {p}: {e}", warn=True)
        by_name.update(self._records)
        return [by_name[k] for k in sorted(by_name)]

    def _run_meta(self, run_dir: Path) -> dict:
        for p in (run_dir / "meta.json", self.spill / "meta.json"):
            try:
                return json.loads(p.read_text())
            except (OSError, ValueError):
                continue
        if self._meta is not None:
            return dict(self._meta)
        raise HarnessError(f"the run's meta.json is in neither {run_dir} nor {self.spill}")

    def _not_written(self, run_dir: Path, records: list[dict], failed: dict, safe: bool) -> str:
        """The one message a person reads when the results could not all be written."""
        from harness.report import run as report
        def why(e):
            return report.os_error_text(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
        what = "; ".join(f"{k}: {why(e)}" for k, e in failed.items())
        lines = [f"harness: the results of run {self.sid} were not all written ({what})"]
        if safe:
            lines.append(f"  the summary is complete: {run_dir / 'summary.json'}, and its line is in "
                         f"{self.root / report.HISTORY}")
        else:
            where = [f"{d} ({n} file{'s' if n != 1 else ''})" for d in (run_dir / "records", self.spill / "records")
                     if (n := len(list(d.glob("*.json"))))]
            metas = [str(p) for p in (run_dir / "meta.json", self.spill / "meta.json") if p.exists()]
            lines.append("  the verdicts are kept, one JSON record per scenario, in " + (" and ".join(where) or
                         "no file (the disks refused them too): they are only in this message")
                         + (f", run metadata in {' and '.join(metas)}" if metas else ""))
        shown = ", ".join(f"{r['scenario']} {r.get('verdict')}" for r in records[:20])
        lines.append(f"  verdicts: {shown}" + (f" (+{len(records) - 20} more)" if len(records) > 20 else ""))
        if "junit.xml" in failed:
            lines.append(f"  junit.xml is kept at {self.staging / 'junit.xml'}")
        lines.append(f"  fix: free space in {self.root} (df -h {self.root}) and run again; the kept records are plain "
                     f"JSON, one per scenario, to read or attach as they are")
        return "\n".join(lines)

    def _say(self, msg: str, red: bool = False) -> None:
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(msg, red=red, bold=red)
        else:
            print(msg, file=sys.stderr if red else sys.stdout)

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
