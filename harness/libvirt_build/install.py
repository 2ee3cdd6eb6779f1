"""Install a build into a running bed, and prove which build the running daemon is.

Install: copy the DESTDIR tarball over SSH (a whole one is kept in the bed, BED_CACHE), unpack over /, ldconfig, re-exec virtlogd, restart libvirtd,
wait until it answers. Proof (`installed_build`): the marker file, sha256 of the files libvirtd has
mapped (/proc/PID/maps) against the build's own list, and, when a domain log exists, its
"libvirt version: ..., package: hx-<id>" line.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from harness.bed import launcher
from harness.errors import HarnessError
from harness.libvirt_build.build import MANIFEST, MARKER, Build
from harness.progress import say

REMOTE_TAR = "/var/tmp/hx-libvirt-build.tar.gz"
STOCK = "stock"
#: Whole builds kept in the bed, unpacked from gzip, by build id and tarball digest. Why: each upgrade
#: scenario installs the same target into a bed running Debian's packages (no manifest, so no delta): over
#: SSH into a TCG bed that copy took 2.2 s and the gunzip 1 s every time, for 11 MB. The newest KEEP stay.
BED_CACHE = "/var/tmp/hx-builds"
BED_CACHE_KEEP = 3


def _ssh(bed, cmd: str, timeout: float = 120, stdin: str | None = None) -> subprocess.CompletedProcess:
    """One command in the bed; a timeout says so, with the bed kernel's complaint when its console has one."""
    try:
        return bed.ssh(cmd, timeout=timeout, input=stdin)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"bed {bed.name}: '{cmd[:60]}' timed out after {timeout:.0f} s",
                           hint=launcher.kernel_trouble(bed) or None) from None


def restart_sh(wait_s: int) -> str:
    """Bed-side shell that starts libvirtd on the files just put in place (a build, or the original restored):
    the linker cache and systemd's units first (a target made of another suite's packages brings its own unit
    files), the log and lock daemons reloaded, then libvirtd, waited for up to `wait_s` seconds."""
    return ("ldconfig; systemctl daemon-reload; "
            "systemctl reload virtlogd.service 2>/dev/null || systemctl restart virtlogd.service || true; "
            "systemctl try-reload-or-restart virtlockd.service 2>/dev/null || true; "
            "systemctl reset-failed libvirtd.service 2>/dev/null || true; systemctl start libvirtd.service; "
            + launcher.libvirtd_wait_sh(wait_s))


def install(bed, build: Build, timeout: float = 180) -> dict:
    """Put `build` into the running bed and restart the daemons. Returns timings, and under "running" the
    proof's verdict (id, verified) that callers would otherwise read again at the bed's cost."""
    t0 = time.monotonic()
    tar, sent = _delta(bed, Path(build.tarball))
    whole = tar == Path(build.tarball)
    cached = f"{BED_CACHE}/{build.id}-{_digest(tar)}.tar" if whole else None
    have = cached is not None and _ssh(bed, f"test -f {cached} && touch {cached}", timeout=60).returncode == 0
    try:
        if not have:
            with open(tar, "rb") as f:
                p = subprocess.run(bed.ssh_argv(f"cat > {REMOTE_TAR}"), stdin=f, capture_output=True,
                                   timeout=timeout)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"bed {bed.name}: copying the build ({tar.stat().st_size >> 20} MiB) timed out "
                           f"after {timeout:.0f} s", hint=launcher.kernel_trouble(bed) or None) from None
    finally:    # the delta tarball is ours to remove, also when the copy timed out
        if not whole:
            tar.unlink(missing_ok=True)
    if not have and p.returncode != 0:
        raise HarnessError(f"bed {bed.name}: copying the build failed: {p.stderr.decode()[-500:]}")
    t1 = time.monotonic()
    if cached is None:
        keep, unpack = "", f"tar -xzf {REMOTE_TAR} -C / --no-same-owner --keep-directory-symlink; rm -f {REMOTE_TAR}; "
    else:           # unzipped into the bed's keep while libvirtd still runs
        keep = "" if have else (
            f"mkdir -p {BED_CACHE}; gzip -dc {REMOTE_TAR} > {cached}.part || {{ rm -f {cached}.part {REMOTE_TAR}; exit 1; }}; mv {cached}.part {cached}; "
            f"rm -f {REMOTE_TAR}; ls -t {BED_CACHE}/*.tar | tail -n +{BED_CACHE_KEEP + 1} | xargs -r rm -f; ")
        unpack = f"tar -xf {cached} -C / --no-same-owner --keep-directory-symlink; "
    script = (
        # running test domains would be left to a daemon that no longer knows their binary: the harness sweeps
        # hx-* leftovers itself; here only stop the daemon, unpack, start again.
        "set -e; " + keep + "systemctl stop libvirtd.service 2>/dev/null || true; " + unpack + restart_sh(60))
    p = _ssh(bed, script, timeout=timeout)
    if p.returncode != 0:
        raise HarnessError(f"bed {bed.name}: libvirtd did not come back after installing build {build.id}:\n"
                           f"{(p.stdout + p.stderr)[-2000:]}")
    t2 = time.monotonic()
    got = installed_build(bed)
    if got.get("id") != build.id or not got.get("verified"):
        raise HarnessError(f"bed {bed.name}: the running libvirtd is not build {build.id}: {json.dumps(got)[:1500]}")
    secs = {"copy": round(t1 - t0, 1), "unpack_restart": round(t2 - t1, 1), "total": round(time.monotonic() - t0, 1),
            "files_sent": 0 if have else sent, "kept_in_bed": have,
            "running": {"id": got.get("id"), "verified": got.get("verified")}}
    say(f"bed {bed.name}: build {build.id} installed and running ({secs['total']} s)")
    return secs


