"""`harness bisect`: git bisect run over a libvirt tree, each step build -> install -> scenarios.

Step exit codes (git bisect run): 0 good, 1 bad, 125 skip. Every infrastructure problem (build
failure, bed unreachable, install failure, nothing collected, scenario errors that are not a
libvirt verdict, any exception) is a skip, never an abort. The bisect is reset at the end, also on
Ctrl-C. Each step leaves a JSON log (and the build log) in the bisect's folder.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from harness import paths
from harness.bed import lifecycle
from harness.errors import HarnessError
from harness.libvirt_build import build as build_mod
from harness.libvirt_build import install as install_mod
from harness.libvirt_build import mutants, source
from harness.progress import say

GOOD, BAD, SKIP = 0, 1, 125


def _git(tree: Path, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    p = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(tree), *args], capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise HarnessError(f"git {' '.join(args)}: {p.stderr.strip()[-1500:]}")
    return p


def step(source_dir: str, suite: str, bed_name: str, k: str | None, log_dir: str) -> int:
    """One bisect step on the currently checked-out commit. Never raises; returns 0/1/125."""
    tree = Path(source_dir)
    logd = Path(log_dir)
    logd.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    rec: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        rec["commit"] = _git(tree, "rev-parse", "HEAD").stdout.strip()
        rec["subject"] = _git(tree, "log", "-1", "--format=%s").stdout.strip()
    except Exception as e:  # noqa: BLE001
        rec["commit"] = "?"
        rec["subject"] = str(e)
    n = len(list(logd.glob("step-*.json"))) + 1
    name = f"step-{n:02d}-{rec['commit'][:10]}"
    rec["step"] = n
    say(f"bisect step {n}: {rec['commit'][:10]} {rec['subject']}")

    def finish(code: int, why: str) -> int:
        rec["answer"] = {GOOD: "good", BAD: "bad", SKIP: "skip"}[code]
        rec["why"] = why
        rec["seconds"]["total"] = round(time.monotonic() - t0, 1)
        (logd / f"{name}.json").write_text(json.dumps(rec, indent=2))
        say(f"bisect step {n}: {rec['answer']} ({why[:200]})")
        return code

    rec["seconds"] = {}
    try:
        t = time.monotonic()
        try:
            b = build_mod.build(suite, source_dir=tree, log=logd / f"{name}.build.log")
        except HarnessError as e:
            rec["seconds"]["build"] = round(time.monotonic() - t, 1)
            rec["build_error"] = str(e)[-3000:]
            return finish(SKIP, "build failed: " + str(e).splitlines()[0])
        rec["build"] = b.id
        rec["seconds"]["build"] = round(time.monotonic() - t, 1)
        rec["build_seconds"] = b.seconds
        try:
            bed = lifecycle.find(name=bed_name)
        except HarnessError as e:
            return finish(SKIP, f"bed {bed_name} not up: {e}")
        t = time.monotonic()
        try:
            rec["install"] = install_mod.install(bed, b)
        except (HarnessError, subprocess.SubprocessError, OSError) as e:
            rec["seconds"]["install"] = round(time.monotonic() - t, 1)
            return finish(SKIP, f"install into bed failed: {str(e).splitlines()[0]}")
        rec["seconds"]["install"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        r = mutants.run_scenarios(bed, logd / name, k=k, timeout=float(os.environ.get("HX_BISECT_RUN_TIMEOUT", 1800)))
        rec["seconds"]["scenarios"] = round(time.monotonic() - t, 1)
        rec["run"] = r["summary_path"]
        v = mutants.verdicts(r)
        rec["verdicts"] = v
        if r["summary"] is None:
            return finish(SKIP, "the scenario run wrote no summary: " + r["output_tail"][-300:])
        failed = v["failed"]
        errored = v["errors"]
        if not (v["passed"] or v["failed"] or v["errors"]):
            return finish(SKIP, "nothing collected/ran (check -k)")
        if failed:
            rec["failing"] = failed
            first = next(iter(failed.items()))
            return finish(BAD, f"{first[0]}: {first[1]}")
        if errored:
            rec["errored"] = errored
            return finish(SKIP, "scenario errors (infrastructure, not a verdict): " + ", ".join(errored))
        return finish(GOOD, f"{len(v['passed'])} scenario(s) passed")
    except BaseException as e:  # noqa: BLE001 - KeyboardInterrupt too: git bisect run must not see a crash code
        rec["exception"] = traceback.format_exc()[-3000:]
        if isinstance(e, KeyboardInterrupt):
            # a code >= 128 (but not 125) makes `git bisect run` stop; the driver then resets
            (logd / f"{name}.json").write_text(json.dumps(rec, indent=2))
            return 255
        return finish(SKIP, f"infrastructure error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def bisect(source_dir: str, good: str, bad: str, k: str | None = None, suite: str = "trixie",
           bed_name: str | None = None, out: Path | None = None) -> dict:
    """Drive `git bisect run`; return {first_bad, subject, message, skipped, steps, log_dir, seconds}."""
    tree = Path(source_dir).resolve()
    if not (tree / ".git").exists():
        raise HarnessError(f"{tree} is not a git repository", hint="pass --source a libvirt git tree")
    if _git(tree, "status", "--porcelain", "--untracked-files=no").stdout.strip():
        raise HarnessError(f"{tree} has uncommitted changes", hint="commit or stash them: bisect checks out commits")
    if (tree / ".git" / "BISECT_START").exists():
        raise HarnessError(f"a bisect is already in progress in {tree}", hint="git bisect reset")
    bed = lifecycle.find(name=bed_name, suite=None if bed_name else suite)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    log_dir = (out or paths.results_dir() / "bisect") / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    _git(tree, "bisect", "start", bad, good)
    step_cmd = [sys.executable, "-m", "harness.libvirt_build.bisect", "--source", str(tree), "--suite", suite,
                "--bed", bed.name, "--log-dir", str(log_dir)] + (["-k", k] if k else [])
    result: dict = {"source": str(tree), "good": good, "bad": bad, "k": k, "bed": bed.name, "log_dir": str(log_dir)}
    try:
        env = dict(os.environ, PYTHONPATH=str(paths.REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(log_dir / "git-bisect-run.log", "w") as lf:
            p = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(tree), "bisect", "run", *step_cmd],
                               stdout=lf, stderr=subprocess.STDOUT, env=env)
        result["git_rc"] = p.returncode
        text = (log_dir / "git-bisect-run.log").read_text()
        result["bisect_log"] = _git(tree, "bisect", "log", check=False).stdout
        (log_dir / "git-bisect.log").write_text(result["bisect_log"])
        m = re.search(r"^([0-9a-f]{40}) is the first bad commit", text, re.M)
        if m:
            result["first_bad"] = m.group(1)
        else:
            cands = re.search(r"There are only 'skip'ped commits left to test\.\nThe first bad commit could be any of:\n"
                              r"((?:[0-9a-f]{40}\n)+)", text)
            result["first_bad_candidates"] = cands.group(1).split() if cands else []
            result["first_bad"] = None
    except KeyboardInterrupt:
        result["interrupted"] = True
        raise
    finally:
        _git(tree, "bisect", "reset", check=False)
        result["seconds"] = round(time.monotonic() - t0, 1)
        steps = [json.loads(p.read_text()) for p in sorted(log_dir.glob("step-*.json"))]
        result["steps"] = [{k_: s.get(k_) for k_ in ("step", "commit", "subject", "answer", "why", "seconds", "build")}
                           for s in steps]
        result["skipped"] = [s["commit"] for s in steps if s.get("answer") == "skip"]
        (log_dir / "bisect.json").write_text(json.dumps(result, indent=2))
    fb = result.get("first_bad")
    if fb:
        result["subject"] = _git(tree, "log", "-1", "--format=%s", fb).stdout.strip()
        bad_steps = [s for s in steps if s.get("commit") == fb and s.get("answer") == "bad"]
        result["message"] = bad_steps[-1]["why"] if bad_steps else None
        (log_dir / "bisect.json").write_text(json.dumps(result, indent=2))
    return result


def format_result(r: dict) -> str:
    lines = []
    for s in r.get("steps", []):
        lines.append(f"  step {s['step']}: {s['commit'][:12]} {s['answer']:5} {s.get('seconds', {}).get('total', '?')} s"
                     f"  {s['subject'][:50]} -- {(s.get('why') or '')[:120]}")
    if r.get("first_bad"):
        lines.append(f"first bad commit: {r['first_bad']} {r.get('subject', '')}")
        lines.append(f"failing scenario: {r.get('message')}")
    else:
        lines.append("no single first bad commit found" +
                     (f"; candidates: {' '.join(c[:12] for c in r.get('first_bad_candidates', []))}"
                      if r.get("first_bad_candidates") else ""))
    if r.get("skipped"):
        lines.append("skipped: " + ", ".join(c[:12] for c in r["skipped"]))
    lines.append(f"logs: {r['log_dir']} ({r.get('seconds')} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point git bisect run calls for one step."""
    p = argparse.ArgumentParser(prog="harness.libvirt_build.bisect")
    p.add_argument("--source", required=True)
    p.add_argument("--suite", default="trixie")
    p.add_argument("--bed", required=True)
    p.add_argument("--log-dir", required=True)
    p.add_argument("-k")
    a = p.parse_args(argv)
    return step(a.source, a.suite, a.bed, a.k, a.log_dir)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())


