"""Build libvirt from source for the bed, put historical bugs back (mutants), and bisect.

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


def cli_build(args) -> int:
    """`harness libvirt build`: build, print the build, optionally install into a bed."""
    import json
    from harness.libvirt_build import build
    b = build.build(args.suite, source_dir=args.source, debian_version=args.debian_version, patches=args.patch)
    print(f"build {b.id}: libvirt {b.version} from {b.source}")
    print(f"  tarball: {b.tarball}\n  times: {json.dumps(b.seconds)}")
    if args.install:
        from harness.bed import lifecycle
        from harness.libvirt_build import install
        bed = lifecycle.find(name=args.install)
        secs = install.install(bed, b)
        print(f"  installed into bed {bed.name} in {secs['total']} s; running: {install.installed_build(bed)['id']}")
    return 0


def cli_bisect(args) -> int:
    """`harness bisect`: print the steps and the first bad commit; exit 0 when one was found."""
    from harness.libvirt_build import bisect
    r = bisect.bisect(args.source, args.good, args.bad, k=args.k, suite=args.suite, bed_name=args.bed)
    print(bisect.format_result(r))
    return 0 if r.get("first_bad") else 1
