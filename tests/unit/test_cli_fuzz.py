"""Whatever argv the `harness` command gets, a bad one ends in one error line naming the problem, never a traceback.

The fuzzing cannot touch a bed, a VM or the network: every command function of harness.cli is replaced by a
guard (a bad argv must never reach one), and the cache and results folders point into a temporary folder.
`harness lint` is fuzzed for real (a pytest subprocess, offline) on generated bad scenario files.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import cli, cli_args
from harness.bed.image import SUITES
from harness.scenario.loader import ScenarioError, load_text

REPO = Path(__file__).resolve().parents[2]
SEED = (REPO / "tests" / "data" / "good" / "seed-hostdev-then-hotplug.yaml").read_text()

# Real folders and files the generated argv points at. Named at import (strategies and parameters hold the
# paths), made by the module fixture and removed after it: a process that only collects this module (--co, or
# the xdist worker that does not run it) leaves nothing in /tmp.
TMP = Path(tempfile.gettempdir()) / f"hx-cli-fuzz-{os.getpid()}-{os.urandom(3).hex()}"
A_DIR = TMP / "dir"
A_FILE = TMP / "file.patch"
A_RUN = TMP / "run-a"
NOT_A_RUN = TMP / "not-a-run"


def _make_files() -> None:
    TMP.mkdir(mode=0o700)
    for d in (A_DIR, A_RUN, NOT_A_RUN):
        d.mkdir()
    A_FILE.write_text("x\n")
    (A_RUN / "summary.json").write_text("{}\n")


class ReachedCommand(BaseException):
    """A command function was called: the argv passed every check (the guard stops it there)."""


@pytest.fixture(scope="module", autouse=True)
def guarded():
    _make_files()
    mp = pytest.MonkeyPatch()
    for name, fn in list(vars(cli).items()):
        if name.startswith("cmd_") and callable(fn):
            def guard(*a, _name=name, **kw):
                raise ReachedCommand(_name)
            mp.setattr(cli, name, guard)
    mp.setattr(cli, "_pytest", lambda argv: (_ for _ in ()).throw(ReachedCommand("_pytest")))
    mp.setenv("HARNESS_CACHE", str(TMP / "cache"))
    mp.setenv("HARNESS_RESULTS", str(TMP / "results"))
    yield
    mp.undo()
    shutil.rmtree(TMP, ignore_errors=True)


def escape(text: str) -> str:
    """How the CLI writes user input into its one-line errors."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as e:
            rc = e.code
        except ReachedCommand as e:
            pytest.fail(f"argv {argv!r} reached {e} (a bad argv must be refused before any command runs)")
    return rc, out.getvalue(), err.getvalue()


def assert_refused(argv: list[str], names: set[str]) -> str:
    """Non-zero int exit, no traceback, exactly one 'error:' line, last on stderr, naming one of `names`."""
    rc, out, err = run_cli(argv)
    assert isinstance(rc, int) and not isinstance(rc, bool) and rc != 0, (argv, rc, err)
    assert "Traceback (most recent call last)" not in out + err, (argv, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"harness( [a-z]+)*: error: ", ln)]
    assert len(errors) == 1 and lines[-1] == errors[0], (argv, err)
    message = errors[0].split(": error: ", 1)[1]
    assert message.strip(), (argv, err)
    assert any(n and n in message for n in names), (argv, names, message)
    return message


# --- the parser, walked: every command path and its options -----------------------------------

def _subparsers(p: argparse.ArgumentParser):
    return next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)


def _commands(p: argparse.ArgumentParser, path=()):
    """(path, parser) for every leaf command, plus (path, parser) for the groups (which need a subcommand)."""
    sub = _subparsers(p)
    if sub is None:
        yield path, p
        return
    for name, child in sub.choices.items():
        yield from _commands(child, path + (name,))


