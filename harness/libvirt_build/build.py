"""meson setup / compile / install --destdir inside the build chroot; incremental and ccache'd.

One build directory per source tree (and meson option set) is kept and reused, so a change in
qemu_alias.c costs a second, not a full build. Patches (mutants) are applied to a git work tree of the
Debian source with `git checkout -f` + `git apply`: files the patch does not touch keep their mtimes.

The build id names the exact source (git HEAD + hash of uncommitted changes + meson options). It is
NOT put in config.h (every object includes it, so every step would be a full rebuild): meson gets a
fixed placeholder as packager_version, and the install step stamps the id into the placeholder (same
length) in the DESTDIR copy. The domain log line "libvirt version: 11.3.0, package: hx-<id> (hx)"
and /usr/lib/libvirt/hx-build-id then name the build.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from filelock import FileLock

from harness.errors import HarnessError
from harness.libvirt_build import chroot, source
from harness.libvirt_build.cache import sub
from harness.progress import say

PLACEHOLDER = "hx-000000000000000000"          # same length as "hx-" + 18-char build id
MARKER = "usr/lib/libvirt/hx-build-id"
MANIFEST = "usr/lib/libvirt/hx-manifest.json"
#: bump when what goes into the tarball changes (strip, manifest): part of the build id
PACK_VERSION = 2
MULTIARCH = "x86_64-linux-gnu"

#: Debian's layout (or the daemon misbehaves in the bed) and the drivers the scenarios use. -O0 (Debian: -O2)
#: because a cold build then compiles in 86 s instead of 159 s on 2 cores; alias and hot-plug logic does not
#: depend on the optimisation level, and the distro's own -O2 build is what the main job tests.
MESON_OPTIONS = [
    "--prefix=/usr", "--sysconfdir=/etc", "--localstatedir=/var", f"--libdir=lib/{MULTIARCH}",
    "--libexecdir=lib/libvirt", "-Doptimization=0", "-Ddebug=true",
    "-Drunstatedir=/run", "-Dremote_default_mode=legacy",
    "-Dqemu_user=libvirt-qemu", "-Dqemu_group=libvirt-qemu",
    f"-Dqemu_moddir=/usr/lib/{MULTIARCH}/qemu", "-Dqemu_datadir=/usr/share/qemu",
    "-Dinit_script=none",
    "-Ddriver_libvirtd=enabled", "-Ddriver_remote=enabled", "-Ddriver_qemu=enabled",
    "-Ddriver_network=enabled", "-Dudev=enabled", "-Dlibnl=enabled", "-Dpciaccess=enabled",
    "-Ddriver_secrets=enabled", "-Dstorage_dir=enabled",
    "-Ddocs=disabled", "-Dtests=disabled", "-Dnls=disabled", "-Dexpensive_tests=disabled",
    "-Ddriver_lxc=disabled", "-Ddriver_ch=disabled", "-Ddriver_vbox=disabled", "-Ddriver_esx=disabled",
    "-Ddriver_hyperv=disabled", "-Ddriver_openvz=disabled", "-Ddriver_vmware=disabled",
    "-Ddriver_vz=disabled", "-Ddriver_bhyve=disabled", "-Ddriver_libxl=disabled", "-Ddriver_test=disabled",
    "-Dwerror=false", "-Dgit_werror=disabled", "-Dno_git=true",
    "-Dpackager=hx", f"-Dpackager_version={PLACEHOLDER}",
]


@dataclass
class Build:
    id: str
    suite: str
    source: str
    build_dir: str
    tarball: str
    version: str = ""
    seconds: dict = field(default_factory=dict)
    sha256: dict = field(default_factory=dict)     # path in the bed -> sha256 (stamped files)
    patches: list = field(default_factory=list)
    ok: bool = True
    log: str = ""

    def save(self) -> None:
        Path(self.build_dir, "..", f"build-{self.id}.json").resolve().write_text(json.dumps(asdict(self), indent=2))


def _git(tree: Path, *args: str, check: bool = True) -> str:
    p = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(tree), *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise HarnessError(f"git {' '.join(args)} in {tree}: {p.stderr.strip()[-1500:]}")
    return p.stdout


def tree_id(tree: Path) -> str:
    """Git HEAD + uncommitted changes (tracked and untracked, build outputs excluded)."""
    head = _git(tree, "rev-parse", "HEAD").strip()
    h = hashlib.sha256(head.encode())
    h.update(_git(tree, "diff", "HEAD", "--binary").encode())
    for f in _git(tree, "ls-files", "--others", "--exclude-standard").split():
        h.update(f.encode())
        try:
            h.update(Path(tree, f).read_bytes())
        except OSError:
            pass
    return h.hexdigest()


def build_id(tree: Path, options: list[str]) -> str:
    h = hashlib.sha256(tree_id(tree).encode())
    h.update(json.dumps(options).encode())
    return h.hexdigest()[: len(PLACEHOLDER) - 3]


def work_tree(suite: str, version: str | None, patches: list[Path], source_suite: str | None = None) -> Path:
    """A reusable git work tree of the Debian source with `patches` applied on top of its base commit.

    source_suite: take the source from that suite's Sources index (e.g. sid's 12.8.0 built for a trixie bed)."""
    base = source.prepare(source_suite or suite, version)
    wt = sub("work") / base.name
    if not (wt / ".git").exists():
        shutil.rmtree(wt, ignore_errors=True)
        subprocess.run(["git", "-c", "safe.directory=*", "clone", "-q", "--no-hardlinks", str(base), str(wt)],
                       check=True)
    _git(wt, "reset", "-q", "--hard", _git(base, "rev-parse", "HEAD").strip())
    _git(wt, "clean", "-q", "-fd")
    for p in patches:
        p = Path(p).resolve()
        out = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(wt), "apply", "--whitespace=nowarn", str(p)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise HarnessError(f"patch {p.name} does not apply to {base.name}:\n{out.stderr.strip()[-1500:]}",
                               hint="mutants/ has per-version variants (e.g. *-9.0.0.patch)")
    return wt


def _patched_copy(tree: Path, patches: list[Path]) -> Path:
    """The user's tree is never modified: patches go onto a reused shared clone of its HEAD."""
    if not (tree / ".git").exists():
        raise HarnessError(f"--patch with --source needs a git tree ({tree} is not one)")
    if _git(tree, "status", "--porcelain", "--untracked-files=no").strip():
        say(f"{tree} has uncommitted changes: the patched build uses its HEAD only", warn=True)
    wt = sub("work") / ("user-" + hashlib.sha256(str(tree).encode()).hexdigest()[:10])
    if not (wt / ".git").exists():
        shutil.rmtree(wt, ignore_errors=True)
        subprocess.run(["git", "-c", "safe.directory=*", "clone", "-q", "--shared", str(tree), str(wt)], check=True)
    _git(wt, "fetch", "-q", str(tree), "HEAD")
    _git(wt, "reset", "-q", "--hard", "FETCH_HEAD")
    _git(wt, "clean", "-q", "-fd")
    for p in patches:
        out = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(wt), "apply", str(p.resolve())],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise HarnessError(f"patch {p} does not apply to {tree} (HEAD): {out.stderr[-800:]}")
    return wt


