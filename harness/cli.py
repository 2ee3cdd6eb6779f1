"""The `harness` command. Thin: parse, call one function, print. Errors print message + hint, exit 2."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from harness import cli_args, paths
from harness.bed import state, status
from harness.errors import HarnessError
from harness.progress import say
from harness.report import html as html_report

# Each command imports the modules only it needs (bed, engine, libvirt builds, diff, explore) when it runs:
# any of them costs as much as this whole module, and `harness --help` or a refused argument need none.


def _bed_target(args):
    from harness.bed import lifecycle
    return lifecycle.find(name=getattr(args, "name", None), suite=getattr(args, "suite_filter", None))


def cmd_bed_build(args) -> int:
    from harness.bed import image
    img = image.build(args.suite, force=args.force)
    print(f"image {img.key}: {img.dir}")
    print(json.dumps(img.manifest["versions"]))
    if args.box:
        from harness.bed import box
        print(f"box: {box.build_box(img)}")
    return 0


def cmd_bed_up(args) -> int:
    from harness.bed import lifecycle
    build = None
    if args.libvirt_build:      # before booting anything: an unknown id is an error, not a half-done bed
        from harness.libvirt_build import build as build_mod
        build = build_mod.load(args.libvirt_build)
    bed = lifecycle.up(suite=args.suite, via=args.via, name=args.name, memory_mib=args.memory, cpus=args.cpus,
                       vfs=args.vfs, port=args.port, accel=args.accel)
    print(f"bed {bed.name} is up: suite {bed.suite}, via {bed.via}, accelerator {bed.accel} ({bed.accel_reason})")
    print(f"  ssh: ssh -F {bed.ssh_config} bed")
    print(f"  libvirt: {bed.uri.split('?')[0]}")
    if build is not None:
        from harness.libvirt_build import install
        secs = install.install(bed, build)
        got = secs["running"]
        print(f"  libvirt build {build.id} ({build.version}) installed in {secs['total']} s; running daemon: "
              f"{got['id']} (verified: {got['verified']})")
    return 0


def cmd_bed_status(args) -> int:
    from harness.bed import lifecycle
    beds = state.all_beds()
    if args.name:
        beds = [b for b in beds if b.name == args.name]
    out = []
    rc = 0
    for b in beds:
        running = lifecycle.status(b)
        entry = {"name": b.name, "suite": b.suite, "via": b.via, "accel": b.accel, "accel_reason": b.accel_reason,
                 "ssh_port": b.ssh_port, "pid": b.pid,
                 "ssh": (f"{b.ssh_host}:{b.ssh_port}" + (f" (netns {b.extra.get('netns')})" if b.extra.get("netns") else "")), "vm": running, "uri": b.uri.split("?")[0], "checks": []}
        if lifecycle.alive(b):
            try:
                probe = b.ssh("true", timeout=30)
                if probe.returncode != 0:
                    raise HarnessError(f"SSH to the bed failed: {probe.stderr.strip() or 'exit ' + str(probe.returncode)}")
                rows = status.checks(b)
                entry["checks"] = [asdict(r) for r in rows]
                from harness.libvirt_build.install import installed_build
                entry["libvirt_build"] = installed_build(b)
                if not all(r.ok for r in rows):
                    rc = 1
            except Exception as e:   # an unreachable bed is a status, not a crash
                entry["error"] = (str(e).splitlines() or [type(e).__name__])[0]
                rc = 1
        out.append(entry)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        if not out:
            print("no bed is up (harness bed up)")
        for e in out:
            print(f"bed {e['name']}: suite {e['suite']}, via {e['via']}, VM {e['vm']}, accelerator {e['accel']}, "
                  f"ssh {e['ssh']}")
            if e.get("error"):
                print(f"  unreachable: {e['error']}")
            if e["checks"]:
                print(status.table([status.Check(**c) for c in e["checks"]]))
            if e.get("libvirt_build"):
                lb_ = e["libvirt_build"]
                print(f"  libvirt build: {lb_['id']}" + ("" if lb_["id"] == "stock" else
                      f" (verified: {lb_['verified']}; newest domain log names it: {lb_.get('domain_log_names_build')}:"
                      f" {lb_.get('domain_log_package')})"))
    return rc


def cmd_bed_down(args) -> int:
    from harness.bed import lifecycle
    if not (args.name or args.suite_filter or args.all):
        raise HarnessError("say which bed to take down", hint="--name NAME, --suite S, or --all")
    names = [args.name] if args.name else [b.name for b in state.all_beds()
                                            if not args.suite_filter or b.suite == args.suite_filter]
    if not names:
        raise HarnessError("no bed is up", hint="nothing to take down; 'harness bed status' lists beds")
    for n in names:
        for line in lifecycle.down(n):
            print(f"bed {n}: {line}")
    return 0


def cmd_bed_sweep(args) -> int:
    from harness.engine import session
    bed = _bed_target(args)
    t = session.open_target(bed=bed)
    done = session.sweep(t)
    print("removed: " + (", ".join(done) if done else "nothing (no hx-* leftovers)"))
    return 0


def _pytest(argv: list[str]) -> int:
    return subprocess.call([sys.executable, "-m", "pytest", *argv], cwd=paths.REPO)


def run_workers(workers, via: str, cpus: int | None = None, room: int | None = None) -> tuple[int, int]:
    """(pytest-xdist workers, beds) for `harness run`. Each worker gets a bed of its own: on one shared bed a
    scenario that restarts libvirt (restart-daemon, upgrade-libvirt) holds the bed alone and the other worker
    waits. Default: one worker per core, at most 2; no more beds than the host's free memory holds (workers
    beyond them share beds round robin). Vagrant: one bed."""
    from harness.bed import lifecycle
    cpus = cpus or os.cpu_count() or 1
    n = min(2, cpus) if workers is None else cpus if workers in ("auto", "logical") else int(workers)
    if via != "qemu":
        return n, 1
    room = lifecycle.room_for_beds() if room is None else room
    return n, max(1, min(n, room))


def cmd_run(args, extra: list[str]) -> int:
    """The main job: build or reuse the bed(s), bring them up, run every scenario, write results."""
    from harness.bed import image, lifecycle
    from harness.engine import heal
    image.build(args.suite)
    workers, count = run_workers(args.workers, args.via)
    names = lifecycle.worker_bed_names(args.suite, count) if args.via == "qemu" else \
        [lifecycle.default_name(args.suite, args.via)]
    beds, brought_up = [], []
    try:
        for name in names:
            existing = state.load(name)
            beds.append(lifecycle.up(suite=args.suite, via=args.via, name=name))
            if existing is None:
                brought_up.append(name)     # disposable: a bed that dies or stalls is replaced (engine/heal.py)
                heal.own(beds[-1], f"harness run (pid {os.getpid()})")    # its pytest may replace them
        if count > 1:
            say(f"{workers} workers, one bed each: {', '.join(names)}")
        argv = ["scenarios", "-p", "no:cacheprovider", "--bed", ",".join(b.name for b in beds), "--no-bed-up",
                "-rfEs"]
        if args.k:
            argv += ["-k", args.k]
        if args.m:
            argv += ["-m", args.m]
        if workers > 1:     # longest first, handed out one at a time: the workers finish together
            argv += ["-n", str(workers), "--maxschedchunk", "1", "--longest-first"]
        if args.retries:
            argv += ["--harness-retries", str(args.retries)]
        return _pytest(argv + extra)
    finally:
        if not args.keep_bed:
            for name in brought_up:
                for line in lifecycle.down(name):
                    print(f"bed {name}: {line}")


def cmd_lint(args, extra) -> int:
    return _pytest(["scenarios", "--collect-only", "-q", "-p", "no:cacheprovider", *extra])


def cmd_report(args) -> int:
    from harness.report import combine
    from harness.report import run as report
    root = paths.results_dir()
    if args.merge:
        summary = combine.merge_shards([Path(p) for p in args.merge], Path(args.out))
        report.append_history(root, summary, Path(args.out))
        print(f"merged {len(args.merge)} shards into {args.out}: {summary['counts']}")
        return 0
    hist = report.read_history(root)
    if not hist:
        raise HarnessError("no runs in results/history.jsonl yet", hint="run 'harness run' first")
    cur_line = hist[-1] if not args.run else next((h for h in hist if h.get("run_dir", "").endswith(args.run)), None)
    if cur_line is None:
        raise HarnessError(f"no run {args.run!r} in history")
    cur = report.summary_of(root, cur_line)     # a pruned run folder: named, then its history line is used
    prev = report.previous_run(root, cur["meta"].get("suite"), cur["meta"].get("run_id"))
    print(report.format_compare(report.compare(prev, cur)))
    return 0


def cmd_matrix(args) -> int:
    """The catalog on a bed of each suite, one after the other; with --diff, each suite's run is diffed against
    the previous suite's (older libvirt first), as `harness diff` would: what changed between the versions."""
    from harness.report import combine, diff
    from harness.report import run as report
    summaries, run_dirs = [], []
    rc = 0
    for suite in [s for s in args.suites.split(",") if s]:
        before = {h["run_dir"] for h in report.read_history(paths.results_dir())}
        ns = argparse.Namespace(suite=suite, via="qemu", k=args.k, m=None, workers=args.workers,
                                retries=args.retries, keep_bed=False)
        rc |= cmd_run(ns, [])
        new = [h for h in report.read_history(paths.results_dir()) if h["run_dir"] not in before]
        if not new:
            raise HarnessError(f"suite {suite}: the run wrote no results")
        run_dirs.append(paths.results_dir() / new[-1]["run_dir"])
        summaries.append(json.loads((run_dirs[-1] / "summary.json").read_text()))
    text, html = combine.matrix_table(summaries)
    out = paths.results_dir()
    (out / "matrix.txt").write_text(text)
    (out / "matrix.html").write_text(html)
    print(text)
    print(f"matrix: {out / 'matrix.txt'}, {out / 'matrix.html'}")
    if args.diff:
        acks = diff.default_acks()
        for a, b in zip(run_dirs, run_dirs[1:]):
            print(f"\n== harness diff {a.name} {b.name}")
            rc |= _write_diff(str(a), str(b), acks, html=True)
    return rc