PARSER = cli.parser()
LEAVES = dict(_commands(PARSER))
GROUPS = {(): PARSER} | {path[:i]: None for path in LEAVES for i in range(1, len(path))}
for _g in list(GROUPS):
    _p = PARSER
    for word in _g:
        _p = _subparsers(_p).choices[word]
    GROUPS[_g] = _p


def _options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def _takes_extra(p: argparse.ArgumentParser) -> bool:
    return bool(p.get_default("takes_extra"))


def _int_bounds(action) -> tuple[int, int, tuple] | None:
    if getattr(action.type, "__qualname__", "") != "int_in.<locals>.check":
        return None
    nl = inspect.getclosurevars(action.type).nonlocals
    return nl["lo"], nl["hi"], nl["words"]


def valid_value(action) -> st.SearchStrategy[list[str]]:
    """Tokens that are a valid use of the option."""
    if action.nargs == 0:
        return st.just([])
    if action.choices:
        return st.sampled_from(sorted(action.choices)).map(lambda v: [v])
    t = action.type
    bounds = _int_bounds(action)
    if bounds:
        lo, hi, words = bounds
        return (st.integers(lo, hi).map(str) | st.sampled_from(list(words) or [str(lo)])).map(lambda v: [v])
    value = {cli_args.suite: st.sampled_from(sorted(SUITES)), cli_args.suites: st.just("trixie,bookworm"),
             cli_args.bed_name: st.sampled_from(["hx-fuzz", "trixie", "b.1_x"]), cli_args.existing_dir: st.just(str(A_DIR)),
             cli_args.existing_file: st.just(str(A_FILE)), cli_args.run_dir: st.just(str(A_RUN)),
             cli_args.new_dir: st.just(str(TMP / "new-out")), cli_args.build_id: st.just("0123456789abcdef01"),
             cli_args.duration: st.sampled_from(["10m", "90s", "1h", "300"])}.get(t, st.sampled_from(["x", "seed or pool", "1.2.3"]))
    return value.map(lambda v: [v])


NOT_HELP = lambda s: not (s.startswith("-h") or s.startswith("--h"))  # noqa: E731  (-h exits 0, rightly)
junk_text = st.text(max_size=30) | st.text(st.characters(codec="utf-8"), max_size=10) \
    | st.sampled_from(["", " ", "\n", "--", "-", "\x00", "\udcff", "é", "\u2028", "a b", "$(id)", "`id`",
                       "../../etc/passwd", "'", '"', "<x/>", "9" * 5000, "-1", "-99999999999999999999", "1e9",
                       "0x10", "1.5", "nan", "∞", "１２"])


def bad_value(action) -> st.SearchStrategy[str]:
    """Values the option must refuse (None when the option takes any string)."""
    bounds = _int_bounds(action)
    if bounds:
        lo, hi, words = bounds

        def bad_int(s):
            try:
                return not lo <= int(s) <= hi
            except ValueError:
                return s not in words
        return (st.integers(max_value=lo - 1) | st.integers(min_value=hi + 1)).map(str) \
            | st.sampled_from([str(lo - 1), str(hi + 1), str(10 ** 30), str(-10 ** 30)]) | junk_text.filter(bad_int)
    if action.choices:
        return junk_text.filter(lambda s: s not in action.choices)
    t = action.type
    if t in (cli_args.suite, cli_args.suites):
        return junk_text.filter(lambda s: any(x not in SUITES for x in s.split(",")) or not s.strip(","))
    if t is cli_args.bed_name:
        return junk_text.filter(lambda s: not cli_args.BED_NAME.fullmatch(s)) \
            | st.sampled_from(["../../x", "a/b", ".hidden", "x" * 64, "a,b", "a b", "$(touch /tmp/pwned)"])
    missing = st.sampled_from(["", str(TMP / "missing"), "/nonexistent/hx", "../../nonexistent-hx"])
    if t is cli_args.existing_dir:
        return missing | st.just(str(A_FILE))
    if t is cli_args.existing_file:
        return missing | st.just(str(A_DIR))
    if t is cli_args.run_dir:
        return missing | st.sampled_from([str(A_FILE), str(NOT_A_RUN)])
    if t is cli_args.new_dir:
        return st.sampled_from(["", str(A_FILE)])
    if t is cli_args.build_id:
        return junk_text.filter(lambda s: not re.fullmatch(r"[0-9a-f]{18}", s)) \
            | st.sampled_from(["0123456789ABCDEF01", "0" * 17, "0" * 19, "../" + "0" * 15])
    if t is cli_args.duration:
        return junk_text.filter(lambda s: not re.fullmatch(r"\s*\d+(\.\d+)?\s*[smh]?\s*", s)
                                or not float(re.sub(r"[^\d.]", "", s) or 0) > 0) | st.sampled_from(["0", "10min", "-5m"])
    return None


