"""Several runs into one view: shards of one run merged into a run folder, and the suite matrix.

Why a module of its own: harness/report/run.py writes one run; these combine runs that were written
already (`harness report --merge`, `harness matrix`) and only read them through run.py's functions.
"""
from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

from harness.errors import HarnessError
from harness.report import html as html_report
from harness.report.run import copy_redacted, is_flaky, load_summary, redact, write_atomic, write_run

# --- shards ------------------------------------------------------------------------------------

def _check_same_run(summaries: list[tuple[Path, dict]]) -> None:
    """Shards of one run share suite and libvirt version; anything else is two different runs."""
    for key in ("suite", "libvirt"):
        seen = {str(d): s["meta"].get(key) for d, s in summaries}
        if len(set(seen.values())) > 1:
            detail = ", ".join(f"{d}: {v}" for d, v in seen.items())
            raise HarnessError(f"shards disagree on {key}: {detail}",
                               hint="merge only the shards of one run")


def _merged_records(summaries: list[tuple[Path, dict]]) -> list[tuple[Path, dict]]:
    """(shard dir, record) for every scenario; a scenario in two shards is an error."""
    owner: dict[str, Path] = {}
    out = []
    for shard_dir, summary in summaries:
        for rec in summary["scenarios"]:
            name = rec["scenario"]
            if name in owner:
                raise HarnessError(f"scenario {name!r} is in two shards: {owner[name]} and {shard_dir}",
                                   hint="each scenario must run in exactly one shard")
            owner[name] = shard_dir
            out.append((shard_dir, rec))
    return out


def _inside(root: Path, rel: str) -> Path:
    """root/rel, refusing a path that leaves root (the record comes from another process)."""
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise HarnessError(f"artefacts path {rel!r} leaves the run dir {root}")
    return path


def _copy_artefacts(shard_dir: Path, record: dict, out_dir: Path) -> None:
    rel = record.get("artefacts")
    if not rel:
        return
    src = _inside(shard_dir, rel)
    if src.is_dir():
        shutil.copytree(src, _inside(out_dir, rel), copy_function=copy_redacted)


def _merged_meta(summaries: list[tuple[Path, dict]]) -> dict:
    """The first shard's meta, spanning all shards' time, as a whole run (shard None)."""
    metas = [s["meta"] for _, s in summaries]
    meta = dict(metas[0])
    meta["started"] = min((m["started"] for m in metas), key=datetime.fromisoformat)
    meta["finished"] = max((m["finished"] for m in metas), key=datetime.fromisoformat)
    meta["shard"] = None
    meta["merged_shards"] = [m.get("shard") for m in metas]
    return meta


def _merge_junit(shard_dirs: list[Path], out_dir: Path) -> None:
    """Put every shard's <testsuite> under one <testsuites> with summed totals."""
    files = [d / "junit.xml" for d in shard_dirs if (d / "junit.xml").is_file()]
    if not files:
        return
    root = ET.Element("testsuites")
    for f in files:
        tree = ET.parse(f).getroot()
        root.extend([tree] if tree.tag == "testsuite" else tree.findall("testsuite"))
    for attr in ("tests", "failures", "errors", "skipped"):
        root.set(attr, str(sum(int(s.get(attr, 0)) for s in root)))
    root.set("time", f"{sum(float(s.get('time', 0)) for s in root):.3f}")
    text = ET.tostring(root, encoding="unicode", xml_declaration=True)
    write_atomic(out_dir / "junit.xml", redact(text))


def merge_shards(shard_dirs: list[Path], out_dir: Path) -> dict:
    """Merge shard run dirs into out_dir (new or empty): summary, report, junit.xml, artefacts."""
    if not shard_dirs:
        raise HarnessError("no shard directories to merge")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise HarnessError(f"{out_dir} is not empty", hint="merge into a new directory")
    summaries = [(d, load_summary(d)) for d in shard_dirs]
    _check_same_run(summaries)
    pairs = _merged_records(summaries)
    out_dir.mkdir(parents=True, exist_ok=True)
    for shard_dir, rec in pairs:
        _copy_artefacts(shard_dir, rec, out_dir)
    _merge_junit(shard_dirs, out_dir)
    return write_run(out_dir, _merged_meta(summaries), [rec for _, rec in pairs])


# --- matrix ------------------------------------------------------------------------------------

def cell(record: dict | None) -> str:
    """One matrix cell: PASS, FLAKY, FAIL, ERROR, SKIP, or - when the scenario was not in that run."""
    if record is None:
        return "-"
    if is_flaky(record):
        return "FLAKY"
    return {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "skipped": "SKIP"}[record["verdict"]]


def _columns(summaries: list[dict]) -> list[str]:
    """"suite libvirt" per summary; two runs of the same pair are told apart by run id."""
    labels = [f"{s['meta']['suite']} {s['meta']['libvirt']}" for s in summaries]
    return [f"{label} ({s['meta'].get('run_id')})" if labels.count(label) > 1 else label
            for label, s in zip(labels, summaries)]


def matrix_table(summaries: list[dict]) -> tuple[str, str]:
    """Scenario x "suite libvirt-version" table, as aligned text and as a self-contained HTML page."""
    columns = _columns(summaries)
    by_run = [{r["scenario"]: r for r in s["scenarios"]} for s in summaries]
    names = sorted(set().union(*by_run)) if by_run else []
    rows = [[cell(run.get(name)) for run in by_run] for name in names]
    return _matrix_text(columns, names, rows), html_report.render_matrix(columns, names, rows)


def _matrix_text(columns: list[str], names: list[str], rows: list[list[str]]) -> str:
    first = max([len("scenario")] + [len(n) for n in names])
    widths = [max(len(c), 5) for c in columns]
    def line(head: str, cells: list[str]) -> str:
        return "  ".join([head.ljust(first)] + [c.ljust(w) for c, w in zip(cells, widths)]).rstrip()
    out = [line("scenario", columns), line("-" * first, ["-" * w for w in widths])]
    out.extend(line(name, row) for name, row in zip(names, rows))
    return "\n".join(out) + "\n"
