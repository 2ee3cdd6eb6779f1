"""The `harness` command's argument types: a bad value fails at parse time, naming the option, before
anything is built or booted (tests/unit/test_cli_fuzz.py fuzzes every option with them)."""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

# bed.image, explore.command (Hypothesis) and report.diff_model are imported by the check that needs them:
# each costs more than the whole of harness.cli, and most commands use none or one of them.

class Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, whatever the user typed (newlines, control characters)
        super().error("".join(c if c.isprintable() else repr(c)[1:-1] for c in message))

    def parse_known_args(self, args=None, namespace=None):
        # argparse turns `--opt=--` into an empty list without calling the option's type check, so the
        # command got [] for e.g. --suite (a TypeError deep in the image code). Refuse it for every option.
        for tok in (sys.argv[1:] if args is None else args):
            if isinstance(tok, str) and re.fullmatch(r"--[\w-]+=--", tok):
                self.error(f"argument {tok[:-3]}: expected one argument")
        return super().parse_known_args(args, namespace)


def build_id(value: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{18}", value):
        raise argparse.ArgumentTypeError(f"a build id is 18 hex digits (as 'harness libvirt build' prints), got {value!r}")
    return value


def suite(value: str) -> str:
    from harness.bed.image import SUITES
    if value not in SUITES:
        raise argparse.ArgumentTypeError(f"unknown suite {value[:40]!r} (choose one of: {', '.join(SUITES)})")
    return value


def suites(value: str) -> str:
    names = [s for s in value.split(",") if s]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of suites, got {value[:40]!r}")
    for s in names:
        suite(s)
    return value


def int_in(lo: int, hi: int, *words: str):
    def check(value: str):
        if value in words:
            return value
        try:
            n = int(value)
        except ValueError:   # also: more digits than int() accepts
            n = None
        if n is None or not lo <= n <= hi:
            extra = "".join(f" or {w!r}" for w in words)
            raise argparse.ArgumentTypeError(f"expected an integer from {lo} to {hi}{extra}, got {value[:40]!r}")
        return n
    return check


BED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def duration(value: str) -> float:
    from harness.explore.command import parse_duration
    try:
        return parse_duration(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def bed_name(value: str) -> str:
    """Bed names become folder names under the cache (removed on 'bed up'/'down') and QEMU/ssh names."""
    if not BED_NAME.fullmatch(value):
        raise argparse.ArgumentTypeError(f"invalid bed name {value[:40]!r} (letters, digits, '.', '_', '-'; "
                                         "starting with a letter or digit; at most 63)")
    return value


def _is(value: str, kind: str) -> bool:
    """Path(value).is_dir()/is_file()/exists(), False for names the OS refuses (too long, NUL byte)."""
    try:
        return bool(value) and getattr(Path(value), kind)()
    except (OSError, ValueError):
        return False


def existing_dir(value: str) -> str:
    if not _is(value, "is_dir"):
        raise argparse.ArgumentTypeError(f"no such directory: {value[:80]!r}")
    return value


def existing_file(value: str) -> str:
    if not _is(value, "is_file"):
        raise argparse.ArgumentTypeError(f"no such file: {value[:80]!r}")
    return value


def run_dir(value: str) -> str:
    existing_dir(value)
    if not _is(str(Path(value) / "summary.json"), "is_file"):
        raise argparse.ArgumentTypeError(f"{value[:80]!r} is not a run folder (no summary.json)")
    return value


def new_dir(value: str) -> str:
    if not value or "\0" in value or len(value) > 4000 or (_is(value, "exists") and not _is(value, "is_dir")):
        raise argparse.ArgumentTypeError(f"{value[:80]!r} is not a folder to write into")
    return value


def diff_run(value: str) -> str:
    """A finished run folder; the error quotes the value whole (shell-quoted) and says what to pass instead."""
    from harness.report.diff_model import nearby
    shown = shlex.quote(value)
    if not _is(value, "is_dir"):
        try:
            hint = nearby(Path(value))
        except (OSError, ValueError):
            hint = "give a folder under results/"
        raise argparse.ArgumentTypeError(f"no run folder {shown}: {hint}")
    if not _is(str(Path(value) / "summary.json"), "is_file"):
        busy = _is(str(Path(value) / "records"), "is_dir") or _is(str(Path(value) / "meta.json"), "is_file")
        raise argparse.ArgumentTypeError(
            f"{shown} has no summary.json: " + ("the run is still being written or was interrupted; wait for it "
                                                "to finish" if busy else "not a run folder; give one under results/"))
    return value


def json_out(value: str) -> str:
    if not value or "\0" in value or _is(value, "is_dir"):
        raise argparse.ArgumentTypeError(f"{shlex.quote(value)} is not a file to write the diff into")
    return value