def _name(action) -> str:
    return "/".join(action.option_strings)


@st.composite
def bad_argv(draw):
    """(argv, names): valid options of a real command, with 1-3 faults inserted; `names` are what an error may name."""
    path = draw(st.sampled_from(sorted(LEAVES)))
    p = LEAVES[path]
    opts = _options(p)
    chosen = draw(st.lists(st.sampled_from(opts), unique_by=id, max_size=4)) if opts else []
    for group in p._mutually_exclusive_groups:          # at most one of a group (else that is the error)
        inside = [a for a in chosen if a in group._group_actions]
        chosen = [a for a in chosen if a not in inside[1:]]
    chunks = [[a.option_strings[0], *draw(valid_value(a))] for a in chosen]
    names: set[str] = set()
    faults = []
    checked = [a for a in opts if bad_value(a) is not None]
    extra_ok = _takes_extra(p)                           # run/lint hand unknown arguments to pytest
    kinds = (["bad_value"] if checked else []) + ["missing_value"] * bool(opts) + ["bad_command", "truncated"] \
        + ([] if extra_ok else ["unknown_option", "junk_positional", "after_dashdash"])
    kinds = [k for k in kinds if k != "truncated" or len(path) > 1]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(kinds))
        if kind == "bad_value":
            a = draw(st.sampled_from(checked))
            v = draw(bad_value(a).filter(NOT_HELP))
            if a.option_strings[-1].startswith("--") and draw(st.booleans()):
                faults.append([f"{a.option_strings[-1]}={v}"])
            else:
                faults.append([a.option_strings[0], v])
            names |= {f"argument {_name(a)}"}
        elif kind == "missing_value":
            a = draw(st.sampled_from([a for a in opts if a.nargs != 0]))
            faults.append(["@end", a.option_strings[0]])
            names |= {f"argument {_name(a)}"}
        elif kind == "unknown_option":
            v = "--no-such-" + draw(junk_text)
            faults.append([v])
            names |= {escape(shlex.quote(v))}
        elif kind == "junk_positional":
            v = draw(junk_text.filter(lambda s: not s.startswith("-") or re.fullmatch(r"-\d+", s)))
            faults.append([v])
            names |= {escape(shlex.quote(v))}
        elif kind == "after_dashdash":
            vs = draw(st.lists(junk_text, min_size=1, max_size=2))
            faults.append(["--", *vs])
            names |= {escape(shlex.quote(v)) for v in vs}
        elif kind == "bad_command":    # the argv ends at the unknown command word: nothing else matters
            level = draw(st.integers(0, len(path) - 1))
            group = GROUPS[path[:level]]
            v = draw(junk_text.filter(lambda s, group=group: s not in _subparsers(group).choices and not s.startswith("-")))
            return list(path[:level]) + [v], {escape(repr(v))}
        else:   # truncated: a command group without its subcommand
            return list(path[:draw(st.integers(0, len(path) - 1))]), {"the following arguments are required"}
    # required options left out, mutually exclusive options, unknown values after '--' are errors too
    names |= {"the following arguments are required", "not allowed with argument", "argument --merge/--out"}
    names |= {f"argument {_name(a)}" for a in chosen if a.nargs == "+"}   # junk after --merge is a shard to it
    tail = [f[1:] for f in faults if f[0] == "@end"]
    body = chunks + [f for f in faults if f[0] not in ("@end", "--")]
    order = draw(st.permutations(range(len(body))))
    argv = list(path) + [t for i in order for t in body[i]]
    argv += [t for f in faults if f[0] == "--" for t in f]
    argv += [t for f in tail[:1] for t in f]
    return argv, names