# --- the proof repository (tests and bench) ----------------------------------------------------------

def _append_comment(tree: Path, rel: str, text: str) -> None:
    p = tree / rel
    p.write_text(p.read_text() + f"\n/* {text} */\n")


def make_demo_repo(dest: Path, suite: str = "trixie", mutant: Path | None = None) -> dict:
    """A git repo of Debian's libvirt 11.3.0 with 9 commits on top: c4 does not build (fixed by c5), c7 puts
    mutant A back. For 9 commits `git bisect` tests c4 first, so the broken commit is always met.

    Returns {base, commits: [{sha, subject, kind}], broken, mutant}.
    """
    mutant = mutant or next(mutants.MUTANTS_DIR.glob("A-*.patch"))
    base_tree = source.prepare(suite)
    if dest.exists():
        shutil.rmtree(dest)
    subprocess.run(["git", "-c", "safe.directory=*", "clone", "-q", str(base_tree), str(dest)], check=True)
    env = {"GIT_AUTHOR_NAME": "hx", "GIT_AUTHOR_EMAIL": "hx@localhost", "GIT_COMMITTER_NAME": "hx",
           "GIT_COMMITTER_EMAIL": "hx@localhost", "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
           "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}
    env = dict(os.environ, **env)

    def commit(msg: str) -> str:
        subprocess.run(["git", "-c", "safe.directory=*", "-C", str(dest), "commit", "-q", "-a", "-m", msg],
                       check=True, env=env)
        return _git(dest, "rev-parse", "HEAD").stdout.strip()

    base = _git(dest, "rev-parse", "HEAD").stdout.strip()
    out = {"base": base, "commits": []}
    plan = [
        ("noise", "qemu: note on alias numbering", lambda: _append_comment(dest, "src/qemu/qemu_alias.c", "hx c1")),
        ("noise", "util: note in virlog", lambda: _append_comment(dest, "src/util/virlog.c", "hx c2")),
        ("noise", "qemu: note in hotplug", lambda: _append_comment(dest, "src/qemu/qemu_alias.c", "hx c3")),
        ("broken", "qemu: half-done refactor (does not build)",
         lambda: _append_comment(dest, "src/qemu/qemu_alias.c", "hx c4 */ int hx_broken( {")),
        ("fix", "qemu: finish the refactor (builds again)", lambda: _fix_c4(dest)),
        ("noise", "network: note in bridge driver", lambda: _append_comment(dest, "src/util/virlog.c", "hx c6")),
        ("mutant", "qemu: simplify net alias index loop (puts the f8e712fe bug back)",
         lambda: subprocess.run(["git", "-c", "safe.directory=*", "-C", str(dest), "apply", str(mutant)], check=True)),
        ("noise", "qemu: note after the mutant", lambda: _append_comment(dest, "src/qemu/qemu_alias.c", "hx c8")),
        ("noise", "util: another note", lambda: _append_comment(dest, "src/util/virlog.c", "hx c9")),
    ]
    for kind, msg, change in plan:
        change()
        sha = commit(msg)
        out["commits"].append({"sha": sha, "subject": msg, "kind": kind})
        if kind in ("broken", "mutant"):
            out[kind] = sha
    return out


def _fix_c4(tree: Path) -> None:
    p = tree / "src/qemu/qemu_alias.c"
    p.write_text(p.read_text().replace("/* hx c4 */ int hx_broken( { */", "/* hx c4 (fixed) */"))
