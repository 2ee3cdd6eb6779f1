"""One run on disk: results/<run dir>/{summary.json, report.html, artefacts/}, plus results/history.jsonl.

Pure Python, no libvirt: run_folder.py hands over run metadata and one record per scenario
(records.py has the shape) and this module writes what QA reads.

Run directories are named `<YYYY-MM-DD>_<suite>_<libvirt-version>` (date of the run's start, UTC).
A second run of the same suite and libvirt on the same day gets `.2`, then `.3`, ... so a run never
overwrites another one (see `make_run_dir`).
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock

from harness.errors import HarnessError
from harness.progress import say
from harness.report import html as html_report

VERDICTS = ("passed", "failed", "skipped", "error")
#: Verdicts that mean "this scenario is broken": an error (harness or setup) is as red as a failure.
FAILING = ("failed", "error")
HISTORY = "history.jsonl"

_KEY_BLOCK = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S)
_URI_QUERY = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#'\"<>]*)\?[^\s#'\"<>]*")
_SECRET_PARAM = re.compile(r"\b(keyfile|command)=[^\s&'\"<>]+")


# --- redaction -------------------------------------------------------------------------------

def redact(text: str) -> str:
    """Keep per-bed secrets out of files that are shared as CI artefacts.

    Private key blocks (even truncated ones) become "[redacted key]"; URIs lose their query string
    (qemu+ssh://...?keyfile=/path&command=... names the key and the remote command); a stray
    `keyfile=`/`command=` outside a URI loses its value.
    """
    text = _KEY_BLOCK.sub("[redacted key]", text)
    text = _URI_QUERY.sub(r"\1", text)
    return _SECRET_PARAM.sub(r"\1=[redacted]", text)


def os_error_text(e: OSError) -> str:
    """An OSError as a person reads it: "No space left on device (ENOSPC): /results/x/summary.json"."""
    if not e.errno:
        return str(e)
    text = f"{e.strerror or os.strerror(e.errno)} ({errno.errorcode.get(e.errno, f'errno {e.errno}')})"
    return text + (f": {e.filename}" if e.filename else "")


def _redact_tree(obj: Any) -> Any:
    """Redact every string in a JSON-like tree: messages and logs can quote the URI anywhere."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: _redact_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redact_tree(v) for v in obj]
    return obj


redact_tree = _redact_tree


# --- one run -----------------------------------------------------------------------------------

def _safe(part: str) -> str:
    """A suite or version string as a single path component."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", str(part)).strip(".-") or "unknown"


def run_dir_name(meta: dict) -> str:
    """`<YYYY-MM-DD>_<suite>_<libvirt-version>`, the date being the run's start in UTC."""
    started = datetime.fromisoformat(meta["started"])
    if started.tzinfo is not None:
        started = started.astimezone(timezone.utc)
    return f"{started:%Y-%m-%d}_{_safe(meta['suite'])}_{_safe(meta['libvirt'])}"


def make_run_dir(results_root: Path, meta: dict) -> Path:
    """Create the run's directory: the plain name, else `.2`, `.3`, ... (mkdir is the race-free claim)."""
    results_root.mkdir(parents=True, exist_ok=True)
    base = run_dir_name(meta)
    n = 1
    while True:
        path = results_root / (base if n == 1 else f"{base}.{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def is_flaky(record: dict) -> bool:
    """Passed, but only after a retry."""
    return record.get("verdict") == "passed" and record.get("attempts", 1) > 1


def count(records: list[dict]) -> dict:
    """Verdict counts. `flaky` is a subset of `passed`: passed + failed + skipped + error = total."""
    counts = dict.fromkeys(VERDICTS + ("flaky",), 0)
    for rec in records:
        if rec["verdict"] not in VERDICTS:
            raise HarnessError(f"scenario {rec.get('scenario')!r} has verdict {rec['verdict']!r}",
                               hint=f"the plugin must report one of {', '.join(VERDICTS)}")
        counts[rec["verdict"]] += 1
        counts["flaky"] += is_flaky(rec)
    return counts


def write_atomic(path: Path, text: str) -> None:
    """A reader (or a crash) never sees half a file. 0644: CI may upload it as another user.

    The data is on disk (fsync) before the rename, so a full disk fails here, not later; on any
    failure the temporary file is removed (a full disk once kept a 0-byte `.summary.json.*`).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


_write_atomic = write_atomic


def copy_redacted(src: Path, dst: Path) -> None:
    """Copy a text file (junit.xml, a log) into results/, redacted like summary.json; atomic.

    Binary files are copied as they are (redaction is for text a person reads or attaches)."""
    data = Path(src).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        shutil.copyfile(src, dst)
        return
    write_atomic(Path(dst), redact(text))


def write_run(run_dir: Path, meta: dict, records: list[dict], comparison: dict | None = None) -> dict:
    """Write summary.json and report.html (both redacted) into run_dir; return the summary.

    `comparison` (from `compare`) is optional: when given it is kept in the summary and shown at
    the top of the report, so the morning reader sees what changed since the previous run.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = _redact_tree({"meta": meta, "counts": count(records), "scenarios": records})
    if comparison is not None:
        summary["comparison"] = comparison
    _write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    _write_atomic(run_dir / "report.html", html_report.render(summary, run_dir))
    return summary


def load_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))


# --- history -----------------------------------------------------------------------------------

