"""An upgrade target made of another suite's binary packages, packed like a build (marker, manifest, sha256).

Why: the mirror does not serve every suite's source (sid's libvirt_12.8.0.orig.tar.xz answers 404 while its
binary packages are there), and installing through dpkg would drag in that suite's libc (sid's libvirt0
depends on libcurl4-gnutls, which needs libc6 2.43; trixie has 2.41). So the target suite's libvirt packages
that the bed has installed are downloaded with apt (hashes checked against the signed index), together with
the libraries their Depends ask for that the bed cannot satisfy, unpacked, and turned into the same kind of
tarball `build.py` makes: install.py puts it in and proves it runs; upgrade.py can put the bed back.

A dependency the bed cannot satisfy and that would need the target's libc is left out when every shared
library the unpacked files need (ELF NEEDED) is in the bed or in the pack; it is named in the build's notes.
A library that is in neither is an error naming the package and the library.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

from filelock import FileLock

from harness.bed import image
from harness.errors import HarnessError
from harness.libvirt_build import build as build_mod
from harness.libvirt_build import source
from harness.libvirt_build.cache import sub
from harness.progress import say

KEYRING = source.KEYRING
RECIPE = 4      # 3: the log lists the packages' directories under /var/lib and /var/cache (var_dirs)


def bed_packages(bed) -> tuple[dict[str, str], set[str], dict[str, str]]:
    """(installed name -> version, names provided, name -> source package) from the bed's dpkg status."""
    p = bed.ssh("dpkg-query -W -f '${db:Status-Abbrev}|${Package}|${Version}|${Provides}|${source:Package}\\n'",
                timeout=60)
    if p.returncode != 0:
        raise HarnessError(f"bed {bed.name}: dpkg-query failed: {p.stderr.strip()[-500:]}")
    inst, provides, src = {}, set(), {}
    for line in p.stdout.splitlines():
        st, name, ver, prov, source_pkg = (line.split("|") + [""] * 5)[:5]
        if not st.startswith("ii"):
            continue
        name = name.split(":")[0]
        inst[name], src[name] = ver, source_pkg
        for pr in prov.split(","):
            if pr.strip():
                provides.add(pr.strip().split()[0])
    return inst, provides, src


class Apt:
    """apt on the host with its own state dir: only the target suite in its sources."""

    def __init__(self, suite: str):
        self.suite = suite
        self._shown: dict[str, dict | None] = {}
        self.root = sub("apt", suite)
        #: held from `apt-get update` to the last read: another worker's update rewrites the lists under a
        #: running `apt-cache show`, which then found no libvirt-clients in sid (a catalog run, 2026-12-06)
        self.lock = FileLock(str(self.root) + ".lock")
        for d in ("etc/apt/preferences.d", "var/lib/apt/lists/partial", "var/cache/apt/archives/partial"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "status").touch()
        (self.root / "etc/apt/sources.list").write_text(
            f"deb [signed-by={KEYRING}] {source.mirror()} {suite} main\n")
        self.opts = [f"-oDir={self.root}", f"-oDir::State::status={self.root}/status", "-oAPT::Architecture=amd64",
                     "-oDir::Etc::trusted=/dev/null", f"-oDir::Etc::trustedparts={self.root}/etc/apt/trusted.gpg.d",
                     f"-oDir::Etc::preferencesparts={self.root}/etc/apt/preferences.d", "-oAcquire::Retries=3",
                     *("-o" + o.replace(' "', "=").rstrip('"') for o in image.APT_OPTIONS.get(suite, []))]

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 600) -> str:
        p = subprocess.run([args[0], *self.opts, *args[1:]], capture_output=True, text=True, cwd=cwd,
                           timeout=timeout)
        if p.returncode != 0:
            raise HarnessError(f"{' '.join(args[:3])} ({self.suite}) failed: {(p.stderr or p.stdout).strip()[-1200:]}")
        return p.stdout

    def update(self) -> None:
        with self.lock:
            self.run("apt-get", "update", "-q")

    def show(self, name: str) -> dict | None:
        if name in self._shown:
            return self._shown[name]
        self._shown[name] = self._show(name)
        return self._shown[name]

    def index_hash(self) -> str:
        """Names the index apt has now (a new sid upload gives a new plan)."""
        h = hashlib.sha256()
        for f in sorted((self.root / "var/lib/apt/lists").glob("*Release")):
            h.update(f.read_bytes())
        return h.hexdigest()[:16]

    def _show(self, name: str) -> dict | None:
        try:
            out = self.run("apt-cache", "show", "--no-all-versions", name)
        except HarnessError as e:
            if "No packages found" in e.message:
                return None
            raise                    # not "no such package": apt itself failed, and says how
        fields, key = {}, None
        for line in out.split("\n\n")[0].splitlines():
            if line.startswith(" ") and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, val = line.partition(":")
                fields[key] = val.strip()
        return fields or None