def build_dir_for(tree: Path, suite: str) -> Path:
    """The reused build folder of a source tree (one per tree path, suite and option set)."""
    tkey = hashlib.sha256(f"{Path(tree).resolve()}|{suite}|{json.dumps(MESON_OPTIONS)}".encode()).hexdigest()[:10]
    return sub("builds", f"{suite}-{tkey}")


def load(bid: str) -> Build:
    """A packed build by its id (what `harness libvirt build` and `harness mutants --build-only` print)."""
    meta = sub("out") / f"{bid}.json"
    if meta.exists():
        b = Build(**json.loads(meta.read_text()))
        if Path(b.tarball).exists():
            return b
    kept = [p.name[:-len(".json")] for p in sorted(sub("out").glob("*.json"), key=lambda p: -p.stat().st_mtime)]
    raise HarnessError(f"no libvirt build {bid} in {sub('out')}",
                       hint="'harness libvirt build' prints the id of what it built; kept builds: "
                            + (", ".join(kept[:8]) or "none"))


def _tree_version(tree: Path) -> str:
    for line in (tree / "meson.build").read_text().splitlines()[:10]:
        if "version:" in line:
            return line.split("'")[1]
    return "?"


def build(suite: str = "trixie", source_dir: str | Path | None = None, debian_version: str | None = None,
          patches: list[Path] | None = None, log: Path | None = None, timeout: float = 3600,
          force: bool = False, source_suite: str | None = None) -> Build:
    """Build libvirt (Debian source + patches, or a user's tree) and pack a DESTDIR tarball. Raises on failure.

    A build whose id (same source, same options) was packed before is reused unless `force`.
    source_suite: Debian source of another suite (an upgrade target), compiled in the chroot of `suite`.
    """
    patches = [Path(p) for p in (patches or [])]
    if source_dir:
        return _build(suite, source_dir, debian_version, patches, log, timeout, force)
    # The Debian work tree is shared by the control and every mutant: one build at a time uses it (e.g. a
    # background `harness mutants --build-only` and a test's build), or a patch lands mid-compile.
    with FileLock(str(sub("work") / f"{suite}.lock")):
        return _build(suite, source_dir, debian_version, patches, log, timeout, force, source_suite)


