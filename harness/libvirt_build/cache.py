"""Where libvirt builds keep their files: one folder in the harness cache, so a step finds the earlier steps' work.

Layout under paths.cache_dir()/libvirt-build/:
  downloads/          verified InRelease, Sources.xz, orig/debian tarballs
  src/<suite>-<ver>/  unpacked Debian source with debian/patches applied (a git tree, for mutants)
  chroot/<suite>/     mmdebstrap chroot with libvirt's build deps and ccache
  ccache/<suite>/     the compiler cache (bind-mounted into the chroot)
  builds/<id>/        meson build dirs (reused: incremental), destdir tarballs, build.json
"""
from __future__ import annotations

from pathlib import Path

from harness import paths


def root() -> Path:
    p = paths.cache_dir() / "libvirt-build"
    p.mkdir(parents=True, exist_ok=True)
    return p


def sub(*parts: str) -> Path:
    p = root().joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p