def _write_diff(run_a: str, run_b: str, acks: Path, *, html: bool, json_out: Path | None = None,
                show_all: bool = False) -> int:
    """Print the diff of two runs, write its JSON (and the HTML section); 0 nothing new, 1 new differences."""
    from harness.report import diff
    from harness.report.run import load_summary, write_atomic
    result = diff.diff_runs(run_a, run_b, acks)
    print(diff.render_text(result, show_acknowledged=show_all), end="")
    out = json_out or Path(run_b) / diff.json_name(run_a)
    try:
        write_atomic(out, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        print(f"diff: {out}")
        if html:
            b = Path(run_b)
            write_atomic(b / "report.html", html_report.render(load_summary(b), b, diff=result))
            print(f"report: {b / 'report.html'} (with a section 'Differences from {Path(run_a).name}')")
    except OSError as e:
        raise HarnessError(f"could not write {e.filename or out}: {e.strerror or e}",
                           hint="pass --json FILE somewhere writable") from None
    return diff.exit_code(result)


def cmd_diff(args) -> int:
    """Every outward difference between two runs; 0 nothing new, 1 new differences, 2 bad input."""
    from harness.report import diff
    acks = Path(args.acks) if args.acks else diff.default_acks()
    return _write_diff(args.run_a, args.run_b, acks, html=args.html, json_out=Path(args.json) if args.json else None,
                       show_all=args.all)


def cmd_libvirt_build(args) -> int:
    """Build, print the build, optionally install into a bed."""
    from harness.libvirt_build import build
    b = build.build(args.suite, source_dir=args.source, debian_version=args.debian_version, patches=args.patch)
    print(f"build {b.id}: libvirt {b.version} from {b.source}")
    print(f"  tarball: {b.tarball}\n  times: {json.dumps(b.seconds)}")
    if args.install:
        from harness.bed import lifecycle
        from harness.libvirt_build import install
        bed = lifecycle.find(name=args.install)
        secs = install.install(bed, b)
        print(f"  installed into bed {bed.name} in {secs['total']} s; running: {secs['running']['id']}")
    return 0


def cmd_mutants(args) -> int:
    from harness.libvirt_build import mutants
    return mutants.run(suite=args.suite, bed_name=args.bed, k=args.k, debian_version=args.debian_version,
                       only=args.only, keep_bed=args.keep_bed, skip_control=args.skip_control,
                       build_only=args.build_only, workers=args.workers)


def cmd_bisect(args) -> int:
    """Print the steps and the first bad commit; exit 0 when one was found."""
    from harness.libvirt_build import bisect
    r = bisect.bisect(args.source, args.good, args.bad, k=args.k, suite=args.suite, bed_name=args.bed)
    print(bisect.format_result(r))
    return 0 if r.get("first_bad") else 1


def cmd_explore(args) -> int:
    from harness.explore import command
    return command.run(args)


def _run_options(p: argparse.ArgumentParser, workers_help: str) -> None:
    """-n and --retries, as `run` and `matrix` (which runs `run` per suite) both take them."""
    p.add_argument("-n", dest="workers", type=cli_args.int_in(1, 1024, "auto", "logical"), help=workers_help)
    p.add_argument("--retries", type=cli_args.int_in(0, 100), default=0)


def parser() -> argparse.ArgumentParser:
    p = cli_args.Parser(prog="harness", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    bed = sub.add_parser("bed", help="the test bed VM").add_subparsers(dest="bedcmd", required=True)
    b = bed.add_parser("build", help="build (or reuse) the bed image from Debian packages")
    b.add_argument("--suite", default="trixie", type=cli_args.suite)
    b.add_argument("--box", action="store_true", help="also build the vagrant-libvirt box")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    b.set_defaults(fn=cmd_bed_build)
    u = bed.add_parser("up", help="boot a bed and wait until libvirtd answers")
    u.add_argument("--suite", default="trixie", type=cli_args.suite)
    u.add_argument("--via", choices=["qemu", "vagrant"], default="qemu")
    u.add_argument("--name", type=cli_args.bed_name)
    u.add_argument("--memory", type=cli_args.int_in(512, 1 << 20), default=state.MEMORY_MIB,
                   help=f"MiB (above {state.LOW_MEMORY_MAX_MIB}, QEMU cannot reach the igb VFs' registers: "
                        "see harness bed status)")
    u.add_argument("--cpus", type=cli_args.int_in(1, 1024), default=2)
    u.add_argument("--vfs", type=cli_args.int_in(1, 7), default=4, help="VFs per igb PF (1-7)")
    u.add_argument("--port", type=cli_args.int_in(1, 65535), help="host port for SSH on 127.0.0.1 (default: a free one)")
    u.add_argument("--accel", choices=["kvm", "tcg"], help="skip detection")
    u.add_argument("--libvirt-build", metavar="ID", type=cli_args.build_id,
                   help="then install this libvirt build (the id 'harness libvirt build' prints) and restart libvirtd")
    u.set_defaults(fn=cmd_bed_up)
    s = bed.add_parser("status", help="beds and their preconditions (testinfra)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--name", type=cli_args.bed_name)
    s.set_defaults(fn=cmd_bed_status)
    d = bed.add_parser("down", help="stop a bed and remove everything it left")
    d.add_argument("--name", type=cli_args.bed_name)
    d.add_argument("--suite", dest="suite_filter", type=cli_args.suite)
    d.add_argument("--all", action="store_true", help="every bed that is up")
    d.set_defaults(fn=cmd_bed_down)
    w = bed.add_parser("sweep", help="remove hx-* domains and networks left by earlier runs")
    w.add_argument("--name", type=cli_args.bed_name)
    w.add_argument("--suite", dest="suite_filter", type=cli_args.suite)
    w.set_defaults(fn=cmd_bed_sweep)
    r = sub.add_parser("run", help="main job: bed up (build if needed), run every scenario, write results/")
    r.add_argument("--suite", default="trixie", type=cli_args.suite)
    r.add_argument("--via", choices=["qemu", "vagrant"], default="qemu")
    r.add_argument("-k", help="pytest -k expression")
    r.add_argument("-m", help="pytest -m expression (scenario tags)")
    _run_options(r, workers_help="pytest-xdist workers, each with a bed of its own (default: one per core, "
                                 "at most 2; no more beds than free memory holds)")
    r.add_argument("--keep-bed", action="store_true")
    r.set_defaults(fn=cmd_run, takes_extra=True)
    li = sub.add_parser("lint", help="validate every scenario (offline; pytest --collect-only)")
    li.set_defaults(fn=cmd_lint, takes_extra=True)
    rp = sub.add_parser("report", help="compare a run with the previous one, or merge shards")
    rp.add_argument("--compare", action="store_true", help="(default) new failures, fixed, still failing, flaky")
    rp.add_argument("--run", help="run folder name (default: the newest)")
    rp.add_argument("--merge", nargs="+", type=cli_args.run_dir, help="shard run folders to merge")
    rp.add_argument("--out", type=cli_args.new_dir, help="with --merge: the merged run folder")
    rp.set_defaults(fn=cmd_report)
    m = sub.add_parser("matrix", help="run the catalog on a bed of each suite; scenario x libvirt table")
    m.add_argument("--suites", default="bookworm,trixie", type=cli_args.suites)
    m.add_argument("-k")
    _run_options(m, workers_help="pytest-xdist workers per suite")
    m.add_argument("--diff", action="store_true",
                   help="diff each suite's run against the previous suite's (harness diff; known-differences.yaml)")
    m.set_defaults(fn=cmd_matrix)
    df = sub.add_parser("diff", help="every outward difference between two runs (aliases, errors, QEMU ids, XML)")
    df.add_argument("run_a", metavar="RUN_A", type=cli_args.diff_run,
                    help="the run to compare with (e.g. the older libvirt)")
    df.add_argument("run_b", metavar="RUN_B", type=cli_args.diff_run, help="the run under review")
    df.add_argument("--acks", type=cli_args.existing_file,
                    help="acknowledged differences (default: known-differences.yaml at the top of the repository)")
    df.add_argument("--json", type=cli_args.json_out, help="write the JSON here (default: RUN_B/diff-<RUN_A>.json)")
    df.add_argument("--html", action="store_true", help="rewrite RUN_B/report.html with a 'Differences from RUN_A' section")
    df.add_argument("--all", action="store_true", help="also print the acknowledged differences")
    df.set_defaults(fn=cmd_diff)
    lv = sub.add_parser("libvirt", help="libvirt built from source for the bed").add_subparsers(dest="lvcmd", required=True)
    lb = lv.add_parser("build", help="build libvirt (Debian source or a git tree) in a chroot of the suite")
    lb.add_argument("--suite", default="trixie", type=cli_args.suite)
    lb_src = lb.add_mutually_exclusive_group()
    lb_src.add_argument("--source", type=cli_args.existing_dir,
                        help="a libvirt source tree (git) instead of Debian's source")
    lb_src.add_argument("--debian-version", help="Debian source version (default: the suite's)")
    lb.add_argument("--patch", action="append", default=[], type=cli_args.existing_file,
                    help="patch to apply (repeatable)")
    lb.add_argument("--install", metavar="BED", type=cli_args.bed_name,
                    help="also install the build into this running bed")
    lb.set_defaults(fn=cmd_libvirt_build)
    mu = sub.add_parser("mutants", help="build control + each mutants/*.patch, run the catalog on each")
    mu.add_argument("--suite", default="trixie", type=cli_args.suite)
    mu.add_argument("--bed", type=cli_args.bed_name, help="running bed to use (default: bring up hx-mutants-SUITE)")
    mu.add_argument("-k", help="pytest -k expression (default: the whole catalog)")
    mu.add_argument("-n", dest="workers", type=cli_args.int_in(1, 1024, "auto", "logical"),
                    help="pytest-xdist workers per scenario run (the bed's VFs are leased)")
    mu.add_argument("--debian-version")
    mu.add_argument("--only", action="append", help="only mutants whose name contains this (repeatable)")
    mu.add_argument("--keep-bed", action="store_true")
    mu.add_argument("--skip-control", action="store_true",
                    help="reuse the control verdicts of the previous results/mutants.json (marked carried_over)")
    mu.add_argument("--build-only", action="store_true",
                    help="build control and mutants (cached for the next run) and stop: no bed, no scenarios")
    mu.set_defaults(fn=cmd_mutants)
    bi = sub.add_parser("bisect", help="git bisect run: build, install into the bed, run scenarios per step")
    bi.add_argument("--source", required=True, type=cli_args.existing_dir, help="libvirt git tree")
    bi.add_argument("--good", required=True)
    bi.add_argument("--bad", required=True)
    bi.add_argument("-k", help="pytest -k expression selecting the scenarios")
    bi.add_argument("--suite", default="trixie", type=cli_args.suite)
    bi.add_argument("--bed", type=cli_args.bed_name, help="running bed (default: the suite's)")
    bi.set_defaults(fn=cmd_bisect)
    ex = sub.add_parser("explore", help="random stateful sequences of the step kinds; a failure -> minimal scenario")
    ex.add_argument("--budget", default=600.0, type=cli_args.duration, help="search time, e.g. 10m (default), 90s, 1h")
    ex.add_argument("--shrink-budget", default=300.0, type=cli_args.duration,
                    help="time for shrinking a failure to a minimal sequence (default 5m)")
    ex.add_argument("--seed", type=cli_args.int_in(0, 2 ** 32 - 1),
                    help="repeat the sequences of that run (no database)")
    ex.add_argument("--suite", default="trixie", type=cli_args.suite,
                    help="use the running bed of this suite (else bring one up for the run)")
    ex.add_argument("--bed", type=cli_args.bed_name, help="running bed to use")
    ex.add_argument("-n", dest="max_sequences", type=cli_args.int_in(1, 1_000_000),
                    help="stop after N sequences (default: when the budget is spent)")
    ex.add_argument("--max-rules", type=cli_args.int_in(1, 50), default=5,
                    help="rules per sequence, the domain start included (default 5: short sequences, tried often)")
    ex.set_defaults(fn=cmd_explore)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, extra = p.parse_known_args(argv)
    if extra and not getattr(args, "takes_extra", False):
        p.error(f"unrecognized arguments: {shlex.join(extra)}")
    if getattr(args, "fn", None) is cmd_report and bool(args.merge) != bool(args.out):
        p.error("argument --merge/--out: they go together (harness report --merge DIR... --out DIR)")
    try:
        rc = args.fn(args, extra) if getattr(args, "takes_extra", False) else args.fn(args)
    except HarnessError as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted; everything this command created has been cleaned up", file=sys.stderr)
        return 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
