"""The reporting layer: run dirs, summary.json, history, comparison, shard merge, matrix, redaction, HTML."""
from __future__ import annotations

import json
import os
import threading
import xml.etree.ElementTree as ET
from concurrent.futures import ProcessPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import pytest
from filelock import FileLock

from harness.errors import HarnessError
from harness.report import combine, run
from harness.report.html import slug

# Assembled at run time so the repository itself never holds a private-key block.
_PK = "OPENSSH " + "PRIVATE KEY"
KEY = f"-----BEGIN {_PK}-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END {_PK}-----"
URI = "qemu+ssh://root@127.0.0.1:2222/system?keyfile=/home/ci/.cache/beds/trixie/id_ed25519&no_verify=1"
URI_XML = URI.replace("&", "&amp;")     # as it stands in junit.xml
HOSTILE = 'a"<b>$(x)'


def meta(**over) -> dict:
    m = {"run_id": "20261126T071500Z-trixie", "started": "2026-11-26T07:15:00+00:00",
         "finished": "2026-11-26T07:31:40+00:00", "suite": "trixie", "libvirt": "11.3.0", "qemu": "10.0.13",
         "kernel": "6.12.117", "accelerator": "tcg", "domain_type": "kvm", "bed": "trixie", "uri": URI,
         "harness_version": "0.1.0", "command": "pytest scenarios -m seed", "shard": None}
    m.update(over)
    return m


def rec(name: str, verdict: str = "passed", attempts: int = 1, **over) -> dict:
    r = {"scenario": name, "nodeid": f"scenarios/{name}.yaml::{name}", "file": f"scenarios/{name}.yaml",
         "line": 1, "tags": ["seed"], "guards": "f8e712fe: hostdev alias broke hot-plug", "verdict": verdict,
         "duration_s": 12.3, "attempts": attempts, "skip_reason": None, "failure": None,
         "steps": [{"index": 0, "step": "start", "line": 12, "verdict": "passed", "duration_s": 6.1,
                    "libvirt_s": 5.9, "aliases": {"hn0": "hostdev0"}}],
         "artefacts": f"artefacts/{name}"}
    if verdict == "failed":
        r["failure"] = {"step_index": 1, "step": "attach n1", "line": 17, "check": "alias-stable",
                        "expected": "n1 -> net0", "actual": "n1 -> net1",
                        "libvirt_error": "internal error: Unable to determine device index for network device",
                        "message": "alias of n1 changed: expected net0, got net1"}
        r["steps"].append({"index": 1, "step": "attach n1", "line": 17, "verdict": "failed", "duration_s": 0.4,
                           "libvirt_s": 0.3, "aliases": {"hn0": "hostdev0", "n1": "net1"}})
    if verdict == "skipped":
        r["skip_reason"] = "requires libvirt >=12.0.0"
        r["steps"] = []
    r.update(over)
    return r


def summary(names_verdicts: dict, **meta_over) -> dict:
    """A summary as write_run makes it, without touching disk: {name: verdict or (verdict, attempts)}."""
    records = [rec(n, *(v if isinstance(v, tuple) else (v,))) for n, v in names_verdicts.items()]
    return {"meta": meta(**meta_over), "counts": run.count(records), "scenarios": records}


def put_artefacts(run_dir: Path, name: str) -> Path:
    d = run_dir / "artefacts" / name
    d.mkdir(parents=True)
    for f in ("step-01-live.xml", "step-02-live.xml", "step-02-inactive.xml", "libvirtd.log"):
        (d / f).write_text(f"<{f}/>\n")
    return d


# --- run dir names -----------------------------------------------------------------------------

def test_run_dir_name_is_date_suite_libvirt():
    assert run.run_dir_name(meta()) == "2026-11-26_trixie_11.3.0"


def test_run_dir_name_uses_utc_date_and_safe_parts():
    m = meta(started="2026-11-26T01:00:00+02:00", suite="tri xie/../x", libvirt="11.3.0-1~bpo")
    assert run.run_dir_name(m) == "2026-11-25_tri-xie-..-x_11.3.0-1-bpo"


def test_make_run_dir_appends_counter_when_taken(tmp_path):
    first, second, third = (run.make_run_dir(tmp_path, meta()) for _ in range(3))
    assert [p.name for p in (first, second, third)] == [
        "2026-11-26_trixie_11.3.0", "2026-11-26_trixie_11.3.0.2", "2026-11-26_trixie_11.3.0.3"]
    assert all(p.is_dir() for p in (first, second, third))