def _build(suite, source_dir, debian_version, patches, log, timeout, force, source_suite=None) -> Build:
    t0 = time.monotonic()
    if source_dir:
        tree = Path(source_dir).resolve()
        if not (tree / "meson.build").exists():
            raise HarnessError(f"{tree} is not a libvirt source tree (no meson.build)")
        if patches:
            tree = _patched_copy(tree, patches)
    else:
        tree = work_tree(suite, debian_version, patches, source_suite)
    t_src = time.monotonic() - t0
    # the chroot's suite is part of the id: trixie's source built for a bookworm bed (an upgrade target) links
    # against bookworm's libc, the same tree built for trixie does not (GLIBC_2.38 not found in the bed)
    bid = build_id(tree, MESON_OPTIONS + [f"hx-pack={PACK_VERSION}", f"chroot={suite}"])
    bdir = build_dir_for(tree, suite)
    outd = sub("out")
    log = log or (outd / f"{bid}.log")
    b = Build(id=bid, suite=suite, source=str(tree), build_dir=str(bdir / "build"), tarball=str(outd / f"{bid}.tar.gz"),
              version=_tree_version(tree), patches=[str(p) for p in patches], log=str(log))
    cached = outd / f"{bid}.json"
    if cached.exists() and Path(b.tarball).exists() and not force:
        say(f"libvirt build {bid}: already built, reusing")
        return Build(**json.loads(cached.read_text()))
    chroot.ensure(suite)
    with FileLock(str(bdir) + ".lock"):
        binds = {"/src": tree, "/build": bdir, "/ccache": sub("ccache", suite)}
        configured = (bdir / "build" / "build.ninja").exists()
        t1 = time.monotonic()
        if not configured:
            shutil.rmtree(bdir / "build", ignore_errors=True)
            say(f"libvirt build {bid}: meson setup")
            p = chroot.run(suite, "meson setup /build/build /src " + " ".join(MESON_OPTIONS), binds, log=log,
                           timeout=600)
            if p.returncode != 0:
                raise HarnessError(f"meson setup failed (log {log}):\n{(p.stdout + p.stderr)[-2500:]}")
        t2 = time.monotonic()
        say(f"libvirt build {bid}: ninja (incremental)" if configured else f"libvirt build {bid}: ninja (full build, ~2 min)")
        p = chroot.run(suite, "ninja -C /build/build -j2", binds, log=log, timeout=timeout)
        if p.returncode != 0:
            raise HarnessError(f"libvirt build failed (log {log}):\n{(p.stdout + p.stderr)[-2500:]}")
        t3 = time.monotonic()
        dest = bdir / "destdir"
        shutil.rmtree(dest, ignore_errors=True)
        p = chroot.run(suite, "meson install -C /build/build --destdir /build/destdir --no-rebuild --quiet", binds,
                       log=log, timeout=600)
        if p.returncode != 0:
            raise HarnessError(f"meson install failed (log {log}):\n{(p.stdout + p.stderr)[-2500:]}")
        _strip(suite, dest, binds, log)
        b.sha256 = _stamp(dest, bid)
        _pack(dest, Path(b.tarball))
        t4 = time.monotonic()
    b.seconds = {"source": round(t_src, 1), "chroot": round(t1 - t0 - t_src, 1), "setup": round(t2 - t1, 1),
                 "compile": round(t3 - t2, 1), "install_pack": round(t4 - t3, 1), "total": round(t4 - t0, 1)}
    cached.write_text(json.dumps(asdict(b), indent=2))
    _prune(outd, keep=KEEP_BUILDS)
    say(f"libvirt build {bid}: done in {b.seconds['total']} s ({b.seconds})")
    return b


