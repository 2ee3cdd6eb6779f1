"""Issue 13, "no run loses its verdicts": a full results disk, torn history lines, pruned run folders.

The disk-full tests run on a real, small tmpfs (mounted here, unmounted in a finally), so ENOSPC comes
from the kernel, not from a mock. CI runs as root; a root-less developer run skips them, CI never does.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import paths
from harness.engine import artefacts, cleanup
from harness.engine import runner as runner_mod
from harness.engine import session as session_mod
from harness.engine.journal import Journal
from harness.engine.run_state import RunState, StepFailure
from harness.engine.runner import Runner
from harness.errors import InfrastructureError
from harness.scenario.loader import load_file

SEED = paths.REPO / "scenarios" / "seed-hostdev-then-hotplug.yaml"


# --- a small tmpfs ------------------------------------------------------------------------------

@contextmanager
def small_tmpfs(where: Path, size: str = "512k"):
    """A tmpfs of `size` mounted on `where` (made if missing); always unmounted again."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the disk-full tests need root to mount a tmpfs; CI runs as root")
        pytest.skip("needs root to mount a tmpfs (CI runs as root and never skips this)")
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
                   check=True, capture_output=True, text=True)
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(fs: Path, leave: int = 0) -> None:
    """Fill the file system on `fs` until at most `leave` bytes are free (tmpfs counts whole pages)."""
    st = os.statvfs(fs)
    free = st.f_bavail * st.f_frsize
    with open(fs / ".filler", "wb") as f:
        try:
            f.write(b"\0" * max(0, free - leave))
            f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    st = os.statvfs(fs)
    assert st.f_bavail * st.f_frsize <= max(leave, 0) + st.f_frsize, "the tmpfs did not fill"


@pytest.fixture
def tmpfs(tmp_path):
    with small_tmpfs(tmp_path / "fs") as fs:
        yield fs


def test_fill_really_gives_enospc(tmpfs):
    fill(tmpfs)
    with pytest.raises(OSError) as e:
        (tmpfs / "x").write_text("y" * 10_000)
    assert e.value.errno == errno.ENOSPC


# --- runner: cleanup runs whatever writing artefacts does (item 3) ------------------------------

class FakeDom:
    def __init__(self, log):
        self.log = log

    def isActive(self):
        return True

    def isPersistent(self):
        return True

    def destroy(self):
        self.log.append("destroy")

    def undefineFlags(self, flags):
        self.log.append("undefine")


class FakeNet(FakeDom):
    def __init__(self, log, name):
        super().__init__(log)
        self._name = name

    def name(self):
        return self._name

    def undefine(self):
        self.log.append(f"undefine {self._name}")

    def destroy(self):
        self.log.append(f"destroy {self._name}")


class FakeConn:
    def __init__(self, log):
        self.log = log
        self.closed = False
        self.virconn = SimpleNamespace(lookupByName=lambda n: FakeDom(log),
                                    networkLookupByName=lambda n: FakeNet(log, n))

    def ensure(self, reconnect_timeout=None):
        self.log.append("ensure")

    def call(self, fn, *a, timeout=None):
        return fn(*a)


@pytest.fixture(autouse=True)
def fake_bed_is_well(monkeypatch):
    """The fake bed has no VM or console to ask whether it failed (session.bed_trouble)."""
    monkeypatch.setattr(session_mod, "bed_trouble", lambda t: "")


def fake_target(tmp_path: Path, log: list, big_log: str):
    bed = SimpleNamespace(name="fake", ssh=lambda cmd, timeout=60: SimpleNamespace(stdout=big_log, stderr="",
                                                                                      returncode=0))
    t = SimpleNamespace(bed=bed, conn=FakeConn(log), lock_dir=tmp_path / "locks", nics=[], worker="gw0",
                        run_tag="t0", kvm_available=False, libvirt_seconds=0.0)
    t.ssh = lambda cmd, timeout=60: bed.ssh(cmd, timeout)
    return t


