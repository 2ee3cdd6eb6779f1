"""Issue 13: the results disk fills up while a real scenario runs against the bed.

The seed (guest-free) runs in a child pytest whose --results-dir is a small tmpfs filled almost full,
so writing its artefacts fails with ENOSPC. What QA relies on: the child says what could not be
written, the scenario's verdicts survive (a complete summary, or the kept records the message
names), the run's own cleanup removed its domain and network and gave the VFs back to their host
driver (checked right after it, before anything could sweep), and the next run passes.

Helpers come from test_faults.py (the child runner, the bed checks, the `bed` fixture) and the
tmpfs helpers from tests/unit/test_results_safety.py, so the checks never drift apart.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

from harness import paths
from test_faults import Child, assert_bed_clean, assert_next_run_clean, bed  # noqa: F401  (bed: the fixture)

pytestmark = [pytest.mark.bed, pytest.mark.slow]

_spec = importlib.util.spec_from_file_location(
    "_hx_results_safety", paths.REPO / "tests" / "unit" / "test_results_safety.py")
_safety = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_safety)
small_tmpfs, fill = _safety.small_tmpfs, _safety.fill

NAME = "seed-hostdev-then-hotplug"
SEED = paths.REPO / "scenarios" / f"{NAME}.yaml"


def kept_session_dirs(out: str) -> list[Path]:
    """Spill/staging folders of the child's session that its message names (kept for a person)."""
    beds = re.escape(str(paths.beds_dir()))
    return sorted({Path(m) for m in re.findall(beds + r"/session-[^/\s]+\.(?:spill|staging)", out)})


def test_full_results_disk_keeps_verdicts_and_the_run_cleans_the_bed(tmp_path, bed):  # noqa: F811  (the fixture)
    results = tmp_path / NAME / "results"          # the child's --results-dir (see Child)
    with small_tmpfs(results, size="1m"):
        fill(results, leave=12 * 1024)             # room for meta.json, not for the artefacts
        child = Child(tmp_path, NAME, SEED.read_text(), bed.name)
        rc = child.finish(timeout=900)
        out = child.output
        try:
            assert rc != 0, out[-4000:]
            # the write failure is named, in the progress line and in the scenario's error
            assert f"{NAME}: could not write artefact" in out and "No space left on device (ENOSPC)" in out, out[-4000:]
            assert "during the artefact writes: could not write" in out, out[-4000:]
            assert "cleanup left something behind" not in out and "cleanup deferred" not in out, out[-4000:]
            assert "Traceback" not in out, out[-4000:]

            # the verdicts survive: a complete summary, or the records the message names
            summaries = list(results.glob("*/summary.json"))
            if summaries:
                (rec,) = json.loads(summaries[0].read_text())["scenarios"]
            else:
                (msg_line,) = [ln for ln in out.splitlines() if "were not all written" in ln]
                assert "No space left on device (ENOSPC)" in msg_line, msg_line
                m = re.search(r"the verdicts are kept, one JSON record per scenario, in (\S+) \(1 file\)", out)
                assert m, out[-4000:]
                rec = json.loads((Path(m.group(1)) / f"{NAME}.json").read_text())
                assert f"verdicts: {NAME} error" in out
            assert rec["scenario"] == NAME and rec["verdict"] == "error", rec
            assert "ENOSPC" in rec["failure"]["message"], rec["failure"]
            assert len(rec["steps"]) == 6 and all(s["verdict"] == "passed" for s in rec["steps"]), rec["steps"]
            assert not [p for p in results.rglob(".*") if p.name != ".filler"], "temporary files left behind"

            # the run's own cleanup: nothing of it in the bed, every VF back on its host driver
            assert_bed_clean(bed)
        finally:
            for d in kept_session_dirs(out):
                shutil.rmtree(d, ignore_errors=True)

    after = assert_next_run_clean(tmp_path, bed.name)
    assert "removed leftovers of an interrupted run" not in after, "the full-disk run left its journal entry"
