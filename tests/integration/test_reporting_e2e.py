"""A real (small) catalog run twice against the bed, one scenario made to fail the second time:
the compare output, JUnit, summary.json and the HTML report (rendered in headless Chromium) must all
tell the same story a person needs in the morning."""
from __future__ import annotations

import base64
import json
import re
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


# Disk images hold the bed's root file system, where sshd keeps its host key: not a log, never attached to a bug.
DISK_IMAGES = {".qcow2", ".img", ".raw", ".iso", ".box"}


def private_keys(bed_dir: Path) -> tuple[set[Path], set[str]]:
    """The bed's private key files (client and host keys, whatever the launcher) and what would give each away:
    the PEM marker, every line of the body, the body as one string, and the base64 of the whole file."""
    files, needles = set(), {"PRIVATE KEY"}
    for f in bed_dir.rglob("*"):
        if not f.is_file() or f.is_symlink() or f.suffix in DISK_IMAGES or f.stat().st_size > 64 * 1024:
            continue
        text = f.read_text(errors="replace")
        if "PRIVATE KEY-----" not in text:
            continue
        files.add(f)
        body = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("-----")]
        needles |= {ln for ln in body if len(ln) >= 16} | {"".join(body)}
        b64 = base64.b64encode(f.read_bytes()).decode()
        needles |= {b64, b64[40:104]}
    return files, needles


def assert_no_secret(text: str, needles: set[str], where) -> None:
    flat = re.sub(r"\s+", "", text)     # a key re-wrapped or printed on one line is still the key
    for n in needles:
        assert n not in text and re.sub(r"\s+", "", n) not in flat, f"{where}: holds key material ({n[:12]}...)"


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

    # no credential anywhere a person would look or attach to a bug: every file of the results (run folders,
    # artefacts: qemu.log, libvirtd.log, junit.xml, report.html, summary.json, history.jsonl), the bed's own
    # files (serial log, qemu command line, inventory, leases, state) and the session notes, and pytest's output
    bed_dir = Path(hx_target.bed.dir)
    key_files, needles = private_keys(bed_dir)
    assert bed_dir / "id_ed25519" in key_files or hx_target.bed.via != "qemu", key_files
    scanned = 0
    for f in [*results.rglob("*"), *bed_dir.rglob("*"), *paths.beds_dir().glob("session-*")]:
        if f in key_files or not f.is_file() or f.is_symlink() or f.suffix in DISK_IMAGES:
            continue
        scanned += 1
        assert_no_secret(f.read_bytes().decode("utf-8", errors="replace"), needles, f)
    assert scanned >= 10, scanned
    for name, out in (("first run", first.stdout + first.stderr), ("second run", second.stdout + second.stderr)):
        assert_no_secret(out, needles, name)

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