def seed_runner(monkeypatch, tmp_path: Path, art: Path, log: list, steps=None, big_log="x" * 200_000):
    (sc,) = load_file(SEED)
    t = fake_target(tmp_path, log, big_log)
    monkeypatch.setenv("HX_SHARED_NETWORKS", "0")    # the scenario's own network, so cleanup must remove it
    r = Runner(RunState(sc, t, art))

    def lease(self, leases):
        self.run.r.addrs.update({"vf1": "0000:01:10.0", "vf2": "0000:01:10.2"})
        self.run.r.networks["lan"] = f"{self.run.dom_name}-lan"

    monkeypatch.setattr(Runner, "_lease", lease)
    monkeypatch.setattr(RunState, "prepare", lambda self: None)
    monkeypatch.setattr(Runner, "_create_networks", lambda self: log.append("created"))
    monkeypatch.setattr(Runner, "_run_steps", steps or (lambda self: self.run.steps_log.append({"verdict": "passed"})))
    monkeypatch.setattr(runner_mod.diagnose, "daemon_state", lambda t: {})
    monkeypatch.setattr(cleanup, "on_vfio", lambda t, addrs: log.append(f"vfio check {addrs}") or [])
    return r


def cleaned_up(log: list, r: Runner) -> bool:
    return ("destroy" in log and "undefine" in log and f"undefine {r.run.r.networks['lan']}" in log
            and any(x.startswith("vfio check") for x in log))


def test_full_results_disk_still_cleans_up_and_names_the_write_failure(monkeypatch, tmp_path, tmpfs):
    log: list = []
    art = tmpfs / "run" / "artefacts" / "seed"
    r = seed_runner(monkeypatch, tmp_path, art, log)
    fill(tmpfs, leave=8192)
    with pytest.raises(InfrastructureError) as e:
        r._run_leased()
    msg = str(e.value)
    assert "No space left on device (ENOSPC)" in msg and "qemu.log" in msg, msg
    assert "the steps passed and the bed was cleaned up" in msg and str(art) in msg
    assert cleaned_up(log, r), log
    assert Journal(tmp_path / "locks").entries() == []     # a clean end: the journal entry is gone
    assert not (art / "qemu.log").exists(), "a truncated log is removed, not left to mislead"
    assert r.run.steps_log == [{"verdict": "passed"}]


def test_a_step_failure_keeps_its_verdict_when_artefacts_do_not_fit(monkeypatch, tmp_path, tmpfs, capsys):
    log: list = []
    (sc,) = load_file(SEED)

    def failing_steps(self):
        artefacts.write(self.run, "step-01-start-live.xml", "<domain/>" * 20_000)
        raise StepFailure(1, sc.steps[1], "libvirt-error", "the step to succeed", "Unable to determine ...")

    art = tmpfs / "run" / "artefacts" / "seed"
    r = seed_runner(monkeypatch, tmp_path, art, log, steps=failing_steps)
    fill(tmpfs, leave=4096)
    with pytest.raises(StepFailure) as e:      # the verdict, not the disk's complaint
        r._run_leased()
    assert e.value.check == "libvirt-error"
    assert cleaned_up(log, r), log
    assert "could not write artefact step-01-start-live.xml: No space left on device (ENOSPC)" in capsys.readouterr().err
    assert len(r.run.artefact_problems) >= 2      # the step XML, then the logs


def test_an_exception_out_of_log_collection_still_cleans_up(monkeypatch, tmp_path):
    log: list = []
    r = seed_runner(monkeypatch, tmp_path, tmp_path / "art", log)

    def boom(run):
        raise OSError(errno.EIO, "Input/output error", str(run.art / "qemu.log"))

    monkeypatch.setattr(artefacts, "collect_logs", boom)
    with pytest.raises(InfrastructureError, match=r"Input/output error \(EIO\)"):
        r._run_leased()
    assert cleaned_up(log, r), log


def test_cleanup_problems_survive_a_full_disk(monkeypatch, tmp_path, tmpfs):
    log: list = []
    r = seed_runner(monkeypatch, tmp_path, tmpfs / "art", log)
    monkeypatch.setattr(cleanup, "on_vfio", lambda t, addrs: list(addrs))
    fill(tmpfs)
    with pytest.raises(InfrastructureError):
        r._run_leased()
    assert r.run.cleanup_problems and "vfio-pci" in r.run.cleanup_problems[0]
    assert Journal(tmp_path / "locks").entries(), "an unclean end keeps the journal entry for the next session"


def test_artefacts_from_the_bed_are_redacted(monkeypatch, tmp_path):
    key = "-----BEGIN OPENSSH " + "PRIVATE KEY-----\nAAAAsecret\n-----END OPENSSH " + "PRIVATE KEY-----"
    leak = f"connecting to qemu+ssh://root@127.0.0.1:2222/system?keyfile=/k/id_ed25519&no_verify=1\n{key}\n"
    log: list = []
    r = seed_runner(monkeypatch, tmp_path, tmp_path / "art", log, big_log=leak)
    r._run_leased()
    for name in ("qemu.log", "libvirtd.log"):
        text = (tmp_path / "art" / name).read_text()
        assert "id_ed25519" not in text and "AAAAsecret" not in text and "PRIVATE KEY" not in text, text
        assert "qemu+ssh://root@127.0.0.1:2222/system" in text and "[redacted key]" in text


