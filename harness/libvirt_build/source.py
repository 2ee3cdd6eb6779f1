"""libvirt's Debian source, fetched by name from the mirror and checked against the signed index.

`apt-get source` cannot be used here (the .dsc answers 404), so the chain of trust is rebuilt by hand:
InRelease (gpgv against the Debian archive keyring) -> sha256 of main/source/Sources.xz -> sha256 of
the .orig and .debian tarballs named in the libvirt stanza. Then unpack, apply debian/patches/series
with `patch -p1`, and make the tree a git repository (so mutants and bisect have a base commit).
"""
from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

from filelock import FileLock

from harness.bed import image
from harness.errors import HarnessError
from harness.libvirt_build.cache import sub
from harness.progress import say

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def mirror() -> str:
    m = image.host_mirror()
    if not m:
        raise HarnessError("no Debian mirror found in the host's apt configuration",
                           hint="set HARNESS_DEBIAN_MIRROR=http://<mirror>/debian")
    return m.rstrip("/")


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, dest: Path, timeout: float = 120) -> Path:
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise HarnessError(f"download failed: {url}: {e}", hint="check the host's Debian mirror") from None
    tmp.replace(dest)
    return dest


def verified_sources_xz(suite: str) -> tuple[Path, str]:
    """dists/<suite>/main/source/Sources.xz and its sha256, verified InRelease -> sha256."""
    d = sub("downloads", suite)
    base = f"{mirror()}/dists/{suite}"
    inrel = _fetch(f"{base}/InRelease", d / "InRelease")
    p = subprocess.run(["gpgv", "--keyring", KEYRING, "--output", str(d / "Release"), str(inrel)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise HarnessError(f"InRelease of {suite} does not verify against {KEYRING}:\n{p.stderr.strip()}",
                           hint="install debian-archive-keyring; never skip this check")
    release = (d / "Release").read_text()
    m = re.search(r"^SHA256:\n((?: .*\n)+)", release, re.M)
    want = None
    for line in (m.group(1) if m else "").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "main/source/Sources.xz":
            want = parts[0]
    if not want:
        raise HarnessError(f"{suite} InRelease names no main/source/Sources.xz")
    sx = d / "Sources.xz"
    if not sx.exists() or _sha256(sx) != want:
        _fetch(f"{base}/main/source/Sources.xz", sx)
    got = _sha256(sx)
    if got != want:
        raise HarnessError(f"Sources.xz sha256 mismatch: {got} != {want} (signed InRelease)")
    return sx, want


def verified_stanza(suite: str, package: str = "libvirt", version: str | None = None) -> dict:
    """`package`'s stanza of the suite's verified Sources index, kept beside it under the index's signed
    sha256. Why: unpacking and splitting sid's 70 MB Sources took 2.5 s of each worker's first upgrade-libvirt
    step, for the same answer until the mirror publishes a new index."""
    sx, sha = verified_sources_xz(suite)
    kept = sx.with_name(f"stanza-{package}-{version or 'newest'}-{sha[:16]}.json")
    try:
        return json.loads(kept.read_text())
    except (OSError, ValueError):
        pass
    st = stanza(lzma.decompress(sx.read_bytes()).decode("utf-8", "replace"), package, version)
    for old in sx.parent.glob(f"stanza-{package}-{version or 'newest'}-*.json"):
        old.unlink(missing_ok=True)         # an older index's answer
    tmp = kept.with_name(f"{kept.name}.{os.getpid()}")
    tmp.write_text(json.dumps(st))
    tmp.replace(kept)
    return st


def stanza(sources: str, package: str = "libvirt", version: str | None = None) -> dict:
    found = []
    for block in sources.split("\n\n"):
        if not re.search(rf"^Package: {re.escape(package)}$", block, re.M):
            continue
        fields: dict = {}
        key = None
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, val = line.partition(":")
                fields[key] = val.strip()
        found.append(fields)
    if version:
        found = [f for f in found if f.get("Version") == version]
    if not found:
        raise HarnessError(f"no source package {package} {version or ''} in the index",
                           hint="check --debian-version against the suite (e.g. 11.3.0-3 for trixie)")
    return found[-1]


def fetch(suite: str, version: str | None = None) -> dict:
    """Download and verify the orig + debian tarballs. Returns {version, upstream, files:{name:path}}."""
    st = verified_stanza(suite, version=version)
    ver = st["Version"]
    d = sub("downloads", "pool")
    files = {}
    for line in st["Checksums-Sha256"].splitlines():
        parts = line.split()
        if len(parts) != 3 or not parts[2].endswith((".tar.xz", ".tar.gz", ".tar.bz2")):
            continue
        sha, _, name = parts
        if name.endswith(".asc"):
            continue
        dest = d / name
        if not dest.exists() or _sha256(dest) != sha:
            say(f"libvirt source: downloading {name}")
            _fetch(f"{mirror()}/{st['Directory']}/{name}", dest, timeout=600)
        if _sha256(dest) != sha:
            raise HarnessError(f"{name}: sha256 does not match the signed Sources index")
        files[name] = dest
    upstream = ver.split(":")[-1].rsplit("-", 1)[0]
    return {"version": ver, "upstream": upstream, "files": files}


def _git(tree: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {"GIT_AUTHOR_NAME": "hx", "GIT_AUTHOR_EMAIL": "hx@localhost", "GIT_COMMITTER_NAME": "hx",
           "GIT_COMMITTER_EMAIL": "hx@localhost", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/root"}
    p = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(tree), *args], capture_output=True, text=True,
                       env=env)
    if check and p.returncode != 0:
        raise HarnessError(f"git {' '.join(args[:2])} in {tree} failed:\n{p.stderr.strip()[-2000:]}")
    return p


def prepare(suite: str, version: str | None = None) -> Path:
    """Unpacked, patched, git-initialised Debian source tree (cached; patches applied once)."""
    info = fetch(suite, version)
    ver = info["version"].replace(":", "_")
    dest = sub("src") / f"{suite}-{ver}"
    with FileLock(str(dest) + ".lock"):
        if (dest / ".hx-ready").exists():
            return dest
        shutil.rmtree(dest, ignore_errors=True)
        tmp = Path(str(dest) + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        orig = next(p for n, p in info["files"].items() if ".orig." in n)
        deb = next((p for n, p in info["files"].items() if ".debian." in n), None)
        say(f"libvirt source: unpacking {orig.name}")
        subprocess.run(["tar", "--no-same-owner", "--strip-components=1", "-xf", str(orig), "-C", str(tmp)],
                       check=True)
        applied = []
        if deb:
            subprocess.run(["tar", "--no-same-owner", "-xf", str(deb), "-C", str(tmp)], check=True)
            series = tmp / "debian/patches/series"
            if series.exists():
                for line in series.read_text().splitlines():
                    line = line.split("#")[0].strip()
                    if not line:
                        continue
                    name = line.split()[0]
                    p = subprocess.run(["patch", "-p1", "--forward", "--batch", "-i",
                                        str(tmp / "debian/patches" / name)], cwd=tmp, capture_output=True, text=True)
                    if p.returncode != 0:
                        raise HarnessError(f"debian patch {name} does not apply:\n{p.stdout[-1500:]}")
                    applied.append(name)
        say(f"libvirt source: applied {len(applied)} Debian patches")
        _git(tmp, "init", "-q")
        _git(tmp, "add", "-A", "-f")
        _git(tmp, "commit", "-q", "-m", f"libvirt {info['version']} (Debian source, {len(applied)} patches)")
        (tmp / ".git" / "info" / "exclude").write_text(".hx-ready\n")
        (tmp / ".hx-ready").write_text(info["version"] + "\n")
        tmp.rename(dest)
    return dest
