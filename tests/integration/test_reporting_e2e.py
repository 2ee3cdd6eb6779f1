"""A real (small) catalog run twice against the bed, one scenario made to fail the second time:
the compare output, JUnit, summary.json and the HTML report (rendered in headless Chromium) must all
tell the same story a person needs in the morning."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness import paths
from harness.report import run as report

pytestmark = [pytest.mark.bed, pytest.mark.slow]

PASSING = """guards: a user NIC next to a hostdev interface stays netN (e2e reporting test)
tags: [e2e]
devices:
  vf1: {kind: vf}
domain:
  devices:
    - interface: {id: hn0, type: hostdev, device: vf1}
steps:
  - start:
  - attach: {interface: {id: u1, type: user}}
    expect: {aliases: {u1: %s}}
"""

STABLE = """guards: suspend/resume keeps aliases (e2e reporting test)
tags: [e2e]
domain:
  devices:
    - interface: {id: u0, type: user}
steps:
  - start:
  - suspend-resume:
    expect: {aliases: {u0: net0}}
"""


def run(scen_dir: Path, results: Path, bed: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", str(scen_dir), "-q", "-p", "no:cacheprovider",
                           "-p", "harness.plugin", "-c", str(paths.REPO / "pyproject.toml"),
                           "--bed", bed, "--no-bed-up", "--results-dir", str(results)],
                          cwd=paths.REPO, capture_output=True, text=True, timeout=1200)


def test_two_runs_compare_junit_json_and_html(hx_target, tmp_path):
    scen = tmp_path / "scenarios"
    scen.mkdir()
    results = tmp_path / "results"
    (scen / "e2e-user-nic.yaml").write_text(PASSING % "net0")
    (scen / "e2e-stable.yaml").write_text(STABLE)
    first = run(scen, results, hx_target.bed.name)
    assert first.returncode == 0, first.stdout[-3000:]

    (scen / "e2e-user-nic.yaml").write_text(PASSING % "net7")      # now a wrong expectation
    second = run(scen, results, hx_target.bed.name)
    assert second.returncode == 1, second.stdout[-3000:]
    assert "expected:  u1 -> net7" in second.stdout and "actual:    u1 -> net0" in second.stdout

    hist = report.read_history(results)
    assert len(hist) == 2
    run_dir = results / hist[-1]["run_dir"]
    assert run_dir.name.split("_")[1] == hx_target.suite

    # compare: one new failure, the other still passing (in neither list)
    cmp_text = (run_dir / "compare.txt").read_text()
    assert "e2e-user-nic" in cmp_text.split("still failing")[0]
    cmp = report.compare(json.loads((results / hist[0]["run_dir"] / "summary.json").read_text()),
                         json.loads((run_dir / "summary.json").read_text()))
    assert cmp["new_failures"] == ["e2e-user-nic"] and cmp["fixed"] == [] and cmp["still_failing"] == []

    # summary.json
    s = json.loads((run_dir / "summary.json").read_text())
    verdicts = {r["scenario"]: r["verdict"] for r in s["scenarios"]}
    assert verdicts == {"e2e-user-nic": "failed", "e2e-stable": "passed"}
    fail = next(r for r in s["scenarios"] if r["scenario"] == "e2e-user-nic")["failure"]
    assert fail["check"] == "expect" and fail["expected"] == "u1 -> net7" and fail["actual"] == "u1 -> net0"
    assert s["meta"]["libvirt"] == hx_target.libvirt_version and s["meta"]["accelerator"] in ("kvm", "tcg")
    art = run_dir / next(r for r in s["scenarios"] if r["scenario"] == "e2e-user-nic")["artefacts"]
    assert any(p.name.endswith("-live.xml") for p in art.iterdir())
    assert (art / "libvirtd.log").exists() and (art / "qemu.log").exists()

    # JUnit
    suites = ET.parse(run_dir / "junit.xml").getroot()
    cases = {c.get("name"): c for c in suites.iter("testcase")}
    assert cases["e2e-user-nic"].find("failure") is not None
    assert cases["e2e-stable"].find("failure") is None

    # no credential anywhere in the results
    key = (Path(hx_target.bed.dir) / "id_ed25519").read_text()
    for f in results.rglob("*"):
        if f.is_file():
            text = f.read_text(errors="replace")
            assert "PRIVATE KEY" not in text and key.strip().splitlines()[1] not in text, f

    # HTML in a real browser: the failing row is there, rendered
    chromium = shutil.which("chromium")
    assert chromium, "chromium is installed by ./harness.sh"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chrome'}"]
    url = (run_dir / "report.html").as_uri()
    dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert 'data-verdict="failed"' in dom and "e2e-user-nic" in dom and "net7" in dom
    png = tmp_path / "report.png"
    subprocess.run([chromium, *flags, f"--screenshot={png}", "--window-size=1280,1600", url],
                   capture_output=True, timeout=120)
    assert png.exists() and png.stat().st_size > 10_000
    shutil.copy(png, paths.results_dir() / "e2e-report-screenshot.png")