# --- write_run ---------------------------------------------------------------------------------

def test_write_run_writes_summary_and_report(tmp_path):
    records = [rec("ok"), rec("bad", "failed"), rec("skip", "skipped"), rec("flip", "passed", 2),
               rec("boom", "error")]
    put_artefacts(tmp_path, "bad")
    out = run.write_run(tmp_path, meta(), records)

    assert (tmp_path / "summary.json").is_file() and (tmp_path / "report.html").is_file()
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == out
    assert set(on_disk) == {"meta", "counts", "scenarios"}
    assert on_disk["counts"] == {"passed": 2, "failed": 1, "skipped": 1, "error": 1, "flaky": 1}
    assert [s["scenario"] for s in on_disk["scenarios"]] == ["ok", "bad", "skip", "flip", "boom"]
    for s in on_disk["scenarios"]:
        assert {"scenario", "nodeid", "verdict", "attempts", "steps", "artefacts"} <= set(s)
        assert s["verdict"] in run.VERDICTS
    assert on_disk["scenarios"][1]["failure"]["expected"] == "n1 -> net0"
    assert on_disk["meta"]["suite"] == "trixie" and on_disk["meta"]["libvirt"] == "11.3.0"
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_write_run_rejects_unknown_verdict_and_writes_nothing(tmp_path):
    with pytest.raises(HarnessError, match="'weird'.*'xfailed'"):
        run.write_run(tmp_path, meta(), [rec("weird", "xfailed")])
    assert list(tmp_path.iterdir()) == []


def test_write_run_keeps_comparison(tmp_path):
    cmp = run.compare(summary({"a": "passed"}), summary({"a": "failed"}))
    out = run.write_run(tmp_path, meta(), [rec("a", "failed")], comparison=cmp)
    assert out["comparison"]["new_failures"] == ["a"]
    page = (tmp_path / "report.html").read_text()
    assert 'id="comparison"' in page and "New failures (1)" in page


# --- compare -----------------------------------------------------------------------------------

def test_compare_classifies_each_scenario():
    prev = summary({"newly": "passed", "fixed": "failed", "still": "failed", "flip": "passed",
                    "gone": "passed", "was-skipped": "skipped", "err": "error"}, run_id="r1")
    cur = summary({"newly": "failed", "fixed": "passed", "still": "failed", "flip": ("passed", 3),
                   "fresh": "passed", "was-skipped": "failed", "err": "failed"}, run_id="r2")
    d = run.compare(prev, cur)
    assert d == {"previous": "r1", "current": "r2",
                 "new_failures": ["newly", "was-skipped"],
                 "fixed": ["fixed"],
                 "still_failing": ["err", "still"],
                 "flaky": ["flip"],
                 "new_scenarios": ["fresh"],
                 "removed_scenarios": ["gone"]}


def test_compare_without_previous_run():
    d = run.compare(None, summary({"a": "failed", "b": "passed"}))
    assert d["previous"] is None
    assert d["new_failures"] == ["a"] and d["new_scenarios"] == ["a", "b"]
    assert d["fixed"] == d["still_failing"] == d["removed_scenarios"] == []


def test_format_compare_lists_changes_most_urgent_first():
    d = run.compare(summary({"x": "passed", "y": "failed"}, run_id="r1"),
                    summary({"x": "failed", "y": "passed"}, run_id="r2"))
    assert run.format_compare(d) == (
        "Run r2 compared with r1:\n"
        "  New failures (1):\n    - x\n"
        "  Fixed (1):\n    - y\n")
    same = run.compare(summary({"x": "passed"}, run_id="r1"), summary({"x": "passed"}, run_id="r2"))
    assert run.format_compare(same).endswith("  no changes.\n")
    assert "no previous run" in run.format_compare(run.compare(None, summary({"x": "passed"})))


# --- history -----------------------------------------------------------------------------------

def test_append_history_two_runs_two_json_lines(tmp_path):
    d1, d2 = tmp_path / "run1", tmp_path / "run2"
    s1 = run.write_run(d1, meta(run_id="r1"), [rec("a"), rec("b", "failed")])
    s2 = run.write_run(d2, meta(run_id="r2"), [rec("a", "passed", 2), rec("b")])
    run.append_history(tmp_path, s1, d1)
    run.append_history(tmp_path, s2, d2)

    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["meta"]["run_id"] == "r1" and first["run_dir"] == "run1"
    assert first["scenarios"] == {"a": "passed", "b": "failed"} and first["flaky"] == []
    assert first["counts"]["failed"] == 1
    assert second["scenarios"] == {"a": "passed", "b": "passed"} and second["flaky"] == ["a"]
    assert "keyfile" not in lines[0]


