"""tests/ci_groups.py: which xdist worker group each test of `./harness.sh test` runs in.

The two groups must never share a bed (a fault test freezes or restarts the session's bed; explore and the
mutants install other libvirt builds into the spare bed), so every test that asks for the spare bed must be
in "spare" and none of them may ask for the session's bed (`hx_target` or the fault tests' `bed`).
"""
from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

from harness import paths
from tests import ci_groups as groups

INTEGRATION = paths.REPO / "tests" / "integration"


def _tests_and_fixtures(path: Path) -> dict[str, set[str]]:
    """test function name -> the fixtures it needs in the end: a fixture defined in the same module is replaced
    by the fixtures it asks for (test_explore's `bed` is the spare bed, test_faults's `bed` the session's)."""
    tree = ast.parse(path.read_text())
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}

    def leaves(name: str, seen: frozenset = frozenset()) -> set[str]:
        if name not in funcs or name in seen or name.startswith("test_"):
            return {name}
        return set().union(*(leaves(a.arg, seen | {name}) for a in funcs[name].args.args))

    return {name: set().union(*(leaves(a.arg) for a in fn.args.args))
            for name, fn in funcs.items() if name.startswith("test_")}


def test_group_of_a_file_and_of_one_test_in_a_file():
    assert groups.ci_group("tests/integration/test_explore.py::test_explore_finds_both") == "spare"
    assert groups.ci_group("tests/integration/test_faults.py::test_bed_vm_killed_mid_step") == "spare"
    assert groups.ci_group("tests/integration/test_faults.py::test_ctrl_c_mid_step") == "main"
    assert groups.ci_group("tests/integration/test_explore_other.py::test_x") == "main"   # a prefix is not a file
    assert groups.ci_group("scenarios/seed-hostdev-then-hotplug.yaml::seed-hostdev-then-hotplug") == "main"
    assert groups.ci_group("tests/unit/test_aliases.py::test_x") == "main"


def test_every_spare_entry_names_a_test_that_exists():
    for key in groups.SPARE_GROUP:
        path, _, test = key.partition("::")
        assert (paths.REPO / path).is_file(), key
        if test:
            assert test in _tests_and_fixtures(paths.REPO / path), key


def test_spare_bed_users_are_all_spare_and_spare_tests_never_touch_the_sessions_bed():
    session_bed = {"hx_target", "bed"}
    spare_bed = {"spare_bed", "mutant_bed"}
    for path in sorted(INTEGRATION.glob("test_*.py")):
        for name, asked in _tests_and_fixtures(path).items():
            nodeid = f"{path.relative_to(paths.REPO)}::{name}"
            group = groups.ci_group(nodeid)
            if asked & spare_bed:
                assert group == "spare", f"{nodeid} uses the spare bed but runs in group {group}"
            if group == "spare":
                assert not asked & session_bed, f"{nodeid} runs in the spare group but uses the session's bed"


def test_module_times_name_the_workers_each_module_ran_in():
    """test_faults runs in both workers (one test of it kills the spare bed): its line names both."""
    def report(nodeid, gw, s):
        node = SimpleNamespace(gateway=SimpleNamespace(id=gw)) if gw else None
        return SimpleNamespace(nodeid=nodeid, node=node, duration=s)

    class Terminal:
        def __init__(self):
            self.lines: list[str] = []

        def section(self, title):
            self.lines.append(f"== {title}")

        def write_line(self, line):
            self.lines.append(line)

    mt = groups.ModuleTimes()
    for r in (report("tests/integration/test_faults.py::test_ctrl_c_mid_step", "gw0", 10.0),
              report("tests/integration/test_faults.py::test_bed_vm_killed_mid_step", "gw1", 5.0),
              report("tests/integration/test_explore.py::test_x", "gw1", 7.0),
              report("scenarios/seed.yaml::seed", "gw0", 2.0),
              report("tests/unit/test_aliases.py::test_split", "gw0", 1.0)):
        mt.pytest_runtest_logreport(r)
    term = Terminal()
    mt.pytest_terminal_summary(term)
    assert "    15.0 s  tests/integration/test_faults.py  [gw0, gw1]" in term.lines
    assert "     7.0 s  tests/integration/test_explore.py  [gw1]" in term.lines
    assert "     2.0 s  scenarios/ (the catalog)  [gw0]" in term.lines
    assert "    24.0 s  total" in term.lines
    assert "    13.0 s  busy in gw0 (every test)" in term.lines and "    12.0 s  busy in gw1 (every test)" in term.lines

    scenarios_only = groups.ModuleTimes()          # harness run: no summary of ours
    scenarios_only.pytest_runtest_logreport(report("scenarios/seed.yaml::seed", None, 2.0))
    term = Terminal()
    scenarios_only.pytest_terminal_summary(term)
    assert term.lines == []
