"""harness.sh's apt set-up on each apt layout a fresh Debian machine can have, in real chroots.

Why: a fresh bookworm or trixie install may have deb822 sources only (no /etc/apt/sources.list); the
old set-up grepped that file and died with a bare exit 2. Here the real harness.sh (the file itself, run
with `harness.sh apt-sources`) meets each layout in an mmdebstrap chroot of bookworm and trixie; apt in
the chroot then fetches the indexes and must offer QEMU >= 8 (the igb NIC) from what the step wrote.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from harness import paths
from harness.bed import image

pytestmark = [pytest.mark.slow]

HX_FILE = "etc/apt/sources.list.d/hx-bookworm-backports.sources"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MAX_AGE_S = 7 * 86400     # the chroot tarballs are an optional cache: rebuilt when a week old


def deb822(mirror: str, suites: str) -> str:
    return f"Types: deb\nURIs: {mirror}\nSuites: {suites}\nComponents: main\nSigned-By: {KEYRING}\n"


def _mirror() -> str:
    m = image.host_mirror()
    assert m, "the host's apt names no Debian mirror (apt-get indextargets)"
    return m


def tarball(suite: str) -> Path:
    """An apt-variant chroot of the suite as a tarball (cached outside the clone, never required)."""
    if os.geteuid() != 0 or shutil.which("mmdebstrap") is None:
        pytest.fail("needs root and mmdebstrap (./harness.sh installs it; CI runs as root)")
    d = paths.cache_dir() / "setup-chroots"
    d.mkdir(exist_ok=True)
    tar = d / f"{suite}.tar"
    if not tar.exists() or time.time() - tar.stat().st_mtime > MAX_AGE_S:
        tmp = tar.with_suffix(".tmp.tar")
        subprocess.run(["mmdebstrap", "--mode=root", "--variant=apt", "--quiet",
                        "--include=debian-archive-keyring", suite, str(tmp), _mirror()],
                       check=True, capture_output=True, timeout=900)
        tmp.rename(tar)
    return tar


def extract(suite: str, tmp_path: Path) -> Path:
    tar = tarball(suite)
    r = tmp_path / "root"
    r.mkdir()
    with tarfile.open(tar) as t:
        t.extractall(r, filter="fully_trusted")
    (r / "hx").mkdir()
    shutil.copy2(paths.REPO / "harness.sh", r / "hx" / "harness.sh")    # the real file, byte for byte
    for f in [r / "etc/apt/sources.list", *(r / "etc/apt/sources.list.d").glob("*")]:
        f.unlink(missing_ok=True)
    return r


@pytest.fixture(params=["bookworm", "trixie"])
def root(request, tmp_path):
    return request.param, extract(request.param, tmp_path)


@pytest.fixture
def bookworm_root(tmp_path):
    return extract("bookworm", tmp_path)


def apt_tree(r: Path) -> str:
    h = hashlib.sha256()
    for f in sorted((r / "etc/apt").rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(r)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def setup_step(r: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["chroot", str(r), "bash", "/hx/harness.sh", "apt-sources"],
                          capture_output=True, text=True, timeout=120)


def layout(r: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (r / rel).write_text(text)


LAYOUTS = {
    "one-line sources.list": lambda m: {"etc/apt/sources.list": f"deb {m} bookworm main\n"},
    "deb822 only": lambda m: {"etc/apt/sources.list.d/debian.sources": deb822(m, "bookworm bookworm-updates")},
    "backports already, one-line": lambda m: {
        "etc/apt/sources.list": f"deb {m} bookworm main\ndeb {m} bookworm-backports main\n"},
    "backports already, deb822": lambda m: {
        "etc/apt/sources.list.d/debian.sources": deb822(m, "bookworm bookworm-updates bookworm-backports")},
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_apt_sources_step_on_each_layout(root, name):
    suite, r = root
    m = _mirror()
    files = LAYOUTS[name](m)
    if suite == "trixie":     # the same layouts with trixie's own suites: nothing to add
        files = {k: v.replace("bookworm", "trixie") for k, v in files.items()}
    layout(r, files)
    before = apt_tree(r)

    p = setup_step(r)
    assert p.returncode == 0, p.stderr
    adds = suite == "bookworm" and "backports already" not in name
    assert f"(changed: {int(adds)})" in p.stderr, p.stderr
    if adds:
        assert (r / HX_FILE).read_text() == deb822(m, "bookworm-backports")
        assert f"{m} bookworm-backports" in p.stdout           # apt itself now lists it
    else:
        assert not (r / HX_FILE).exists()
        assert apt_tree(r) == before
    if suite == "bookworm":
        assert p.stdout.count("bookworm-backports") == 1, f"backports listed twice:\n{p.stdout}"

    after_first = apt_tree(r)
    again = setup_step(r)
    assert again.returncode == 0 and "(changed: 0)" in again.stderr, again.stderr
    assert apt_tree(r) == after_first, "a second run changed /etc/apt"

    if adds:   # apt accepts what was written (signature, keyring) and would install QEMU >= 8 from it
        upd = subprocess.run(["chroot", str(r), "apt-get", "update", "-q", "--error-on=any"],
                             capture_output=True, text=True, timeout=300)
        assert upd.returncode == 0, upd.stderr
        sim = subprocess.run(["chroot", str(r), "apt-get", "install", "-s", "-q", "--no-install-recommends",
                              "-t", "bookworm-backports", "qemu-system-x86"],
                             capture_output=True, text=True, timeout=300)
        assert sim.returncode == 0, sim.stderr
        v = re.search(r"^Inst qemu-system-x86 \(1:(\d+)\.", sim.stdout, re.M)
        assert v and int(v.group(1)) >= 8, sim.stdout[-2000:]


def test_no_source_for_the_release_names_the_step_and_the_fix(bookworm_root):
    r = bookworm_root
    layout(r, {"etc/apt/sources.list.d/security.sources":
               deb822(_mirror() + "-security", "bookworm-security")})
    before = apt_tree(r)
    p = setup_step(r)
    assert p.returncode == 2
    assert "apt has no source for 'bookworm'" in p.stderr and "fix:" in p.stderr, p.stderr
    assert apt_tree(r) == before and not (r / HX_FILE).exists(), "a failed set-up left a file behind"


def test_failed_apt_update_names_the_step(bookworm_root):
    r = bookworm_root
    # An unreachable mirror on loopback (nothing listens on port 9): the full set-up gets as far as apt-get update.
    layout(r, {"etc/apt/sources.list": "deb http://127.0.0.1:9/debian bookworm main\n"})
    p = subprocess.run(["chroot", str(r), "bash", "/hx/harness.sh", "help"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode != 0
    assert "set-up failed at step 'apt-get update'" in p.stderr and "fix:" in p.stderr, p.stderr
