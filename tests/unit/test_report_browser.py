"""report.html in a real headless Chromium: the failing row is in the rendered DOM and the page paints.

Skips only when /usr/bin/chromium is missing (CI installs the Debian package); tests never install it.
"""
from __future__ import annotations

import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.report import run

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE = 'a"<b>$(x)'
#: Background of the "N scenarios failing" banner (.status.bad in harness/report/html.py).
BANNER_RED = (0xFF, 0xEB, 0xE9)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless, offline, throwaway profile: nothing from the host or the network leaks in."""
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A run with one failing scenario (with artefacts), a hostile-named pass, a flaky pass and a skip."""
    run_dir = tmp_path_factory.mktemp("run")
    art = run_dir / "artefacts" / "seed-hostdev-then-hotplug"
    art.mkdir(parents=True)
    for f in ("step-00-live.xml", "step-01-live.xml", "step-01-inactive.xml", "libvirtd.log", "qemu.log"):
        (art / f).write_text("<domain/>\n")
    meta = {"run_id": "20261126T071500Z-trixie", "started": "2026-11-26T07:15:00+00:00",
            "finished": "2026-11-26T07:31:40+00:00", "suite": "trixie", "libvirt": "11.3.0", "qemu": "10.0.13",
            "kernel": "6.12.117", "accelerator": "tcg", "domain_type": "kvm", "bed": "trixie",
            "uri": "qemu+ssh://root@127.0.0.1:2222/system?keyfile=/k/id_ed25519", "harness_version": "0.1.0",
            "command": "pytest scenarios", "shard": None}
    step0 = {"index": 0, "step": "start", "line": 12, "verdict": "passed", "duration_s": 6.1, "libvirt_s": 5.9,
             "aliases": {"hn0": "hostdev0"}}
    failing = {
        "scenario": "seed-hostdev-then-hotplug", "nodeid": "scenarios/seed.yaml::seed-hostdev-then-hotplug",
        "file": "scenarios/seed.yaml", "line": 1, "tags": ["seed", "hotplug"], "verdict": "failed",
        "guards": "f8e712fe (2016): with a hostdevN alias among a domain's interfaces, hot-plugging any "
                  "further interface failed (fixed by 8f74f52).",
        "duration_s": 14.2, "attempts": 1, "skip_reason": None, "artefacts": "artefacts/seed-hostdev-then-hotplug",
        "failure": {"step_index": 1, "step": "attach n1", "line": 17, "check": "alias-stable",
                    "expected": "hn0 -> hostdev0\nn1 -> net0", "actual": "hn0 -> hostdev0\nn1 -> net1",
                    "libvirt_error": "internal error: Unable to determine device index for network device",
                    "message": "after step 1 (attach n1): alias of n1 is net1, expected net0"},
        "steps": [step0, {"index": 1, "step": "attach n1", "line": 17, "verdict": "failed", "duration_s": 0.4,
                          "libvirt_s": 0.3, "aliases": {"hn0": "hostdev0", "n1": "net1"}},
                  {"index": 2, "step": "attach hn1", "line": 19, "verdict": "not-run", "duration_s": None,
                   "libvirt_s": None, "aliases": {}}]}
    others = [
        {"scenario": HOSTILE, "nodeid": f"scenarios/x.yaml::{HOSTILE}", "file": "scenarios/x.yaml", "line": 1,
         "tags": [], "guards": "<b>not bold</b> $(whoami)", "verdict": "passed", "duration_s": 3.0, "attempts": 1,
         "skip_reason": None, "failure": None, "steps": [step0], "artefacts": "artefacts/x"},
        {"scenario": "restart-daemon-keeps-aliases", "nodeid": "scenarios/r.yaml::restart-daemon-keeps-aliases",
         "file": "scenarios/r.yaml", "line": 1, "tags": ["daemon"], "guards": "aliases survive a libvirtd restart",
         "verdict": "passed", "duration_s": 40.5, "attempts": 2, "skip_reason": None, "failure": None,
         "steps": [step0], "artefacts": "artefacts/r"},
        {"scenario": "pf-pool-hotplug", "nodeid": "scenarios/pf.yaml::pf-pool-hotplug", "file": "scenarios/pf.yaml",
         "line": 1, "tags": ["pool"], "guards": "hostdev network by PF", "verdict": "skipped", "duration_s": 0.0,
         "attempts": 1, "skip_reason": "requires vfs: 4 (bed has 2)", "failure": None, "steps": [],
         "artefacts": "artefacts/pf"},
    ]
    run.write_run(run_dir, meta, [failing, *others])
    return run_dir / "report.html"


class _Dom(HTMLParser):
    """Element names, rows by data-scenario, all text, and the text of the failing scenario's block."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: set[str] = set()
        self.rows: dict[str, dict] = {}
        self.text: list[str] = []
        self.block_text: list[str] = []
        self._depth = 0  # >0 while inside <section id="fail-seed-hostdev-then-hotplug">
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "tr" and "data-scenario" in a:
            self.rows[a["data-scenario"]] = a
        if tag == "section":
            self._depth += 1 if self._depth or a.get("id") == "fail-seed-hostdev-then-hotplug" else 0

    def handle_endtag(self, tag):
        if tag == "section" and self._depth:
            self._depth -= 1

    def handle_data(self, data):
        self.text.append(data)
        if self._depth:
            self.block_text.append(data)


def test_rendered_dom_has_failing_row_and_alias_diff(report, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", report.as_uri()).stdout
    parsed = _Dom(dom)

    row = parsed.rows["seed-hostdev-then-hotplug"]
    assert row["data-verdict"] == "failed" and row["id"] == "row-seed-hostdev-then-hotplug"
    assert parsed.rows[HOSTILE]["data-verdict"] == "passed"
    assert parsed.rows["restart-daemon-keeps-aliases"]["data-flaky"] == "true"
    assert parsed.rows["pf-pool-hotplug"]["data-verdict"] == "skipped"
    block = "".join(parsed.block_text)
    for needle in ("n1 -> net0", "n1 -> net1", "alias-stable", "scenarios/seed.yaml:17",
                   "internal error: Unable to determine device index for network device"):
        assert needle in block, needle
    assert "<b>not bold</b> $(whoami)" in "".join(parsed.text)  # shown as text, not markup
    assert "b" not in parsed.tags and "script" not in parsed.tags
    assert "id_ed25519" not in dom


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit, non-interlaced RGB/RGBA PNG (what Chromium writes) to rows of RGB pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = ihdr
    assert depth == 8 and colour in (2, 6) and interlace == 0, ihdr
    bpp = 4 if colour == 6 else 3
    raw, stride = zlib.decompress(idat), width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(bytes(b for i in range(0, stride, bpp) for b in line[i:i + 3]))
        prev = line
    return width, height, rows


def test_screenshot_paints_a_real_page(report, tmp_path):
    png = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={png}", "--window-size=1280,2000", "--hide-scrollbars", report.as_uri())

    assert png.is_file() and png.stat().st_size > 20_000
    width, height, rows = _png_pixels(png.read_bytes())
    assert (width, height) == (1280, 2000)
    top = rows[:600]  # header, banner, verdict table: where text must be
    colours = {row[i:i + 3] for row in top for i in range(0, len(row), 3 * 7)}
    assert len(colours) > 50, "the page painted (almost) a single flat colour"
    red = sum(row[i:i + 3] == bytes(BANNER_RED) for row in top for i in range(0, len(row), 3))
    assert red > 10_000, "the red 'failing' banner is not visible"
