"""Wires the harness in as a pytest plugin: scenarios/*.yaml become test items. tests/ci_groups.py splits
`./harness.sh test` over two xdist workers (one per bed) and prints the time per module."""
pytest_plugins = ["harness.plugin", "tests.ci_groups"]