KEEP_BUILDS = 24


def _prune(outd: Path, keep: int) -> None:
    """Keep the newest `keep` packed builds (a bisect adds one per step, ~25 MB each)."""
    packs = sorted(outd.glob("*.tar.gz"), key=lambda p: p.stat().st_mtime, reverse=True)
    for p in packs[keep:]:
        for f in (p, p.with_name(p.name[:-len(".tar.gz")] + ".json")):
            f.unlink(missing_ok=True)


def _stamp(dest: Path, bid: str) -> dict:
    """Write the id into the placeholder (same length) of every installed file, plus the marker file."""
    old = PLACEHOLDER.encode()
    new = f"hx-{bid}".encode()
    assert len(old) == len(new), (old, new)
    sums, every = {}, {}
    for p in dest.rglob("*"):
        if p.is_symlink() or not p.is_file():
            continue
        data = p.read_bytes()
        if old in data:
            data = data.replace(old, new)
            mode = p.stat().st_mode
            p.write_bytes(data)
            p.chmod(mode)
        rel = "/" + str(p.relative_to(dest))
        digest = hashlib.sha256(data).hexdigest()
        every[rel] = digest
        if rel.endswith((".so", ".so.0")) or "/connection-driver/" in rel or rel.startswith("/usr/sbin/") \
                or ".so.0." in rel:
            sums[rel] = digest
    m = dest / MARKER
    m.parent.mkdir(parents=True, exist_ok=True)
    m.write_text(bid + "\n")
    (dest / MARKER).with_name("hx-build.json").write_text(json.dumps({"id": bid, "sha256": sums}, indent=1))
    # every file with its sha256: install sends only what differs from the bed's current manifest
    (dest / MANIFEST).write_text(json.dumps(every, indent=0, sort_keys=True))
    return sums


def _strip(suite: str, dest: Path, binds: dict, log: Path) -> None:
    """Drop debug info from the installed copies (4-5x smaller tarball, faster install; the build dir keeps it)."""
    elfs = []
    for p in dest.rglob("*"):
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    elfs.append("/build/destdir/" + str(p.relative_to(dest)))
    if not elfs:
        return
    (dest.parent / "strip.list").write_text("\n".join(elfs) + "\n")
    p = chroot.run(suite, "xargs -a /build/strip.list strip --strip-debug", binds, log=log, timeout=600)
    if p.returncode != 0:
        raise HarnessError(f"strip failed (log {log}): {(p.stdout + p.stderr)[-1500:]}")


def _pack(dest: Path, out: Path) -> None:
    """Only /usr: the bed's /etc (logging, qemu.conf) and /var stay as the image made them."""
    tmp = out.with_suffix(".part")
    with tarfile.open(tmp, "w:gz", compresslevel=3) as t:
        for top in ["usr"]:
            t.add(dest / top, arcname=top, filter=lambda ti: None if any(
                s in ti.name for s in ("usr/share/doc", "usr/share/man", "usr/include", "/pkgconfig")) else ti)
    tmp.replace(out)