def _append_big(root: str, i: int) -> None:
    s = summary({f"scenario-{i}-{n:03d}": "passed" for n in range(150)}, run_id=f"r{i}")
    run.append_history(Path(root), s, Path(root) / f"run{i}")


def test_append_history_parallel_writers_keep_lines_whole(tmp_path):
    with ProcessPoolExecutor(4) as pool:
        list(pool.map(_append_big, [str(tmp_path)] * 24, range(24)))
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert len(lines) == 24
    assert sorted(json.loads(line)["meta"]["run_id"] for line in lines) == sorted(f"r{i}" for i in range(24))


def test_append_history_waits_for_the_lock(tmp_path):
    """Another shard holding the lock (e.g. on NFS, where appends can interleave) blocks the append."""
    writer = threading.Thread(target=_append_big, args=(str(tmp_path), 1))
    with FileLock(str(tmp_path / "history.jsonl.lock")):
        writer.start()
        writer.join(0.5)
        assert writer.is_alive() and not (tmp_path / "history.jsonl").exists()
    writer.join(10)
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 1


def _history(tmp_path, *entries) -> None:
    for run_id, suite, shard, verdicts in entries:
        d = tmp_path / run_id
        s = run.write_run(d, meta(run_id=run_id, suite=suite, shard=shard),
                          [rec(n, v) for n, v in verdicts.items()])
        run.append_history(tmp_path, s, d)


def test_previous_run_same_suite_whole_runs_only(tmp_path):
    _history(tmp_path,
             ("r1", "trixie", None, {"a": "failed"}),
             ("r2", "trixie", None, {"a": "passed"}),
             ("r3", "bookworm", None, {"a": "failed"}),
             ("r4", "trixie", "1/2", {"a": "error"}),
             ("r5", "trixie", None, {"a": "passed"}))
    assert run.previous_run(tmp_path, "trixie", "r5")["meta"]["run_id"] == "r2"
    assert run.previous_run(tmp_path, "trixie", "r2")["meta"]["run_id"] == "r1"
    assert run.previous_run(tmp_path, "trixie", "r1") is None
    assert run.previous_run(tmp_path, "trixie", "not-yet-appended")["meta"]["run_id"] == "r5"
    assert run.previous_run(tmp_path, "trixie", "r5", shard="1/2")["meta"]["run_id"] == "r4"
    assert run.previous_run(tmp_path, "sid", "r5") is None


def test_previous_run_rebuilt_from_history_when_dir_is_gone(tmp_path):
    _history(tmp_path, ("r1", "trixie", None, {"a": "failed", "b": "passed"}))
    (tmp_path / "r1" / "summary.json").unlink()
    prev = run.previous_run(tmp_path, "trixie", "r2")
    assert prev["scenarios"] == [{"scenario": "a", "verdict": "failed"}, {"scenario": "b", "verdict": "passed"}]
    assert run.compare(prev, summary({"a": "passed", "b": "passed"}))["fixed"] == ["a"]


def test_damaged_history_line_is_skipped(tmp_path):
    _history(tmp_path, ("r1", "trixie", None, {"a": "passed"}))
    with open(tmp_path / "history.jsonl", "a") as f:
        f.write('{"meta": {"run_id": "half\n')
    assert [e["meta"]["run_id"] for e in run.read_history(tmp_path)] == ["r1"]
    assert run.previous_run(tmp_path, "trixie", "r9")["meta"]["run_id"] == "r1"


# --- merge_shards ------------------------------------------------------------------------------

def _shard(tmp_path, label: str, records: list[dict], tests: int, failures: int, **over) -> Path:
    d = tmp_path / f"shard{label[0]}"
    for r in records:
        put_artefacts(d, r["scenario"])
    run.write_run(d, meta(shard=label, **over), records)
    (d / "junit.xml").write_text(
        f'<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="{tests}" failures="{failures}" '
        f'errors="0" skipped="0" time="1.5">'
        + "".join(f'<testcase name="{r["scenario"]}"/>' for r in records) + "</testsuite></testsuites>")
    return d


