"""A run's folder while the run goes on: the first process of a session claims it, every process (xdist
workers too) puts each scenario's record there at once, and the controller writes the run from them at the end.

Why records on disk: they are how a worker's verdicts reach the controller. Why the care: a results disk that
fills up mid-run must not cost a verdict. What it refuses goes to the session's spill folder, and the records
are removed only once the summary and the history line are written (run.py writes those).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

from filelock import FileLock

from harness import __version__
from harness.errors import HarnessError
from harness.progress import say
from harness.report import run as report
from harness.report.records import ScenarioRecord, as_json

#: What every bed of one run must have alike (Target.meta()); the bed's name and URI may differ.
SAME_SOFTWARE = ("libvirt", "qemu", "kernel", "suite", "accelerator", "domain_type")


class RunFolder:
    """One session's side of its run folder. `work` is the folder for the session's own files (the beds dir)."""

    def __init__(self, sid: str, root: Path, work: Path):
        self.sid = sid
        self.root = root
        # pytest's junit.xml until the run folder exists. Not on the results disk: pytest writes it in
        # sessionfinish, and a write that fails there (disk full) skips unconfigure, i.e. the summary.
        self.staging = work / f"session-{sid}.staging"
        # Records and meta.json the results disk refused (full): kept here until the summary is written.
        self.spill = work / f"session-{sid}.spill"
        self.note = work / f"session-{sid}.rundir"     # the claimed folder, for every process of the session
        self.path: Path | None = None
        self.records: dict[str, ScenarioRecord | dict] = {}   # this process's records, in case no disk takes them
        self.meta: dict | None = None
        self.keep: set[Path] = set()          # session files the session's end must not remove (they hold verdicts)

    def claim(self, meta: dict) -> None:
        """The first process to open the target names the run folder; xdist workers share it. A worker on
        another bed (harness run -n 2: one bed each) joins only if its bed runs the same software: one run
        folder speaks for one libvirt. The beds are listed in the meta's "beds"."""
        with FileLock(str(self.note) + ".lock"):
            if self.note.exists():
                self.path = Path(self.note.read_text())
                self._join(meta)
                return
            meta = dict(meta, started=self.sid.split("-")[0], beds=[meta.get("bed")] if meta.get("bed") else [])
            try:
                self.path = report.make_run_dir(self.root, meta)
            except OSError as e:
                raise HarnessError(f"could not create the run folder in {self.root}: {report.os_error_text(e)}",
                                   hint=f"free space there (df -h {self.root}) or pass --results-dir") from None
            self.meta = meta
            self.put("meta.json", json.dumps(report.redact_tree(meta)))
            self.note.write_text(str(self.path))

    def _join(self, meta: dict) -> None:
        """Another worker's target: the same software as the run's, its bed added to the run's beds."""
        if not meta.get("bed"):
            return
        run = self._run_meta(self.path)
        differ = [f"{k} {run.get(k)} on bed {run.get('bed')} but {meta.get(k)} on bed {meta['bed']}"
                  for k in SAME_SOFTWARE if run.get(k) != meta.get(k)]
        if differ:
            raise HarnessError("the run's beds do not run the same software: " + "; ".join(differ),
                               hint="give every bed of one run the same libvirt build (harness bed status), or "
                                    "run one bed (harness run -n 1)")
        beds = list(run.get("beds") or [])
        if meta["bed"] not in beds:
            self.meta = dict(run, beds=beds + [meta["bed"]])
            self.put("meta.json", json.dumps(report.redact_tree(self.meta)))

    def save(self, record: ScenarioRecord | dict) -> None:
        """One scenario's record (its verdict), on disk at once: xdist workers hand theirs over this way.

        Written atomically and redacted (a kept record may be uploaded with results/). A results disk
        that refuses it sends it to the session's spill folder; never raised, as it runs while the
        scenario's own exception (its verdict) is on its way to pytest.
        """
        data = as_json(record)
        self.records[data["scenario"]] = record
        try:
            self.put(f"records/{data['scenario']}.json", json.dumps(report.redact_tree(data), indent=1))
        except OSError as e:
            say(f"could not keep the record of {data['scenario']} (verdict {data.get('verdict')}) on any "
                f"disk: {report.os_error_text(e)}", warn=True)

    def put(self, rel: str, text: str) -> Path:
        """run folder/rel, written atomically; if the results disk refuses it, the spill folder takes it."""
        path = self.path / rel
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

    def write(self, command: str, tell: Callable[..., None], fail_run: Callable[[str | None], None]) -> None:
        """summary.json, report.html, the history line, junit.xml and compare.txt from the records.

        The records (run folder/records, meta.json, the spill folder) are removed only once the summary
        and the history line are on disk. If any write fails (a full disk), one message says what
        failed and where the verdicts are, and the session exits non-zero: tell(text, red=...) says a line
        to the person running the session, fail_run(text) makes the session fail (and says text) unless
        it already does.
        """
        if not self.note.exists():          # no scenario ran: nothing to report
            shutil.rmtree(self.staging, ignore_errors=True)
            return
        run_dir = Path(self.note.read_text())
        records = self._all_records(run_dir)
        if not records:                # the target was used by tests only, no scenario ran
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.rmtree(self.staging, ignore_errors=True)
            shutil.rmtree(self.spill, ignore_errors=True)
            return
        bad = [r["scenario"] for r in records if r.get("verdict") in report.FAILING]
        if bad:   # e.g. an overlapped teardown that failed in an xdist worker after its item was reported
            fail_run(f"harness: not every scenario passed: {', '.join(bad)}")
        meta = self._run_meta(run_dir)
        meta.update({"run_id": self.sid, "command": command, "harness_version": __version__,
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
            tell(f"harness: results in {run_dir} (report.html, summary.json)")
            return
        self.keep |= {p for p in (self.spill, self.staging) if p.exists()}    # what the message names
        tell(self._not_written(run_dir, records, failed, safe), red=True)
        fail_run(None)

    def _all_records(self, run_dir: Path) -> list[dict]:
        """Every scenario's record: run folder/records, the spill folder, and this process's own."""
        by_name: dict[str, dict] = {}
        for d in (run_dir / "records", self.spill / "records"):
            for p in sorted(d.glob("*.json")):
                try:
                    rec = json.loads(p.read_text())
                    by_name[rec["scenario"]] = rec
                except (OSError, ValueError, KeyError) as e:
                    say(f"skipping unreadable record {p}: {e}", warn=True)
        by_name.update({name: as_json(rec) for name, rec in self.records.items()})
        return [by_name[k] for k in sorted(by_name)]

    def _run_meta(self, run_dir: Path) -> dict:
        for p in (run_dir / "meta.json", self.spill / "meta.json"):
            try:
                return json.loads(p.read_text())
            except (OSError, ValueError):
                continue
        if self.meta is not None:
            return dict(self.meta)
        raise HarnessError(f"the run's meta.json is in neither {run_dir} nor {self.spill}")

    def _not_written(self, run_dir: Path, records: list[dict], failed: dict, safe: bool) -> str:
        """The one message a person reads when the results could not all be written."""
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
