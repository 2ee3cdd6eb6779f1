"""report.html: one self-contained page QA can open from a CI artefact, offline, with no JS.

Everything from a scenario or from libvirt goes through `e()` (scenario text may hold `<`, quotes,
`$()`), and a Content-Security-Policy forbids scripts and remote loads in case anything slips.
Rows and failure blocks carry `id`, `data-scenario` and `data-verdict` so a browser test (or a
person with devtools) can find them.
"""
from __future__ import annotations

import hashlib
import html
import re
from datetime import datetime
from itertools import zip_longest
from pathlib import Path
from urllib.parse import quote

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1f2328;
 margin:0;background:#f6f8fa}
main{max-width:1240px;margin:0 auto;padding:20px 24px 48px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px}h3{font-size:15px;margin:0 0 10px}
a{color:#0969da}code,pre,.mono{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12.5px}
pre{white-space:pre-wrap;word-break:break-word;margin:0}
.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:14px 16px;margin:0 0 14px}
.status{font-size:16px;font-weight:600;padding:10px 16px;border-radius:8px;margin:0 0 14px}
.status.bad{background:#ffebe9;color:#a40e26;border:1px solid #ff8182}
.status.good{background:#dafbe1;color:#116329;border:1px solid #4ac26b}
.meta{display:grid;grid-template-columns:repeat(auto-fill,minmax(270px,1fr));gap:4px 22px;margin:8px 0 0}
.meta div{display:flex;gap:8px;min-width:0}.meta .wide{grid-column:span 2}.meta dt{color:#656d76;min-width:92px}
.meta dd{margin:0;overflow-wrap:anywhere}
.counts{display:flex;gap:8px;flex-wrap:wrap;margin:10px 0 0}
.counts span{border-radius:6px;padding:3px 10px;font-weight:600}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #d8dee4;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600;color:#424a53;white-space:nowrap}
table.list{border:1px solid #d0d7de}
.num{text-align:right;white-space:nowrap}
.small{font-size:12.5px;color:#424a53}.muted{color:#656d76}
.badge{display:inline-block;border-radius:12px;padding:1px 9px;font-weight:600;font-size:12px;white-space:nowrap}
.v-passed{background:#dafbe1;color:#116329}.v-failed{background:#ffebe9;color:#a40e26}
.v-error{background:#fbefff;color:#6e2fbf}.v-skipped{background:#eaeef2;color:#424a53}
.v-flaky{background:#fff8c5;color:#7d4e00}.v-not-run{background:#f6f8fa;color:#8c959f}
tr.row-failed td:first-child,tr.row-error td:first-child{box-shadow:inset 4px 0 #cf222e}
tr.row-error td:first-child{box-shadow:inset 4px 0 #8250df}
tr.step-failed{background:#fff5f5}
.tag{display:inline-block;background:#ddf4ff;color:#0550ae;border-radius:10px;padding:0 7px;margin:0 3px 2px 0;font-size:12px}
.failure{border-left:4px solid #cf222e}.failure.v-error-block{border-left-color:#8250df}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px;margin:0 0 12px}
.facts dt{color:#656d76}.facts dd{margin:0}
.sbs th{width:50%}.sbs td{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12.5px}
.sbs tr.differs td{background:#fff8c5}
.libvirt{background:#ffebe9;border:1px solid #ffcecb;border-radius:6px;padding:8px 10px}
.message{background:#f6f8fa;border:1px solid #d8dee4;border-radius:6px;padding:8px 10px;max-height:22em;overflow:auto}
.label{font-weight:600;margin:12px 0 4px;color:#424a53}
ul.files{display:flex;flex-wrap:wrap;gap:2px 24px;margin:4px 0 0;padding-left:18px}
.card h2:first-child{margin-top:0}
.cmp .lists{display:flex;flex-wrap:wrap;gap:4px 48px}.cmp ul{margin:2px 0 8px;padding-left:20px}
.diff td.v{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12.5px;overflow-wrap:anywhere}
.diff td.a{background:#ffebe9}.diff td.b{background:#dafbe1}.diff tr.acked td{color:#656d76;background:none}
.diff details{margin:10px 0 0}.diff summary{cursor:pointer;color:#424a53}
"""

#: Comparison lists as shown to people, most urgent first (text and HTML share it).
COMPARE_SECTIONS = (
    ("new_failures", "New failures"),
    ("still_failing", "Still failing"),
    ("fixed", "Fixed"),
    ("flaky", "Flaky (passed after retry)"),
    ("new_scenarios", "New scenarios"),
    ("removed_scenarios", "Removed scenarios"),
)

_ORDER = {"failed": 0, "error": 1, "flaky": 2, "passed": 3, "skipped": 4}


def e(value) -> str:
    """Escape for text and quoted attributes alike; None becomes empty."""
    return "" if value is None else html.escape(str(value), quote=True)


def page(title: str, body: str) -> str:
    """A complete page; the CSP blocks scripts and any remote fetch even if escaping failed."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{e(title)}</title><style>{CSS}</style></head>\n<body><main>\n{body}\n</main></body></html>\n")


def slug(name: str) -> str:
    """A stable, unique HTML id part: the name itself if it is tame, else a cleaned name plus a hash."""
    clean = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-")
    if clean == name:
        return clean
    return f"{clean or 'x'}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def shown_verdict(rec: dict) -> str:
    """The verdict as QA should read it: a pass after a retry is "flaky"."""
    flaky = rec["verdict"] == "passed" and rec.get("attempts", 1) > 1
    return "flaky" if flaky else rec["verdict"]


def badge(verdict: str) -> str:
    return f'<span class="badge v-{e(verdict)}">{e(verdict)}</span>'


def duration(seconds) -> str:
    if seconds is None:
        return ""
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def when(iso: str | None) -> str:
    """ISO 8601 as "2026-11-26 07:15:00 UTC": readable, still unambiguous."""
    if not iso:
        return ""
    try:
        t = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    zone = "" if t.tzinfo is None else " UTC" if not t.utcoffset() else t.strftime(" %z")
    return t.strftime("%Y-%m-%d %H:%M:%S") + zone


def aliases(mapping: dict | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (mapping or {}).items())


# --- page sections -----------------------------------------------------------------------------

def _status(counts: dict) -> str:
    bad = counts["failed"] + counts["error"]
    total = sum(counts[v] for v in ("passed", "failed", "skipped", "error"))
    if bad:
        return f'<div class="status bad">{bad} of {total} scenarios failing</div>'
    return f'<div class="status good">No failures: {total} scenarios, {counts["skipped"]} skipped</div>'


def _header(meta: dict, counts: dict) -> str:
    run_time = duration(_elapsed(meta))
    # In rows of four: versions, then the bed, then time; URI and command are long, two cells each.
    facts = [("Suite", meta.get("suite")), ("libvirt", meta.get("libvirt")), ("QEMU", meta.get("qemu")),
             ("Kernel", meta.get("kernel")), ("Accelerator", meta.get("accelerator")),
             ("Domain type", meta.get("domain_type")), ("Bed", meta.get("bed")),
             ("Shard", meta.get("shard") or "whole run"), ("Started", when(meta.get("started"))),
             ("Finished", when(meta.get("finished"))), ("Run time", run_time),
             ("Harness", meta.get("harness_version"))]
    wide = [("URI", meta.get("uri")), ("Command", meta.get("command"))]
    grid = "".join(f"<div><dt>{e(k)}</dt><dd>{e(v)}</dd></div>" for k, v in facts) + "".join(
        f'<div class="wide"><dt>{e(k)}</dt><dd class="mono">{e(v)}</dd></div>' for k, v in wide)
    chips = "".join(f'<span class="v-{v}">{counts[v]} {v}</span>'
                    for v in ("passed", "failed", "error", "skipped", "flaky"))
    return (f'<header class="card"><h1>{e(meta.get("suite"))} &middot; libvirt {e(meta.get("libvirt"))}</h1>'
            f'<div class="small mono">{e(meta.get("run_id"))}</div>'
            f'<dl class="meta">{grid}</dl><div class="counts" id="counts">{chips}</div></header>')


def _elapsed(meta: dict) -> float | None:
    try:
        return (datetime.fromisoformat(meta["finished"]) - datetime.fromisoformat(meta["started"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


def _comparison(cmp: dict, present: set[str]) -> str:
    if cmp.get("previous") is None:
        return '<section class="card cmp"><h2>Since the previous run</h2><p>No previous run of this suite.</p></section>'
    parts = []
    for key, title in COMPARE_SECTIONS:
        if cmp.get(key):
            items = "".join(f'<li><a href="#row-{e(slug(n))}">{e(n)}</a></li>' if n in present
                            else f"<li>{e(n)}</li>" for n in cmp[key])
            parts.append(f"<div><strong>{e(title)} ({len(cmp[key])})</strong><ul>{items}</ul></div>")
    body = f'<div class="lists">{"".join(parts)}</div>' if parts else "<p>No changes.</p>"
    return (f'<section class="card cmp" id="comparison"><h2>Since {e(cmp["previous"])}</h2>{body}</section>')


def _why(rec: dict) -> str:
    """One line in the verdict table saying why a scenario did not pass."""
    f = rec.get("failure")
    if rec["verdict"] == "skipped":
        return e(rec.get("skip_reason"))
    if f:
        return e(f"step {_human(f.get('step_index'))} ({f.get('step')}): {f.get('check')}")
    return ""


def _row(rec: dict) -> str:
    name, v, shown = rec["scenario"], rec["verdict"], shown_verdict(rec)
    sid = slug(name)
    link = f'<a href="#fail-{e(sid)}">{e(name)}</a>' if v in ("failed", "error") else e(name)
    tags = "".join(f'<span class="tag">{e(t)}</span>' for t in rec.get("tags") or [])
    attempts = rec.get("attempts", 1)
    return (f'<tr id="row-{e(sid)}" class="row-{e(v)}" data-scenario="{e(name)}" data-verdict="{e(v)}"'
            f' data-flaky="{str(shown == "flaky").lower()}">'
            f'<td><strong>{link}</strong><div class="small mono muted">{e(rec.get("nodeid"))}</div></td>'
            f"<td>{tags}</td><td>{badge(shown)}</td><td class=\"num\">{e(attempts)}</td>"
            f'<td class="num">{duration(rec.get("duration_s"))}</td>'
            f'<td class="small">{_why(rec)}</td><td class="small">{e(rec.get("guards"))}</td></tr>')


def _verdict_table(records: list[dict]) -> str:
    ordered = sorted(records, key=lambda r: _ORDER.get(shown_verdict(r), 9))
    head = ("<tr><th>Scenario</th><th>Tags</th><th>Verdict</th><th class=\"num\">Tries</th>"
            "<th class=\"num\">Duration</th><th>Why</th><th>Guards</th></tr>")
    rows = "\n".join(_row(r) for r in ordered)
    return f'<h2>Scenarios</h2><table class="list" id="verdicts"><thead>{head}</thead><tbody>\n{rows}\n</tbody></table>'


def _side_by_side(expected, actual) -> str:
    """Expected and actual line by line; lines that differ are highlighted."""
    rows = []
    for exp, act in zip_longest(str(expected or "").splitlines(), str(actual or "").splitlines(), fillvalue=""):
        cls = ' class="differs"' if exp != act else ""
        rows.append(f"<tr{cls}><td>{e(exp)}</td><td>{e(act)}</td></tr>")
    return f'<table class="list sbs"><tr><th>Expected</th><th>Actual</th></tr>{"".join(rows)}</table>'


def _artefact_files(run_dir: Path, rel: str | None) -> list[Path]:
    """Files really present under the record's artefacts dir (never outside run_dir)."""
    if not rel:
        return []
    root = run_dir.resolve()
    base = (root / rel).resolve()
    if not base.is_relative_to(root) or not base.is_dir():
        return []
    return sorted(p for p in base.rglob("*") if p.is_file())


def _link(run_dir: Path, path: Path, text: str | None = None) -> str:
    rel = path.relative_to(run_dir.resolve()).as_posix()
    return f'<a href="{e(quote(rel))}">{e(text or path.name)}</a>'


def _steps(rec: dict, files: list[Path], run_dir: Path) -> str:
    failed_at = (rec.get("failure") or {}).get("step_index")
    rows = []
    for s in rec.get("steps") or []:
        prefix = f"step-{_human(s.get('index', 0)):02d}-"
        links = " ".join(_link(run_dir, p, p.name[len(prefix):]) for p in files if p.name.startswith(prefix))
        cls = ' class="step-failed"' if s.get("index") == failed_at or s.get("verdict") == "failed" else ""
        rows.append(f"<tr{cls}><td class=\"num\">{e(_human(s.get('index')))}</td><td class=\"mono\">{e(s.get('step'))}</td>"
                    f"<td class=\"num\">{e(s.get('line'))}</td><td>{badge(s.get('verdict', ''))}</td>"
                    f"<td class=\"num\">{duration(s.get('duration_s'))}</td><td class=\"num\">{duration(s.get('libvirt_s'))}</td>"
                    f"<td class=\"mono\">{e(aliases(s.get('aliases')))}</td><td>{links}</td></tr>")
    if not rows:
        return ""
    head = ("<tr><th class=\"num\">#</th><th>Step</th><th class=\"num\">Line</th><th>Verdict</th>"
            "<th class=\"num\">Time</th><th class=\"num\">libvirt</th><th>Aliases after step</th><th>XML</th></tr>")
    return f'<div class="label">Steps</div><table class="list steps">{head}{"".join(rows)}</table>'


def _facts(rec: dict, f: dict) -> str:
    where = f"{rec.get('file')}:{f.get('line')}" if f.get("line") is not None else rec.get("file")
    facts = [("Failing step", f"#{_human(f.get('step_index'))} {f.get('step')}"), ("YAML", where),
             ("Check", f.get("check")), ("Attempts", rec.get("attempts", 1))]
    return "<dl class=\"facts\">" + "".join(f"<dt>{e(k)}</dt><dd class=\"mono\">{e(v)}</dd>" for k, v in facts) + "</dl>"


def _failure_block(rec: dict, run_dir: Path) -> str:
    name, v = rec["scenario"], rec["verdict"]
    f = rec.get("failure") or {}
    files = _artefact_files(run_dir, rec.get("artefacts"))
    parts = [f'<h3>{e(name)} {badge(v)}</h3>']
    if f:
        parts.append(_facts(rec, f))
        parts.append(_side_by_side(f.get("expected"), f.get("actual")))
        if f.get("libvirt_error"):
            parts.append(f'<div class="label">libvirt error</div><pre class="libvirt">{e(f["libvirt_error"])}</pre>')
        if f.get("message"):
            parts.append(f'<div class="label">Message</div><pre class="message">{e(f["message"])}</pre>')
    else:
        parts.append('<p class="muted">No failure details were recorded.</p>')
    parts.append(_steps(rec, files, run_dir))
    listing = "".join(f"<li>{_link(run_dir, p, p.relative_to((run_dir / rec['artefacts']).resolve()).as_posix())}</li>"
                      for p in files)
    parts.append(f'<div class="label">Artefacts</div><ul class="files">{listing}</ul>' if files
                 else '<div class="label">Artefacts</div><p class="muted">none saved</p>')
    cls = "card failure" + (" v-error-block" if v == "error" else "")
    return (f'<section class="{cls}" id="fail-{e(slug(name))}" data-scenario="{e(name)}" data-verdict="{e(v)}">'
            + "\n".join(parts) + "</section>")


def _diff_value(v) -> str:
    return '<span class="muted">(absent)</span>' if v is None else e(v)


def _diff_rows(diffs: list[dict], present: set[str]) -> str:
    rows = []
    for d in diffs:
        name = d["scenario"]
        link = f'<a href="#row-{e(slug(name))}">{e(name)}</a>' if name in present else e(name)
        step = f"{d['step']} {d.get('step_text') or ''}" if d.get("step") is not None else ""
        ack = d.get("ack")
        why = f'<div class="small muted">acknowledged: {e(ack["reason"])} ({e(ack["file"])}:{e(ack["line"])})</div>' \
            if ack else ""
        why += "".join(f'<div class="small muted">{e(n)}</div>' for n in d.get("notes") or [])
        rows.append(f'<tr class="{"acked" if ack else "new"}" data-scenario="{e(name)}" data-kind="{e(d["kind"])}">'
                    f"<td>{link}</td><td class=\"mono\">{e(step)}</td><td>{e(d['kind'])}</td>"
                    f"<td class=\"v\">{e(d.get('subject'))}{why}</td><td class=\"v a\">{_diff_value(d['a'])}</td>"
                    f"<td class=\"v b\">{_diff_value(d['b'])}</td></tr>")
    head = "<tr><th>Scenario</th><th>Step</th><th>Kind</th><th>What</th><th>A</th><th>B</th></tr>"
    return f'<table class="list">{head}{"".join(rows)}</table>'


def differences(diff: dict, present: set[str]) -> str:
    """The optional "Differences from RUN_A" section (harness diff --html; data from report/diff.py)."""
    a, c = diff["a"], diff["counts"]
    name = Path(str(a.get("run_dir") or "")).name or a.get("run_id")
    new = [d for d in diff["differences"] if d.get("ack") is None]
    acked = [d for d in diff["differences"] if d.get("ack") is not None]
    parts = [f'<h2>Differences from {e(name)}</h2>',
             f'<p class="small">A: {e(a.get("suite"))}, libvirt {e(a.get("libvirt"))}, QEMU {e(a.get("qemu"))} '
             f'(run {e(a.get("run_id"))}). Scenarios in both runs: {e(c["scenarios_compared"])}, '
             f'only in A: {e(c["only_in_a"])}, only in this run: {e(c["only_in_b"])}. '
             f'<strong>{e(c["new"])} new</strong>, {e(c["acknowledged"])} acknowledged'
             + (f' ({e(diff["acks_file"])})' if diff.get("acks_file") else "") + ".</p>"]
    parts.append(_diff_rows(new, present) if new else "<p>No new differences.</p>")
    if acked:
        parts.append(f"<details><summary>{len(acked)} acknowledged</summary>{_diff_rows(acked, present)}</details>")
    if diff.get("stale_acks"):
        items = "".join(f'<li class="mono">{e(s["file"])}:{e(s["line"])}: {e(s["reason"])}</li>'
                        for s in diff["stale_acks"])
        parts.append(f'<div class="label">Stale acknowledgements (match nothing any more)</div><ul>{items}</ul>')
    for note in diff.get("notes") or []:
        parts.append(f'<p class="small muted">{e(note)}</p>')
    return f'<section class="card diff" id="differences" data-new="{e(c["new"])}">{"".join(parts)}</section>'


def render(summary: dict, run_dir: Path, diff: dict | None = None) -> str:
    """The whole report for one run; artefact links are relative to run_dir, where the page lives.
    `diff` (report/diff.py's result with this run as RUN_B) adds a "Differences from RUN_A" section."""
    meta, counts, records = summary["meta"], summary["counts"], summary["scenarios"]
    failing = [r for r in records if r["verdict"] in ("failed", "error")]
    body = [_status(counts), _header(meta, counts)]
    if "comparison" in summary:
        body.append(_comparison(summary["comparison"], {r["scenario"] for r in records}))
    if diff is not None:
        body.append(differences(diff, {r["scenario"] for r in records}))
    body.append(_verdict_table(records))
    if failing:
        body.append("<h2>Failures</h2>")
        body.extend(_failure_block(r, run_dir) for r in failing)
    title = f"{meta.get('suite')} libvirt {meta.get('libvirt')}: {counts['failed'] + counts['error']} failing"
    return page(title, "\n".join(body))


def render_matrix(columns: list[str], names: list[str], rows: list[list[str]]) -> str:
    """The scenario x libvirt-version matrix as a page; cells coloured like verdicts."""
    cls = {"PASS": "passed", "FAIL": "failed", "ERROR": "error", "SKIP": "skipped", "FLAKY": "flaky"}
    head = "<tr><th>Scenario</th>" + "".join(f"<th>{e(c)}</th>" for c in columns) + "</tr>"
    body = "".join(
        f'<tr data-scenario="{e(n)}"><td class="mono">{e(n)}</td>'
        + "".join(f'<td><span class="badge v-{cls.get(c, "not-run")}">{e(c)}</span></td>' for c in row)
        + "</tr>" for n, row in zip(names, rows))
    return page("Scenario matrix", f'<h1>Scenario matrix</h1><table class="list" id="matrix">{head}{body}</table>')


def _human(index):
    """Records count steps from 0; people, messages and artefact file names count from 1."""
    return index + 1 if isinstance(index, int) else index