CLI_FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@CLI_FUZZ
@given(bad_argv())
def test_bad_argv_is_one_error_line_never_a_traceback(case):
    argv, names = case
    assert_refused(argv, names)


@CLI_FUZZ
@given(st.lists(junk_text, max_size=6))
def test_pure_junk_argv(argv):
    if argv and argv[0] in _subparsers(PARSER).choices or any(a.startswith(("-h", "--h")) for a in argv):
        return   # a real command or -h: covered above / exits 0 with the help
    assert_refused(argv, {"argument cmd", "the following arguments are required", "unrecognized arguments"})


@pytest.mark.parametrize("argv, named", [
    ([], "the following arguments are required: cmd"),
    (["bed"], "the following arguments are required: bedcmd"),
    (["bed", "up", "--vfs", "0"], "argument --vfs: expected an integer from 1 to 7, got '0'"),
    (["bed", "up", "--memory", "-5"], "argument --memory"),
    (["bed", "up", "--port", "65536"], "argument --port"),
    (["bed", "up", "--name", "../../home"], "argument --name: invalid bed name '../../home'"),
    (["bed", "down", "--name", "../.."], "argument --name"),
    (["bed", "build", "--suite", "buster"], "argument --suite: unknown suite 'buster'"),
    (["run", "-n", "abc"], "argument -n"),        # used to reach pytest-xdist only after the bed was booted
    (["run", "-n", "0"], "argument -n"),
    (["run", "--retries", "-1"], "argument --retries"),
    (["matrix", "--suites", "trixie,buster"], "argument --suites: unknown suite 'buster'"),
    (["matrix", "--suites", ","], "argument --suites"),
    (["report", "--merge", str(A_RUN)], "argument --merge/--out"),   # used to be a TypeError traceback
    (["report", "--out", str(TMP / "o")], "argument --merge/--out"),
    (["report", "--merge", str(A_RUN), "--out", str(A_FILE)], "argument --out"),  # NotADirectoryError before
    (["report", "--merge", str(NOT_A_RUN), "--out", str(TMP / "o")], "no summary.json"),
    (["libvirt", "build", "--patch", "/nonexistent.patch"], "argument --patch: no such file"),
    (["libvirt", "build", "--suite", "jessie"], "argument --suite"),  # used to ask Debian's mirror for 'jessie'
    (["bisect", "--source", "/nonexistent", "--good", "a", "--bad", "b"], "argument --source: no such directory"),
    (["bed", "status", "bogus"], "unrecognized arguments: bogus"),
    (["bed", "status", ""], "unrecognized arguments: ''"),
    (["bed", "status", "a\nb"], "unrecognized arguments: 'a\\nb'"),
    (["bed", "up", "--name", "x\ny"], "argument --name: invalid bed name 'x\\ny'"),
    (["bed", "up", "--libvirt-build", "latest"], "argument --libvirt-build: a build id is 18 hex digits"),
    (["bed", "build", "--suite=--"], "argument --suite: expected one argument"),  # argparse gave the command []
])
def test_known_bad_arguments(argv, named):
    assert named in assert_refused(argv, {named})


