"""ruff over harness/ bench/ tests/ with the rules in pyproject.toml: a finding fails the unit tests.

Why: unused or undefined names, unsorted imports and bugbear patterns (a lambda catching a loop
variable, a mutable default) are cheap to see by machine and costly to find in a failing bed run.
ruff is pinned in the test extras (pyproject.toml), so every machine judges by the same rules.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ruff_finds_nothing():
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                        "harness", "bench", "tests"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "No module named ruff" not in p.stderr, "ruff is missing: pip install -e '.[test]' (it is pinned there)"
    assert p.returncode == 0, f"ruff findings (fix them, or `ruff check --fix`):\n{p.stdout}{p.stderr}"


def test_ruff_reads_the_project_rules(tmp_path):
    """The rules really apply: an unused import in a file under the repo's config is a finding."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n")
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(REPO / "pyproject.toml"),
                        "--output-format", "concise", str(bad)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "F401" in p.stdout, p.stdout + p.stderr