# --- the run's summary on a full disk: records kept until it is written (item 2) ----------------

from harness.plugin import HarnessSession  # noqa: E402
from harness.report import run as report  # noqa: E402

URI = "qemu+ssh://root@127.0.0.1:2222/system?keyfile=/home/ci/.cache/beds/trixie/id_ed25519&no_verify=1"
URI_XML = URI.replace("&", "&amp;")     # as it stands in junit.xml
KEY = "-----BEGIN OPENSSH " + "PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH " + "PRIVATE KEY-----"


class Terminal:
    def __init__(self):
        self.lines: list[str] = []

    def write_line(self, line, **markup):
        self.lines.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


class FakeConfig:
    """What HarnessSession's results part reads from pytest's config."""

    def __init__(self, results: Path):
        self.tr = Terminal()
        self.session = SimpleNamespace(exitstatus=pytest.ExitCode.OK)
        self._opts = {"hx_results": str(results), "hx_keep": True}
        self.invocation_params = SimpleNamespace(args=("scenarios", "-k", "seed"))
        self.pluginmanager = SimpleNamespace(
            get_plugin=lambda name: {"terminalreporter": self.tr, "session": self.session}.get(name))

    def getoption(self, name):
        return self._opts[name]


def meta() -> dict:
    return {"uri": "qemu+ssh://root@127.0.0.1:2222/system", "libvirt": "11.3.0", "qemu": "10.0.13",
            "kernel": "6.12", "suite": "trixie", "accelerator": "tcg", "domain_type": "qemu", "bed": "trixie"}


def record(name: str, verdict: str = "passed", **over) -> dict:
    r = {"scenario": name, "nodeid": f"scenarios/{name}.yaml::{name}", "file": f"scenarios/{name}.yaml",
         "line": 1, "tags": [], "guards": "g", "verdict": verdict, "duration_s": 1.0, "attempts": 1,
         "skip_reason": None, "failure": None, "steps": [], "artefacts": f"artefacts/{name}"}
    r.update(over)
    return r


