"""The tiny guest's kernel: built once from Debian's linux-source with `tinyconfig` plus
files/guest-kernel.config, cached, and baked into every bed image (bed/image.py).

Why: the guest exists only to acknowledge PCI unplugs. Debian's kernel (even booted as an ELF with most
initcalls skipped) spent ~40 s of kernel time on hundreds of initcalls under TCG inside a TCG bed; this one
starts what unplug needs and nothing else. The guest kernel is not what the harness tests, so one build
(from KERNEL_SUITE's source) serves the beds of every suite. HX_GUEST_KERNEL=debian keeps Debian's kernel.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

from filelock import FileLock

from harness import paths
from harness.errors import HarnessError
from harness.progress import say

FRAGMENT = Path(__file__).parent / "files" / "guest-kernel.config"
#: whose linux-source package the kernel is built from (any bed suite boots it)
KERNEL_SUITE = "trixie"
BUILD_DEPS = ["gcc", "libc6-dev", "make", "bc", "bison", "flex", "libelf-dev", "xz-utils", "linux-source"]
BUILD_TIMEOUT = 3600
#: what the build leaves in the cache folder
OUT_FILES = ("vmlinux", "config", "build.json")

_BUILD_SCRIPT = r"""
tars=$(ls /usr/src/linux-source-*.tar.xz)
[ "$(echo "$tars" | wc -l)" = 1 ] || { echo "expected one linux-source tarball, found: $tars" >&2; exit 3; }
rm -rf /build/linux && mkdir /build/linux
tar -xf "$tars" -C /build/linux --strip-components=1
cd /build/linux
make -s ARCH=x86_64 tinyconfig
scripts/kconfig/merge_config.sh -m .config /build/guest-kernel.config >/dev/null
make -s ARCH=x86_64 olddefconfig
make -s ARCH=x86_64 -j"$(($(nproc) + 1))" vmlinux
cp .config /build/out/config
cp vmlinux /build/out/vmlinux
dpkg-query -W -f '${Package} ${Version}\n' 'linux-source-*' > /build/out/source
"""


def mode() -> str:
    """'tiny' (built here, the default) or 'debian' (the bed's own kernel): part of the image's cache key."""
    m = os.environ.get("HX_GUEST_KERNEL", "tiny")
    if m not in ("tiny", "debian"):
        raise HarnessError(f"HX_GUEST_KERNEL={m!r} is not a guest kernel",
                           hint="unset it (the tiny kernel built from Debian's linux-source) or set it to 'debian'")
    return m


def cache_key() -> str:
    h = hashlib.sha256()
    for part in (KERNEL_SUITE, json.dumps(sorted(BUILD_DEPS)), FRAGMENT.read_text(), _BUILD_SCRIPT):
        h.update(part.encode())
    return f"{KERNEL_SUITE}-{h.hexdigest()[:12]}"


def cache_dir() -> Path:
    return paths.cache_dir() / "guest-kernel" / cache_key()


def fragment_lines(text: str) -> list[tuple[int, str, str | None]]:
    """(line number, symbol, wanted value or None for 'is not set') for each setting in a config fragment."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if m := re.fullmatch(r"(CONFIG_[A-Z0-9_]+)=(.*)", line):
            out.append((n, m.group(1), m.group(2)))
        elif m := re.fullmatch(r"# (CONFIG_[A-Z0-9_]+) is not set", line):
            out.append((n, m.group(1), None))
    return out


def check_config(fragment: str, config: str, where: str = str(FRAGMENT)) -> None:
    """Every line of the fragment holds in the built .config. Kconfig silently drops a symbol whose
    dependencies are off (HOTPLUG_PCI without SYSFS, say): a guest that could not acknowledge an unplug."""
    have = {sym: (None if val == "n" else val) for _, sym, val in fragment_lines(config)}
    wrong = [(n, sym, val, have.get(sym)) for n, sym, val in fragment_lines(fragment) if have.get(sym) != val]
    if wrong:
        rows = "; ".join(f"line {n}: {sym} wanted {val if val is not None else 'off'}, built "
                         f"{got if got is not None else 'off'}" for n, sym, val, got in wrong)
        raise HarnessError(f"the guest kernel's config does not hold what {where} asks: {rows}",
                           hint="Kconfig dropped these (a dependency is off, or another option selects them): "
                                "add the dependency to the fragment, or remove the line")


def ensure() -> Path:
    """The tiny guest's vmlinux (ELF with a PVH note), built on first use (~3 min on 2 cores), then cached."""
    from harness.libvirt_build import chroot  # chroot builds on bed/image, which builds on this module

    d = cache_dir()
    d.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(d) + ".lock"):
        if all((d / f).exists() for f in OUT_FILES):
            return d / "vmlinux"
        work = Path(str(d) + ".build")
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(d, ignore_errors=True)
        (work / "out").mkdir(parents=True)
        shutil.copy2(FRAGMENT, work / "guest-kernel.config")
        say(f"guest kernel {d.name}: building from {KERNEL_SUITE}'s linux-source with tinyconfig "
            f"(about 3 min, once)")
        t0 = time.monotonic()
        log = work.parent / f"{d.name}.build.log"
        log.unlink(missing_ok=True)
        try:
            p = chroot.run(KERNEL_SUITE, _BUILD_SCRIPT, {"/build": work}, timeout=BUILD_TIMEOUT, log=log,
                           env={"KBUILD_BUILD_USER": "hx", "KBUILD_BUILD_HOST": "libvirt-alias-harness"},
                           pkgs=BUILD_DEPS)
            if p.returncode != 0:
                tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-15:])
                raise HarnessError(f"building the tiny guest's kernel failed (exit {p.returncode}); full log: {log}\n"
                                   f"{tail}",
                                   hint="fix the build (see the log), or set HX_GUEST_KERNEL=debian to boot the "
                                        "guest on the bed's Debian kernel (about 30 s slower per guest start)")
            check_config(FRAGMENT.read_text(), (work / "out" / "config").read_text())
            secs = round(time.monotonic() - t0, 1)
            (work / "out" / "build.json").write_text(json.dumps({
                "key": d.name, "source": (work / "out" / "source").read_text().strip(), "seconds": secs,
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2))
            (work / "out").rename(d)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        say(f"guest kernel {d.name}: built in {secs:.0f} s")
        return d / "vmlinux"


def describe() -> str:
    """One line for the image's versions: which kernel the tiny guest boots."""
    try:
        info = json.loads((cache_dir() / "build.json").read_text())
    except (OSError, ValueError):
        return "tiny (not built)"
    return f"tiny {info['key']} from {info['source']}"
