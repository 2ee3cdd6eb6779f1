"""Wires the harness in as a pytest plugin: scenarios/*.yaml become test items."""
pytest_plugins = ["harness.plugin"]