@pytest.fixture
def session(monkeypatch, tmp_path):
    """A controller HarnessSession whose results dir is a fresh 512 KiB tmpfs (the cache is on tmp_path)."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    with small_tmpfs(tmp_path / "results") as root:
        cfg = FakeConfig(root)
        hx = HarnessSession(cfg, "20261126T071500Z-abc123")
        hx._claim_run_dir(meta())
        yield hx, cfg, root


def junit(hx) -> None:
    hx.staging.mkdir(parents=True, exist_ok=True)
    (hx.staging / "junit.xml").write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="1">'
                                          f'<testcase name="seed"><system-err>{URI_XML}\n{KEY}</system-err></testcase>'
                                          f'</testsuite></testsuites>')


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.name != ".filler"]


def test_write_run_on_a_full_disk_keeps_the_records_and_says_where(session):
    hx, cfg, root = session
    hx.save_record(record("seed-hostdev-then-hotplug", "failed"))
    hx.save_record(record("pool-by-pf"))
    junit(hx)
    fill(root)
    hx.finish()

    run_dir = hx.run_dir
    kept = sorted(p.name for p in (run_dir / "records").glob("*.json"))
    assert kept == ["pool-by-pf.json", "seed-hostdev-then-hotplug.json"]
    assert (run_dir / "meta.json").is_file()
    assert json.loads((run_dir / "records" / "seed-hostdev-then-hotplug.json").read_text())["verdict"] == "failed"
    assert not (run_dir / "summary.json").exists()
    assert temp_files(root) == [], "a failed atomic write leaves no temporary file"
    (msg,) = [ln for ln in cfg.tr.lines if "not all written" in ln]     # one message
    assert "summary.json/report.html: No space left on device (ENOSPC)" in msg, msg
    assert f"the verdicts are kept, one JSON record per scenario, in {run_dir / 'records'} (2 files)" in msg, msg
    assert f"run metadata in {run_dir / 'meta.json'}" in msg
    assert "verdicts: pool-by-pf passed, seed-hostdev-then-hotplug failed" in msg
    assert f"junit.xml is kept at {hx.staging / 'junit.xml'}" in msg and (hx.staging / "junit.xml").is_file()
    assert cfg.session.exitstatus == pytest.ExitCode.TESTS_FAILED, "a run whose results were lost is not green"
    history = root / report.HISTORY
    assert not history.exists() or history.read_text() == "", "no half line in history.jsonl"


def test_summary_is_written_once_there_is_room_and_records_go_then(session):
    hx, cfg, root = session
    hx.save_record(record("seed-hostdev-then-hotplug", "failed", failure={"message": f"connect {URI}: {KEY}"}))
    junit(hx)
    hx.finish()
    run_dir = hx.run_dir
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [s["verdict"] for s in summary["scenarios"]] == ["failed"]
    assert not (run_dir / "records").exists() and not (run_dir / "meta.json").exists()
    assert not hx.staging.exists() and not hx.spill.exists()
    assert [h["run_dir"] for h in report.read_history(root)] == [run_dir.name]
    assert f"harness: results in {run_dir}" in cfg.tr.text
    # nothing failed to be written; the run is red because its one scenario failed (a verdict pytest may
    # not know of: an overlapped teardown in an xdist worker)
    assert "harness: not every scenario passed: seed-hostdev-then-hotplug" in cfg.tr.text
    assert cfg.session.exitstatus == pytest.ExitCode.TESTS_FAILED
    for f in ("junit.xml", "summary.json", "report.html"):        # redacted like summary.json (item 9b)
        text = (run_dir / f).read_text()
        assert "id_ed25519" not in text and "PRIVATE KEY" not in text, f
    assert "qemu+ssh://root@127.0.0.1:2222/system" in (run_dir / "junit.xml").read_text()


def test_a_record_the_full_disk_refuses_is_spilled_and_still_reaches_the_summary(session, capsys):
    hx, cfg, root = session
    hx.save_record(record("first"))
    fill(root)
    late = record("late", "failed", steps=[{"index": i, "step": "attach", "aliases": {"n": "net0" * 50}}
                                           for i in range(100)])        # bigger than a page's slack
    hx.save_record(late)
    assert "kept in" in capsys.readouterr().err
    assert (hx.spill / "records" / "late.json").is_file()

    hx._records.clear()        # as for an xdist worker's record: only the disk has it
    (root / ".filler").unlink()
    hx.finish()
    summary = json.loads((hx.run_dir / "summary.json").read_text())
    assert {s["scenario"]: s["verdict"] for s in summary["scenarios"]} == {"first": "passed", "late": "failed"}
    assert not hx.spill.exists() and not (hx.run_dir / "records").exists()


def test_the_message_names_spilled_records_when_the_disk_stays_full(session):
    hx, cfg, root = session
    fill(root)
    hx.save_record(record("late", "error", steps=[{"index": i, "aliases": {"n": "x" * 200}} for i in range(40)]))
    hx._records.clear()
    hx.finish()
    (msg,) = [ln for ln in cfg.tr.lines if "not all written" in ln]
    assert f"{hx.spill / 'records'} (1 file)" in msg and "late error" in msg, msg
    assert (hx.spill / "records" / "late.json").is_file(), "finish() keeps the spilled verdicts"


def test_report_write_run_on_a_full_disk_raises_enospc_and_leaves_no_temp_file(tmpfs):
    run_dir = tmpfs / "run"
    run_dir.mkdir()
    fill(tmpfs)
    with pytest.raises(OSError) as e:
        report.write_run(run_dir, dict(meta(), run_id="r1", started="2026-11-26T07:15:00+00:00"),
                         [record(f"s{i}") for i in range(50)])
    assert e.value.errno == errno.ENOSPC
    assert list(run_dir.iterdir()) == []


def test_append_history_on_a_full_disk_leaves_the_file_as_it_was(tmpfs):
    s1 = {"meta": {"run_id": "r1"}, "counts": {}, "scenarios": [record("a")]}
    report.append_history(tmpfs, s1, tmpfs / "r1")
    before = (tmpfs / report.HISTORY).read_bytes()
    fill(tmpfs)
    big = {"meta": {"run_id": "r2"}, "counts": {}, "scenarios": [record(f"scenario-{i:04d}") for i in range(400)]}
    with pytest.raises(OSError) as e:
        report.append_history(tmpfs, big, tmpfs / "r2")
    assert e.value.errno == errno.ENOSPC
    assert (tmpfs / report.HISTORY).read_bytes() == before, "no torn line left behind"
    (tmpfs / ".filler").unlink()
    report.append_history(tmpfs, big, tmpfs / "r2")
    assert [h["meta"]["run_id"] for h in report.read_history(tmpfs)] == ["r1", "r2"]