def test_merge_shards_combines_summaries_junit_and_artefacts(tmp_path):
    a = _shard(tmp_path, "1/2", [rec("a"), rec("b", "failed")], 2, 1,
               finished="2026-11-26T07:40:00+00:00")
    b = _shard(tmp_path, "2/2", [rec("c", "skipped")], 1, 0, started="2026-11-26T07:14:00+00:00")
    out = tmp_path / "merged"
    merged = combine.merge_shards([a, b], out)

    assert [s["scenario"] for s in merged["scenarios"]] == ["a", "b", "c"]
    assert merged["counts"] == {"passed": 1, "failed": 1, "skipped": 1, "error": 0, "flaky": 0}
    assert merged["meta"]["shard"] is None and merged["meta"]["merged_shards"] == ["1/2", "2/2"]
    assert merged["meta"]["started"] == "2026-11-26T07:14:00+00:00"
    assert merged["meta"]["finished"] == "2026-11-26T07:40:00+00:00"
    assert json.loads((out / "summary.json").read_text()) == merged
    assert (out / "report.html").is_file()
    for name in "abc":
        assert (out / "artefacts" / name / "step-01-live.xml").is_file()
    junit = ET.parse(out / "junit.xml").getroot()
    assert junit.tag == "testsuites" and len(junit.findall("testsuite")) == 2
    assert (junit.get("tests"), junit.get("failures"), junit.get("time")) == ("3", "1", "3.000")
    assert [t.get("name") for t in junit.iter("testcase")] == ["a", "b", "c"]