def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def append_history(results_root: Path, summary: dict, run_dir: Path) -> dict:
    """Append one JSON line for this run to results/history.jsonl; return it.

    The line holds meta, counts, {scenario: verdict}, the flaky scenarios and the run dir relative
    to results_root. A file lock keeps lines whole when parallel shards finish together.
    """
    entry = {
        "meta": summary["meta"],
        "counts": summary["counts"],
        "scenarios": {r["scenario"]: r["verdict"] for r in summary["scenarios"]},
        "flaky": sorted(r["scenario"] for r in summary["scenarios"] if is_flaky(r)),
        "run_dir": _relative(run_dir, results_root),
    }
    line = (json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    results_root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(results_root / (HISTORY + ".lock")), timeout=60):
        fd = os.open(results_root / HISTORY, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
            # A torn last line (a writer killed mid-line, a full disk) must not swallow this entry.
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            try:
                view = memoryview(line)
                while view:                # unbuffered: nothing is left to flush after a failure
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except BaseException:
                try:                       # leave the file as it was, not with part of this line
                    os.ftruncate(fd, size)
                except OSError:
                    pass
                raise
        finally:
            os.close(fd)
    return entry


def read_history(results_root: Path) -> list[dict]:
    """All history entries in append order; a damaged line is reported and skipped, not fatal."""
    path = results_root / HISTORY
    if not path.exists():
        return []
    entries = []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
            continue
        except json.JSONDecodeError as e:
            err = e
        torn = n == len(lines) and not text.endswith("\n")
        whole = _after_torn_part(line)
        if whole is not None:      # an older writer appended a whole entry straight after a torn line
            say(f"{path}:{n}: skipping the torn start of a history line, keeping the entry after it", warn=True)
            entries.append(whole)
        else:
            say(f"{path}:{n}: skipping {'torn last' if torn else 'damaged'} history line ({err})", warn=True)
    return entries


def _after_torn_part(line: str) -> dict | None:
    """The whole entry at the end of `line`, after a torn one: the last `{"meta":` that parses to the end."""
    decoder = json.JSONDecoder()
    start = len(line)
    while (start := line.rfind('{"meta":', 0, start)) > 0:
        try:
            obj, end = decoder.raw_decode(line, start)
        except json.JSONDecodeError:
            continue
        if not line[end:].strip() and isinstance(obj, dict):
            return obj
    return None


def summary_from_history(entry: dict) -> dict:
    """A summary with verdicts only, rebuilt from a history line (its run folder is gone)."""
    flaky = set(entry.get("flaky", []))
    return {"meta": entry.get("meta", {}), "counts": entry.get("counts", {}),
            "scenarios": [{"scenario": s, "verdict": v, **({"attempts": 2} if s in flaky else {})}
                          for s, v in entry.get("scenarios", {}).items()]}


def summary_of(results_root: Path, entry: dict) -> dict:
    """The run's summary.json; if its folder was pruned (or the file is unreadable), say which run is
    missing and carry on with the verdicts its history line holds."""
    run_dir = results_root / entry.get("run_dir", "")
    try:
        return load_summary(run_dir)
    except (OSError, ValueError) as e:
        why = "is gone (pruned?)" if not run_dir.exists() else f"has no readable summary.json ({e})"
        run_id = entry.get("meta", {}).get("run_id")
        say(f"run {run_id} ({entry.get('run_dir')}): the folder {run_dir} {why}; using its verdicts "
            f"from {results_root / HISTORY}", warn=True)
        return summary_from_history(entry)


def previous_run(results_root: Path, suite: str, before_run_id: str, shard: str | None = None) -> dict | None:
    """The summary of the last run of `suite` recorded before `before_run_id`, or None.

    Only entries of the same shard count (default None: whole runs, i.e. unsharded or merged), so a
    shard is never compared with a whole run. If `before_run_id` is not in the history yet, the last
    matching entry is taken. The run's summary.json is preferred; if its directory is gone, a
    summary with verdicts only is rebuilt from the history line.
    """
    found = None
    for entry in read_history(results_root):
        meta = entry.get("meta", {})
        if meta.get("run_id") == before_run_id:
            break
        if meta.get("suite") == suite and meta.get("shard") == shard:
            found = entry
    if found is None:
        return None
    return summary_of(results_root, found)


# --- comparison --------------------------------------------------------------------------------

def compare(prev_summary: dict | None, cur_summary: dict) -> dict:
    """What changed since the previous run; every list sorted by scenario name.

    Failing means failed or error. new_failures: failing now, not failing before (passed, skipped or
    absent). fixed: failing before, passed now. flaky: passed now after a retry.
    """
    prev = {r["scenario"]: r["verdict"] for r in (prev_summary or {}).get("scenarios", [])}
    cur = {r["scenario"]: r for r in cur_summary["scenarios"]}
    was_failing = {s for s, v in prev.items() if v in FAILING}
    failing = {s for s, r in cur.items() if r["verdict"] in FAILING}
    passed = {s for s, r in cur.items() if r["verdict"] == "passed"}
    return {
        "previous": (prev_summary or {}).get("meta", {}).get("run_id"),
        "current": cur_summary["meta"].get("run_id"),
        "new_failures": sorted(failing - was_failing),
        "fixed": sorted(was_failing & passed),
        "still_failing": sorted(failing & was_failing),
        "flaky": sorted(s for s, r in cur.items() if is_flaky(r)),
        "new_scenarios": sorted(cur.keys() - prev.keys()),
        "removed_scenarios": sorted(prev.keys() - cur.keys()),
    }


def format_compare(d: dict) -> str:
    """Plain text for a terminal or a CI log, most urgent first."""
    if d["previous"] is None:
        head = f"Run {d['current']}: no previous run of this suite to compare with."
    else:
        head = f"Run {d['current']} compared with {d['previous']}:"
    lines = [head]
    for key, title in html_report.COMPARE_SECTIONS:
        if d[key]:
            lines.append(f"  {title} ({len(d[key])}):")
            lines.extend(f"    - {name}" for name in d[key])
    if len(lines) == 1:
        lines.append("  no changes.")
    return "\n".join(lines) + "\n"