def _satisfied(clause: str, inst: dict[str, str], provides: set[str]) -> bool:
    """One Depends clause (alternatives with |) against the bed's installed packages."""
    for alt in clause.split("|"):
        m = re.match(r"\s*([^\s(:]+)(?::\S+)?\s*(?:\((\S+)\s+([^)]+)\))?", alt)
        if not m:
            continue
        name, op, ver = m.groups()
        if name in inst and (not op or subprocess.run(["dpkg", "--compare-versions", inst[name], op, ver]).returncode == 0):
            return True
        if not op and name in provides:
            return True
    return False


def _depends(fields: dict) -> list[str]:
    return [c.strip() for key in ("Pre-Depends", "Depends") for c in fields.get(key, "").split(",") if c.strip()]


def plan(bed, suite: str) -> dict:
    """Which packages of `suite` make its libvirt for this bed: {packages: {name: version}, pulled: [...]}."""
    inst, provides, src = bed_packages(bed)
    mine = sorted(n for n, s in src.items() if s == "libvirt")
    if not mine:
        raise HarnessError(f"bed {bed.name} has no libvirt packages installed")
    apt = Apt(suite)
    with apt.lock:
        apt.update()
        cache = sub("apt") / ("plan-" + hashlib.sha256(json.dumps(
            [RECIPE, suite, apt.index_hash(), sorted(inst.items()), sorted(provides)]).encode()).hexdigest()[:16]
            + ".json")
        if cache.exists():
            return json.loads(cache.read_text())
        out = _closure(apt, bed, suite, mine, inst, provides)
        cache.write_text(json.dumps(out, indent=1))
    return out


def _closure(apt: Apt, bed, suite: str, mine: list[str], inst: dict[str, str], provides: set[str]) -> dict:
    """The packages of `suite` that replace the bed's libvirt packages `mine`, with what they need that the
    bed lacks or has too old."""
    want, pulled = {}, []
    todo = list(mine)
    while todo:
        name = todo.pop(0)
        if name in want:
            continue
        f = apt.show(name)
        if f is None:
            raise HarnessError(f"{suite} has no package {name} (installed in bed {bed.name})")
        want[name] = f["Version"]
        for clause in _depends(f):
            first = re.match(r"\s*([^\s(|:]+)", clause).group(1)
            if first in want or first in todo or _satisfied(clause, inst, provides):
                continue
            dep = apt.show(first)
            if dep is None:
                raise HarnessError(f"{suite}'s {name} {f['Version']} needs '{clause}': neither bed {bed.name} nor "
                                   f"{suite} has it")
            # the whole closure: a library linked by symbol version (sid's libcurl-gnutls.so.4 has
            # CURL_GNUTLS_4, trixie's does not) must come from the target suite, and so must what it needs
            todo.append(first)
            if not first.startswith("libvirt"):
                pulled.append(f"{first} {dep['Version']} (for {name}: {clause})")
    return {"packages": want, "pulled": pulled, "installed": {n: inst[n] for n in mine}}


