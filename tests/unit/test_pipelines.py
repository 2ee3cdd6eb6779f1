"""The nightly pipelines call only commands the harness has, with options it accepts, and cover all three
suites: a renamed option would otherwise surface at 2 a.m. on the first scheduled night."""
from __future__ import annotations

import re
import shlex

import pytest
import yaml

from harness import cli, paths

PIPELINES = [".github/workflows/nightly.yml", ".gitlab-ci.yml"]


def harness_calls(text: str) -> list[list[str]]:
    calls = []
    for line in text.splitlines():
        m = re.search(r"\./harness\.sh\s+([^|&;]*)", line)
        if m:
            words = [w for w in shlex.split(m.group(1).replace("${{ matrix.suite }}", "trixie"))
                     if not w.startswith("$") and '"$(' not in w]
            calls.append(words)
    return calls


@pytest.mark.parametrize("rel", PIPELINES)
def test_pipeline_is_valid_yaml_and_runs_the_three_suite_matrix_with_diff(rel):
    text = (paths.REPO / rel).read_text()
    yaml.safe_load(text)
    calls = harness_calls(text)
    matrix = [c for c in calls if c and c[0] == "matrix"]
    assert matrix, f"{rel}: no './harness.sh matrix' step"
    args = cli.parser().parse_args(matrix[0])
    assert args.suites.split(",") == ["bookworm", "trixie", "sid"] and args.diff, (rel, matrix[0])


@pytest.mark.parametrize("rel", PIPELINES)
def test_every_harness_call_in_a_pipeline_parses(rel):
    parser = cli.parser()
    for words in harness_calls((paths.REPO / rel).read_text()):
        if words and words[0] == "test":
            continue      # pytest's own arguments
        if words and words[0] == "report" and "--run" in words and words[-1] == "--run":
            words = words + ["x"]
        args, extra = parser.parse_known_args(words)     # SystemExit (argparse error) fails the test
        assert not extra or getattr(args, "takes_extra", False), (rel, words, extra)
