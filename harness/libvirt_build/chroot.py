"""A build chroot of the bed's suite, made from Debian packages with mmdebstrap (cached per suite).

Commands run inside it through `unshare --mount` so the bind mounts (source, build dir, ccache, /proc,
/dev) vanish with the process, even when it is killed: nothing to unmount, nothing left mounted.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from filelock import FileLock

from harness.bed import image
from harness.errors import HarnessError
from harness.libvirt_build.cache import sub
from harness.progress import say

#: libvirt's build dependencies for the drivers the bed needs (a hand list: `apt-get build-dep` adds 172
#: packages for drivers we do not build), plus ccache and the runtime tools meson probes for.
BUILD_DEPS = [
    "gcc", "libc6-dev", "meson", "ninja-build", "pkgconf", "ccache", "python3", "python3-docutils",
    "xsltproc", "libxml2-utils", "libxml2-dev", "libglib2.0-dev", "libgnutls28-dev", "libtirpc-dev",
    "libnl-3-dev", "libnl-route-3-dev", "libjson-c-dev", "libpciaccess-dev", "libudev-dev", "libcap-ng-dev",
    "libdevmapper-dev", "libselinux1-dev", "libacl1-dev", "libattr1-dev", "libapparmor-dev",
    "kmod", "iproute2", "dnsmasq-base", "nftables", "iptables", "openssh-client", "qemu-system-common",
]

#: per suite: libvirt 9.0.0 (bookworm) still parses QEMU's JSON with yajl.
SUITE_DEPS = {"bookworm": ["libyajl-dev"]}

RECIPE_VERSION = "1"


def deps(suite: str, pkgs: list[str] | None = None) -> list[str]:
    """libvirt's build deps for `suite`, or `pkgs` for another build (the guest kernel's)."""
    return list(pkgs) if pkgs is not None else BUILD_DEPS + SUITE_DEPS.get(suite, [])


def key(suite: str, pkgs: list[str] | None = None) -> str:
    h = hashlib.sha256(json.dumps([suite, sorted(deps(suite, pkgs)), RECIPE_VERSION]).encode()).hexdigest()[:10]
    return f"{suite}-{h}"


def path(suite: str, pkgs: list[str] | None = None) -> Path:
    return sub("chroot") / key(suite, pkgs)


def ensure(suite: str, pkgs: list[str] | None = None) -> Path:
    """The chroot for `suite` with `pkgs` (default: libvirt's build deps), built on first use (about 30-60 s),
    reused afterwards."""
    image.check_suite(suite)
    image.require_tools("mmdebstrap", "unshare", "chroot")
    if os.geteuid() != 0:
        raise HarnessError("the build chroot needs root (mmdebstrap --mode=root, chroot)")
    d, want = path(suite, pkgs), deps(suite, pkgs)
    with FileLock(str(d) + ".lock"):
        if (d / ".hx-ready").exists():
            return d
        tmp = Path(str(d) + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(d, ignore_errors=True)
        cmd = ["mmdebstrap", "--mode=root", "--variant=apt", "--quiet", "--include=" + ",".join(want),
               "--aptopt=Acquire::Retries 3",
               "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
               "--dpkgopt=path-exclude=/usr/share/locale/*", suite, str(tmp)]
        m = image.host_mirror()
        if m:
            cmd.append(m)
        say(f"build chroot {d.name}: mmdebstrap with {len(want)} build deps")
        t0 = time.monotonic()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if p.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise HarnessError(f"mmdebstrap for the build chroot failed:\n{(p.stderr or p.stdout)[-2000:]}")
        for m_ in ("src", "build", "ccache", "out"):
            (tmp / m_).mkdir(exist_ok=True)
        secs = round(time.monotonic() - t0, 1)
        (tmp / ".hx-ready").write_text(json.dumps({"suite": suite, "seconds": secs, "packages": want}))
        tmp.rename(d)
        say(f"build chroot {d.name}: ready in {secs} s")
    return d


def run(suite: str, script: str, binds: dict[str, Path], timeout: float = 3600, log: Path | None = None,
        env: dict[str, str] | None = None, pkgs: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run `script` (sh) inside the chroot (`pkgs` as for ensure) with host dirs bind-mounted at /src, /build, ... ."""
    root = ensure(suite, pkgs)
    mounts = [f"mount -t proc proc {root}/proc", f"mount --rbind /dev {root}/dev"]
    for target, host in binds.items():
        host.mkdir(parents=True, exist_ok=True)
        (root / target.lstrip("/")).mkdir(parents=True, exist_ok=True)
        mounts.append(f"mount --bind {shlex.quote(str(host))} {shlex.quote(str(root / target.lstrip('/')))}")
    envs = {"PATH": "/usr/lib/ccache:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C.UTF-8",
            "CCACHE_DIR": "/ccache", **(env or {})}
    inner = " ".join(f"{k}={shlex.quote(v)}" for k, v in envs.items())
    outer = " && ".join(mounts) + f" && exec chroot {shlex.quote(str(root))} env -i {inner} sh -ec {shlex.quote(script)}"
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", outer],
                       capture_output=True, text=True, timeout=timeout)
    if log:
        with open(log, "a") as f:
            f.write(f"$ {script}\n{p.stdout}\n{p.stderr}\n[exit {p.returncode}]\n")
    return p