def pack(bed, suite: str, timeout: float = 1800) -> build_mod.Build:
    """The target suite's libvirt as a packed build for this bed (cached by the exact package versions)."""
    t0 = time.monotonic()
    pl = plan(bed, suite)
    t_plan = time.monotonic() - t0
    key = json.dumps([RECIPE, build_mod.PACK_VERSION, suite, sorted(pl["packages"].items())])
    bid = hashlib.sha256(key.encode()).hexdigest()[: len(build_mod.PLACEHOLDER) - 3]
    outd = sub("out")
    meta = outd / f"{bid}.json"
    if meta.exists() and (outd / f"{bid}.tar.gz").exists():
        say(f"libvirt {suite} packages {bid}: already packed, reusing")
        return build_mod.Build(**json.loads(meta.read_text()))
    debs = sub("downloads", "debs")
    work = sub("pkgbuild") / bid
    with FileLock(str(work) + ".lock"):
        apt = Apt(suite)
        say(f"libvirt {suite} packages {bid}: downloading {len(pl['packages'])} packages")
        with apt.lock:
            apt.run("apt-get", "download", "-q", *(f"{n}={v}" for n, v in sorted(pl["packages"].items())),
                    cwd=debs, timeout=timeout)
        t1 = time.monotonic()
        dest = work / "destdir"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for n, v in pl["packages"].items():
            deb = next(iter(sorted(debs.glob(f"{n}_{v.split(':')[-1]}_*.deb"))), None)
            if deb is None:
                raise HarnessError(f"apt-get download left no .deb for {n}={v} in {debs}")
            subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True, timeout=300)
        _check_needed(bed, dest, suite)
        version = pl["packages"].get("libvirt0", "?").split(":")[-1].rsplit("-", 1)[0]
        b = build_mod.Build(id=bid, suite=bed.suite, source=f"debian {suite} binary packages", build_dir=str(work),
                            tarball=str(outd / f"{bid}.tar.gz"), version=version,
                            patches=[], log=json.dumps({"pulled": pl["pulled"], "packages": pl["packages"],
                                                        "var_dirs": _var_dirs(dest)}))
        b.sha256 = build_mod._stamp(dest, bid)
        build_mod._pack(dest, Path(b.tarball))
        shutil.rmtree(dest, ignore_errors=True)
        b.seconds = {"plan": round(t_plan, 1), "download": round(t1 - t0 - t_plan, 1),
                     "unpack_pack": round(time.monotonic() - t1, 1), "total": round(time.monotonic() - t0, 1)}
        meta.write_text(json.dumps(asdict(b), indent=2))
    say(f"libvirt {suite} packages {bid}: libvirt {version} packed in {b.seconds['total']} s"
        + (f"; with {suite}'s {'; '.join(pl['pulled'])}" if pl["pulled"] else ""))
    return b


def _var_dirs(dest: Path) -> list[str]:
    """The directories the packages ship under /var/lib and /var/cache. Not packed (unpacking a directory
    entry would reset the owner and mode of one the bed has, e.g. /var/lib/libvirt/qemu); the upgrade creates
    those that are missing, as dpkg would: sid's virt-secret-init-encryption.service, which libvirtd.service
    needs, writes into /var/lib/libvirt/secrets."""
    return sorted("/" + str(d.relative_to(dest)) for base in ("var/lib", "var/cache")
                  for d in (dest / base).rglob("*") if d.is_dir() and not d.is_symlink())


def _check_needed(bed, dest: Path, suite: str) -> None:
    """Every shared library an unpacked ELF file needs is in the pack or in the bed (ldconfig -p)."""
    have = {p.name for p in dest.rglob("*.so*")}
    p = bed.ssh("ldconfig -p", timeout=60)
    have |= {line.split()[0] for line in p.stdout.splitlines()[1:] if line.strip()}
    missing: dict[str, set[str]] = {}
    for f in dest.rglob("*"):
        if not f.is_file() or f.is_symlink():
            continue
        with open(f, "rb") as fh:
            if fh.read(4) != b"\x7fELF":
                continue
        out = subprocess.run(["readelf", "-d", str(f)], capture_output=True, text=True).stdout
        for lib in re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out):
            if lib not in have:
                missing.setdefault(lib, set()).add(str(f.relative_to(dest)))
    if missing:
        raise HarnessError(f"{suite}'s libvirt packages need shared libraries bed {bed.name} lacks: "
                           + "; ".join(f"{lib} (for {', '.join(sorted(fs)[:3])})" for lib, fs in sorted(missing.items())),
                           hint="the dependency that would provide it needs a newer libc than the bed's suite")