def _digest(path: Path) -> str:
    """The first 16 hex digits of the tarball's sha256: a rebuilt build of the same id is another file."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _delta(bed, full: Path) -> tuple[Path, int]:
    """A tarball of only the files that differ from what the bed has (by the manifest the last install left).

    Falls back to the full tarball when the bed has no manifest (stock packages) or anything is unclear.
    """
    import tarfile
    import tempfile
    try:
        p = bed.ssh(f"cat /{MANIFEST} 2>/dev/null", timeout=60)
        have = json.loads(p.stdout) if p.returncode == 0 and p.stdout.strip() else None
    except (subprocess.SubprocessError, ValueError):
        have = None
    with tarfile.open(full, "r:gz") as src:
        members = src.getmembers()
        if have is None:
            return full, sum(1 for m in members if m.isfile())
        try:
            want = json.loads(src.extractfile(MANIFEST).read())
        except (KeyError, ValueError, AttributeError):
            return full, sum(1 for m in members if m.isfile())
        fd, name = tempfile.mkstemp(suffix=".tar.gz", prefix="hx-delta-")
        os.close(fd)
        sent = 0
        with tarfile.open(name, "w:gz", compresslevel=3) as dst:
            for m in members:
                path = "/" + m.name
                if m.isfile():
                    if path in want and have.get(path) == want[path] and not m.name.startswith("usr/lib/libvirt/hx-"):
                        continue
                    dst.addfile(m, src.extractfile(m))
                    sent += 1
                elif not m.isdir():
                    dst.addfile(m)          # symlinks: cheap, always
        return Path(name), sent


def installed_build(bed) -> dict:
    """Which build the bed runs: {id, verified, mismatches, daemon_pid, domain_log_package}.

    id is "stock" when no marker is present (Debian's packages). verified means every file the running
    libvirtd has mapped that the build lists has the build's sha256.
    """
    script = r"""
M=/%s; J=$(dirname $M)/hx-build.json
PID=$(systemctl show -p MainPID --value libvirtd.service 2>/dev/null); [ "$PID" != 0 ] || PID=$(pidof libvirtd || true)
echo "ID=$(cat $M 2>/dev/null || echo stock)"; echo "PID=$PID"
if [ -n "$PID" ] && [ -e /proc/$PID/exe ]; then
  for f in $(readlink -f /proc/$PID/exe) $(grep -o '/usr/[^ ]*' /proc/$PID/maps | sort -u | grep -i virt); do
    case "$f" in *" (deleted)") echo "DELETED $f";; *) echo "SUM $(sha256sum "$f")";; esac
  done
  grep -q '(deleted)' /proc/$PID/maps && echo "STALE yes"
fi
L=$(ls -t /var/log/libvirt/qemu/*.log 2>/dev/null | head -1)
[ -n "$L" ] && echo "LOG $L $(grep -o 'libvirt version: [^,]*, package: [^)]*)\?' "$L" | tail -1)"
[ -f $J ] && echo "JSON $(tr -d '\n' < $J)"
""" % MARKER
    p = _ssh(bed, script, timeout=60)
    out = {"id": None, "verified": False, "mismatches": [], "daemon_pid": None, "domain_log_package": None,
           "checked_files": 0}
    listed = {}
    sums = {}
    for line in p.stdout.splitlines():
        if line.startswith("ID="):
            out["id"] = line[3:].strip()
        elif line.startswith("PID="):
            out["daemon_pid"] = line[4:].strip() or None
        elif line.startswith("SUM "):
            parts = line.split()
            if len(parts) == 3:
                sums[parts[2]] = parts[1]
        elif line.startswith("STALE"):
            out["mismatches"].append("libvirtd maps deleted files (restarted before install finished?)")
        elif line.startswith("LOG "):
            _, path, *rest = line.split(" ", 2)
            out["domain_log"] = path
            out["domain_log_package"] = (rest[0].strip() if rest else "") or None
        elif line.startswith("JSON "):
            try:
                listed = json.loads(line[5:]).get("sha256", {})
            except ValueError:
                out["mismatches"].append("hx-build.json unreadable")
    # the newest domain log may predate this build (no domain started since the install): say so
    out["domain_log_names_build"] = bool(out["id"] and out["domain_log_package"]
                                         and f"hx-{out['id']}" in out["domain_log_package"])
    if out["id"] == STOCK or not out["daemon_pid"]:
        return out
    for f, s in sums.items():
        if f in listed:
            out["checked_files"] += 1
            if listed[f] != s:
                out["mismatches"].append(f"{f}: sha256 {s[:12]} != build's {listed[f][:12]}")
        elif "/libvirt" in f and (".so" in f or f.endswith("/libvirtd")):
            # a libvirt library or driver the build does not have: the daemon mixes in another libvirt
            out["mismatches"].append(f"{f}: mapped by libvirtd but not part of the build")
    exe_ok = any(f.endswith("/sbin/libvirtd") for f in sums if f in listed)
    if not exe_ok:
        out["mismatches"].append("libvirtd binary is not the build's")
    out["verified"] = not out["mismatches"] and out["checked_files"] >= 2
    return out