def test_merge_shards_rejects_scenario_in_two_shards(tmp_path):
    a = _shard(tmp_path, "1/2", [rec("a"), rec("dup")], 2, 0)
    b = _shard(tmp_path, "2/2", [rec("dup", "failed")], 1, 1)
    with pytest.raises(HarnessError, match="'dup' is in two shards"):
        combine.merge_shards([a, b], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_merge_shards_rejects_different_libvirt(tmp_path):
    a = _shard(tmp_path, "1/2", [rec("a")], 1, 0)
    b = _shard(tmp_path, "2/2", [rec("b")], 1, 0, libvirt="11.4.0")
    with pytest.raises(HarnessError, match="disagree on libvirt.*11.3.0.*11.4.0"):
        combine.merge_shards([a, b], tmp_path / "merged")


def test_merge_shards_refuses_non_empty_output(tmp_path):
    a = _shard(tmp_path, "1/1", [rec("a")], 1, 0)
    with pytest.raises(HarnessError, match="not empty"):
        combine.merge_shards([a], a)


def test_merge_shards_refuses_artefacts_outside_shard(tmp_path):
    a = tmp_path / "shard"
    run.write_run(a, meta(), [rec("a", artefacts="../../etc")])
    with pytest.raises(HarnessError, match="leaves the run dir"):
        combine.merge_shards([a], tmp_path / "merged")


# --- matrix ------------------------------------------------------------------------------------

def test_matrix_table_text_and_html():
    old = summary({"a": "passed", "b": "failed", "c": "skipped"}, suite="bookworm", libvirt="9.0.0")
    new = summary({"a": ("passed", 2), "b": "passed", "d": "error"}, suite="trixie", libvirt="11.3.0")
    text, page = combine.matrix_table([old, new])
    assert text.splitlines() == [
        "scenario  bookworm 9.0.0  trixie 11.3.0",
        "--------  --------------  -------------",
        "a         PASS            FLAKY",
        "b         FAIL            PASS",
        "c         SKIP            -",
        "d         -               ERROR",
    ]
    assert "<th>bookworm 9.0.0</th><th>trixie 11.3.0</th>" in page
    assert '<tr data-scenario="b"><td class="mono">b</td><td><span class="badge v-failed">FAIL</span></td>' in page


def test_matrix_table_tells_same_version_runs_apart():
    text, _ = combine.matrix_table([summary({"a": "passed"}, run_id="r1"), summary({"a": "failed"}, run_id="r2")])
    assert text.splitlines()[0] == "scenario  trixie 11.3.0 (r1)  trixie 11.3.0 (r2)"


# --- redaction ---------------------------------------------------------------------------------

def test_redact_key_blocks_uri_queries_and_params():
    assert run.redact(f"key:\n{KEY}\nend") == "key:\n[redacted key]\nend"
    assert run.redact("-----BEGIN RSA " + "PRIVATE KEY-----\nMIIEow truncated") == "[redacted key]"
    assert run.redact(URI) == "qemu+ssh://root@127.0.0.1:2222/system"
    assert run.redact(f"failed to connect to '{URI}': timeout") == (
        "failed to connect to 'qemu+ssh://root@127.0.0.1:2222/system': timeout")
    assert run.redact("ssh command=/usr/bin/nc keyfile=/k/id") == "ssh command=[redacted] keyfile=[redacted]"
    assert run.redact("alias n1 -> net0, $(x) <b>") == "alias n1 -> net0, $(x) <b>"


def test_secrets_never_reach_summary_history_or_html(tmp_path):
    bad = rec("bad", "failed")
    bad["failure"]["message"] = f"connect {URI} failed; bed key was\n{KEY}"
    s = run.write_run(tmp_path / "r", meta(command=f"pytest --uri '{URI}'"), [bad])
    run.append_history(tmp_path, s, tmp_path / "r")
    for f in ("r/summary.json", "r/report.html", "history.jsonl"):
        text = (tmp_path / f).read_text()
        assert "id_ed25519" not in text and "b3BlbnNzaC1rZXkt" not in text and "PRIVATE KEY" not in text, f
        assert "qemu+ssh://root@127.0.0.1:2222/system" in text, f
    assert "[redacted key]" in s["scenarios"][0]["failure"]["message"]


# --- HTML --------------------------------------------------------------------------------------

class _Tags(HTMLParser):
    """Start tags with their (unescaped) attributes, and all text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _report(tmp_path, records) -> str:
    run.write_run(tmp_path, meta(), records)
    return (tmp_path / "report.html").read_text()


def test_html_escapes_hostile_scenario_name(tmp_path):
    hostile = rec(HOSTILE, "failed", guards='<script>alert(1)</script> "quoted" $(rm -rf /)', tags=["x<y"])
    hostile["failure"]["actual"] = '</td><img src=x onerror="alert(1)">'
    page = _report(tmp_path, [hostile])
    parsed = _Tags(page)

    assert HOSTILE not in page and "<script>" not in page and "<img" not in page
    assert 'a&quot;&lt;b&gt;$(x)' in page
    assert {t for t, _ in parsed.tags}.isdisjoint({"script", "img", "b"})
    rows = [a for t, a in parsed.tags if t == "tr" and a.get("data-scenario") == HOSTILE]
    assert len(rows) == 1 and rows[0]["data-verdict"] == "failed" and rows[0]["id"] == f"row-{slug(HOSTILE)}"
    assert '</td><img src=x onerror="alert(1)">' in "".join(parsed.text)
    assert "Content-Security-Policy" in page


def test_html_failure_block_shows_step_check_aliases_error_and_existing_artefacts(tmp_path):
    put_artefacts(tmp_path, "bad")
    page = _report(tmp_path, [rec("good"), rec("bad", "failed"), rec("skip", "skipped")])
    parsed = _Tags(page)
    text = "".join(parsed.text)

    rows = {a["data-scenario"]: a for t, a in parsed.tags if t == "tr" and "data-scenario" in a}
    assert {n: a["data-verdict"] for n, a in rows.items()} == {"good": "passed", "bad": "failed", "skip": "skipped"}
    assert rows["bad"]["id"] == "row-bad"
    block = page[page.index('id="fail-bad"'):]
    for needle in ("#2 attach n1", "scenarios/bad.yaml:17", "alias-stable", "<td>n1 -&gt; net0</td><td>n1 -&gt; net1</td>",
                   "internal error: Unable to determine device index for network device", "hn0=hostdev0, n1=net1"):
        assert needle in block, needle
    hrefs = [a["href"] for t, a in parsed.tags if t == "a" and not a["href"].startswith("#")]
    assert sorted(set(hrefs)) == sorted(f"artefacts/bad/{f}" for f in (
        "libvirtd.log", "step-01-live.xml", "step-02-inactive.xml", "step-02-live.xml"))
    assert all((tmp_path / h).is_file() for h in hrefs)
    assert "requires libvirt &gt;=12.0.0" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "1 of 3 scenarios failing" in text


def test_html_all_green_run(tmp_path):
    page = _report(tmp_path, [rec("a"), rec("b", "passed", 2)])
    assert "No failures: 2 scenarios, 0 skipped" in page
    assert 'data-verdict="passed" data-flaky="true"' in page
    assert "<h2>Failures</h2>" not in page


def test_html_error_without_failure_details(tmp_path):
    page = _report(tmp_path, [rec("boom", "error", artefacts=None)])
    assert 'id="fail-boom"' in page and "No failure details were recorded." in page and "none saved" in page


def test_slug_is_unique_for_names_that_clean_alike():
    assert slug("seed-hostdev") == "seed-hostdev"
    assert slug("a b") != slug("a-b") != slug("a_b")
    assert slug(HOSTILE).startswith("a-b-x-") and len({slug("A"), slug("a")}) == 2


@pytest.mark.skipif(os.name != "posix", reason="file modes")
def test_report_files_are_readable_by_others(tmp_path):
    """CI uploads the dir as another user; mkstemp's 0600 would hide the report."""
    run.write_run(tmp_path, meta(), [rec("a")])
    assert (tmp_path / "report.html").stat().st_mode & 0o044 == 0o044


# --- issue 13: torn history lines, pruned run folders, redacted junit/artefacts ------------------

def test_append_after_a_torn_line_starts_a_new_line(tmp_path):
    _history(tmp_path, ("r1", "trixie", None, {"a": "passed"}))
    with open(tmp_path / "history.jsonl", "a") as f:
        f.write('{"meta": {"run_id": "killed-wri')          # a writer killed mid-line: no newline
    _history(tmp_path, ("r2", "trixie", None, {"a": "failed"}))
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["meta"]["run_id"] == "r2"
    assert [e["meta"]["run_id"] for e in run.read_history(tmp_path)] == ["r1", "r2"]
    assert run.previous_run(tmp_path, "trixie", "r3")["meta"]["run_id"] == "r2"


def test_reading_keeps_an_entry_glued_to_a_torn_line(tmp_path, capsys):
    """A history written before the newline check: the torn start is dropped, the whole entry kept."""
    _history(tmp_path, ("r1", "trixie", None, {"a": "passed"}))
    whole = (tmp_path / "history.jsonl").read_text()
    (tmp_path / "history.jsonl").write_text('{"meta":{"run_id":"torn","suite":"tri' + whole + '{"meta": {"ha')
    assert [e["meta"]["run_id"] for e in run.read_history(tmp_path)] == ["r1"]
    err = capsys.readouterr().err
    assert "history.jsonl:1: skipping the torn start of a history line" in err
    assert "history.jsonl:2: skipping torn last history line" in err


def _cli_report(monkeypatch, root, *argv) -> int:
    from harness import cli
    monkeypatch.setenv("HARNESS_RESULTS", str(root))
    return cli.main(["report", *argv])


def test_harness_report_names_a_pruned_run_and_carries_on(tmp_path, monkeypatch, capsys):
    _history(tmp_path, ("r1", "trixie", None, {"a": "failed", "b": "passed"}),
             ("r2", "trixie", None, {"a": "passed", "b": "passed"}),
             ("r3", "trixie", None, {"a": "passed", "b": "failed"}))
    import shutil
    shutil.rmtree(tmp_path / "r3")                      # the newest run's folder pruned
    shutil.rmtree(tmp_path / "r2")                      # and the one it is compared with
    assert _cli_report(monkeypatch, tmp_path) == 0
    out, err = capsys.readouterr()
    assert "run r3 (r3): the folder" in err and "is gone (pruned?)" in err and "run r2 (r2)" in err, err
    assert "Traceback" not in out + err
    assert out.startswith("Run r3 compared with r2:") and "New failures (1):\n    - b" in out, out
    assert _cli_report(monkeypatch, tmp_path, "--run", "r1") == 0      # an existing one needs no warning
    out, err = capsys.readouterr()
    assert "no previous run" in out and "pruned" not in err


def test_merge_redacts_junit_and_copied_artefacts(tmp_path):
    a = _shard(tmp_path, "1/1", [rec("a")], 1, 0)
    (a / "junit.xml").write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="1">'
                                 f'<testcase name="a"><system-err>{URI_XML}\n{KEY}</system-err></testcase>'
                                 f'</testsuite></testsuites>')
    (a / "artefacts" / "a" / "qemu.log").write_text(f"-drive ... {URI}\n{KEY}\n")
    (a / "artefacts" / "a" / "blob.bin").write_bytes(b"\xff\xfe\x00binary")
    out = tmp_path / "merged"
    combine.merge_shards([a], out)
    for f in ("junit.xml", "artefacts/a/qemu.log"):
        text = (out / f).read_text()
        assert "id_ed25519" not in text and "PRIVATE KEY" not in text, f
        assert "qemu+ssh://root@127.0.0.1:2222/system" in text, f
    assert (out / "artefacts" / "a" / "blob.bin").read_bytes() == b"\xff\xfe\x00binary"
    assert ET.parse(out / "junit.xml").getroot().get("tests") == "1"