def test_valid_argv_reaches_the_command():
    """The guard is not what makes the fuzz pass: good argv get through to the (guarded) command."""
    for argv in (["bed", "up", "--vfs", "7", "--port", "2222", "--name", "hx-x"], ["run", "-n", "auto", "-k", "seed"],
                 ["report", "--merge", str(A_RUN), "--out", str(TMP / "o")], ["lint", "whatever", "--co"],
                 ["matrix", "--suites", "trixie"], ["libvirt", "build", "--patch", str(A_FILE)]):
        with pytest.raises(BaseException, match=r"reached cmd_"), contextlib.redirect_stderr(io.StringIO()):
            run_cli(argv)


# --- lint: a real (offline) pytest --collect-only on generated bad files -----------------------

WORDS = ["guards", "steps", "start", "attach", "interface", "id", "type", "hostdev", "device", "expect", "aliases",
         "{vf1.pci}", "{nope}", "name", "scenarios", "vfs", ":", "- ", "  ", "\n", "'", '"', "<x/>", "$(id)", "&a", "*a"]
edit = st.tuples(st.integers(0, len(SEED)), st.integers(0, 12),
                 st.lists(st.sampled_from(WORDS) | st.text(max_size=3), max_size=8).map("".join))
scenario_text = edit.map(lambda e: SEED[:e[0]] + e[2] + SEED[e[0] + e[1]:]) | st.text(max_size=60) \
    | st.binary(max_size=40).map(lambda b: b.decode("latin-1"))
FILE_NAMES = ["f", "f b", "f'q", "f$(id)", "f;rm", "fé", "f-x"]


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(scenario_text, min_size=1, max_size=len(FILE_NAMES)))
def test_lint_names_every_bad_file_without_traceback(texts):
    with tempfile.TemporaryDirectory(prefix="hx-lint-fuzz-") as tmp:
        folder = Path(tmp) / "scenarios"
        folder.mkdir()
        expected = {}
        for i, text in enumerate(texts):
            f = folder / f"{FILE_NAMES[i]}{i}.yaml"
            f.write_bytes(text.encode("utf-8", "surrogateescape"))
            try:
                load_text(f.read_bytes(), str(f))
                expected[f] = None
            except ScenarioError as e:
                expected[f] = str(e).splitlines()[0]
        env = dict(os.environ, HARNESS_CACHE=str(Path(tmp) / "cache"), HARNESS_RESULTS=str(Path(tmp) / "results"))
        p = subprocess.run([sys.executable, "-m", "harness.cli", "lint", str(folder)], capture_output=True,
                           text=True, env=env, cwd=REPO, timeout=120)
        out = p.stdout + p.stderr
        assert "Traceback (most recent call last)" not in out, out
        bad = [f for f, msg in expected.items() if msg]
        assert (p.returncode != 0) == bool(bad) or "duplicate scenario name" in out, (p.returncode, out)
        for f, msg in expected.items():
            if msg:
                assert msg in out, (msg, out)          # file:line:column: message, as the loader says it
            elif "duplicate scenario name" not in out:
                assert f"{f.name}::" in out, out       # a good file is collected


def test_bed_up_with_an_unknown_build_fails_before_booting(tmp_path):
    """`bed up --libvirt-build ID` checks the build exists first: no bed state, no QEMU, one error line."""
    env = dict(os.environ, HARNESS_CACHE=str(tmp_path / "cache"))
    p = subprocess.run([sys.executable, "-m", "harness.cli", "bed", "up", "--name", "hx-fuzz-nobuild",
                        "--libvirt-build", "0123456789abcdef01"], capture_output=True, text=True, env=env, timeout=60,
                       cwd=Path(__file__).resolve().parents[2])
    assert p.returncode == 2, p.stderr
    assert "harness: error: no libvirt build 0123456789abcdef01 in " in p.stderr
    assert "'harness libvirt build' prints the id of what it built; kept builds: none" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "cache" / "beds" / "hx-fuzz-nobuild").exists()
