"""Where the harness keeps things: one place, so caches and results never drift apart.

The cache lives outside the clone (images are hundreds of MB); results live in the clone's
results/ so CI can keep them as artefacts.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: Every object a run creates (domains, networks, files in the bed) starts with this.
PREFIX = "hx-"


def cache_dir() -> Path:
    base = os.environ.get("HARNESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "libvirt-alias-harness")
    p = Path(base)
    p.mkdir(parents=True, exist_ok=True)
    return p


def results_dir() -> Path:
    p = Path(os.environ.get("HARNESS_RESULTS") or (REPO / "results"))
    p.mkdir(parents=True, exist_ok=True)
    return p


def beds_dir() -> Path:
    p = cache_dir() / "beds"
    p.mkdir(parents=True, exist_ok=True)
    return p


def images_dir() -> Path:
    p = cache_dir() / "images"
    p.mkdir(parents=True, exist_ok=True)
    return p


def with_files(record: str | None = None, **files: str):
    """Class decorator for the folders (bed, image, template) whose files have fixed names: each keyword
    becomes a read-only Path attribute `Path(self.dir) / name`, so a class says which files it holds in one
    place, e.g. `@with_files(disk="root.img")`. `record="manifest"`: the folder is complete once its JSON record
    `manifest.json` is written; adds `manifest_file`, `manifest` (the parsed record) and `ready()`."""
    def add(cls):
        names = dict(files)
        if record:
            names[f"{record}_file"] = f"{record}.json"
            setattr(cls, record, property(lambda self: json.loads(getattr(self, f"{record}_file").read_text())))
            cls.ready = lambda self: getattr(self, f"{record}_file").exists()
        for attr, name in names.items():
            setattr(cls, attr, property(lambda self, name=name: Path(self.dir) / name, doc=f"<dir>/{name}"))
        return cls
    return add
