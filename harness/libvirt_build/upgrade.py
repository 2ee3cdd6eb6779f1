"""Replace the bed's libvirt while domains run (the `upgrade-libvirt` step), and put the original back.

Why a backup in the bed rather than "install the old build again": the bed may run Debian's packages (no
tarball of them exists), a harness build, or a mutant; and an upgrade target may bring files the original
never had (sid's libxml2.so.16, newer libnl). Before anything is installed, every path the target's tarball
writes and this scenario has not yet covered is saved (tar) or noted as absent, in STATE in the bed. Restoring
stops libvirtd, deletes what was absent, unpacks the saved files, restarts the daemons and proves the
original runs again (install.installed_build: same id; sha256 of what libvirtd maps for a harness build).
STATE doubles as a journal: a run that died mid-upgrade leaves it behind, and the next upgrade (or
`restore`) puts the original back first.

Targets (`to:`): `next` (the next Debian suite's libvirt: bookworm -> trixie, trixie -> sid), a suite name,
a `harness libvirt build` id, or `original` (rollback: the libvirt the bed ran before the scenario's first
upgrade). `via:` source (Debian's source of that suite built in the bed suite's chroot), packages (that
suite's binary packages, packages.py) or auto (source when the mirror has it, else packages; the record
says which and why).

Mutants: a target built from source carries the mutant patches of the build the bed ran before the first
upgrade (NAME.<target version>.patch when present, else NAME.patch); binary packages carry none.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import time

from harness.errors import HarnessError, InfrastructureError
from harness.libvirt_build import build as build_mod
from harness.libvirt_build import install as install_mod
from harness.libvirt_build import mutants as mutants_mod
from harness.libvirt_build import packages, source
from harness.progress import say

STATE = "/var/lib/hx-upgrade"
NEXT = {"bookworm": "trixie", "trixie": "sid"}
SUITES = ("bookworm", "trixie", "sid")
BUILD_ID = re.compile(r"^[0-9a-f]{18}$")
VIAS = ("auto", "source", "packages")
#: Where libvirtd loads every module it finds: a module of another version in them stops the daemon.
MODULE_DIRS = tuple(f"/usr/lib/x86_64-linux-gnu/libvirt/{d}" for d in
                    ("connection-driver", "storage-backend", "storage-file", "lock-driver"))


def target_suite(bed_suite: str, to: str) -> str | None:
    """The suite `to` names for a bed of `bed_suite` (None: no such suite, e.g. `next` on sid)."""
    if to == "next":
        return NEXT.get(bed_suite)
    return to if to in SUITES else None


def unmet(bed_suite: str, spec: dict) -> str | None:
    """Why a step cannot apply to a bed of this suite (the runner skips the scenario, with this reason)."""
    to = spec.get("to")
    if to == "next" and bed_suite not in NEXT:
        return f"upgrade-libvirt to: next: Debian has no suite newer than {bed_suite} to upgrade to"
    return None


def _carried_patches(original_id: str | None, target_version: str) -> tuple[list, list[str]]:
    """The original build's mutant patches, as their variants for the target version."""
    try:
        orig = build_mod.load(original_id) if original_id and BUILD_ID.match(original_id) else None
    except HarnessError:
        orig = None
    if not orig or not orig.patches:
        return [], []
    variants = mutants_mod.mutant_patches(target_version)
    out, names = [], []
    for p in orig.patches:
        name = mutants_mod.VARIANT.sub(r"\g<name>", p.rsplit("/", 1)[-1])
        name = name[:-len(".patch")] if name.endswith(".patch") else name
        if name not in variants:
            raise HarnessError(f"mutant {name} has no patch for libvirt {target_version} in {mutants_mod.MUTANTS_DIR}")
        out.append(variants[name])
        names.append(name)
    return out, names


#: resolve()'s answers in this process: (bed, its suite, target, version, via, original) -> (build, info). Why:
#: finding a suite's target reads the mirror (signed InRelease, Sources.xz, the orig tarball or apt's plan):
#: ~6 s each time, the same answer for every upgrade scenario of a run.
_RESOLVED: dict[tuple, tuple[build_mod.Build, dict]] = {}


def resolve(bed, spec: dict, original_id: str | None) -> tuple[build_mod.Build | None, dict]:
    """The build `spec` names for this bed (None for `original`) and how it was made (once per process)."""
    if spec.get("to") == "original":
        return None, {"to": "original"}
    key = (bed.name, bed.suite, str(spec.get("to")), spec.get("version"), spec.get("via", "auto"), original_id)
    if key not in _RESOLVED:
        _RESOLVED[key] = _resolve(bed, spec, original_id)
    b, info = _RESOLVED[key]
    return b, json.loads(json.dumps(info))       # the caller adds to its copy


def _resolve(bed, spec: dict, original_id: str | None) -> tuple[build_mod.Build, dict]:
    to, via = spec.get("to"), spec.get("via", "auto")
    if isinstance(to, str) and BUILD_ID.match(to):
        return build_mod.load(to), {"to": to, "via": "build"}
    suite = target_suite(bed.suite, to)
    if suite is None:
        raise HarnessError(f"upgrade-libvirt: no target suite for to: {to} on a {bed.suite} bed")
    info = {"to": to, "suite": suite}
    if via in ("auto", "source"):
        try:
            fetched = source.fetch(suite, spec.get("version"))
        except HarnessError as e:
            if via == "source":
                raise HarnessError(f"upgrade-libvirt: {suite}'s libvirt source cannot be had: {e.message}",
                                   hint="via: packages takes the suite's binary packages instead") from None
            info["source_missing"] = e.message
            say(f"upgrade-libvirt: {suite}'s source is not available ({e.message}); using its binary packages")
        else:
            patches, names = _carried_patches(original_id, fetched["upstream"])
            info.update(via="source", debian_version=fetched["version"], mutants=names)
            b = build_mod.build(bed.suite, source_suite=suite, debian_version=spec.get("version"), patches=patches)
            return b, info
    b = packages.pack(bed, suite)
    info.update(via="packages", pulled=json.loads(b.log or "{}").get("pulled", []))
    try:
        orig = build_mod.load(original_id) if original_id and BUILD_ID.match(original_id) else None
    except HarnessError:
        orig = None
    if orig is not None and orig.patches:
        info["mutants"] = "not carried: binary packages cannot be patched"
    return b, info


def _ssh(bed, cmd: str, timeout: float = 300, stdin: str | None = None) -> subprocess.CompletedProcess:
    return install_mod._ssh(bed, cmd, timeout=timeout, stdin=stdin)


def state(bed) -> dict | None:
    """The bed's upgrade journal (original build id, owner) or None when the bed runs its original."""
    p = _ssh(bed, f"cat {STATE}/original.json 2>/dev/null", timeout=60)
    try:
        return json.loads(p.stdout) if p.stdout.strip() else None
    except ValueError:
        return {"id": None, "broken": p.stdout[:200]}


def begin(bed, owner: str) -> tuple[dict, str | None]:
    """Note the original before the first upgrade; restore first what a dead run left upgraded. Returns the
    journal and, when this call proved which build runs (a series' first upgrade), that build's id."""
    running = None
    st = state(bed)
    if st is not None and st.get("owner") != owner:
        say(f"bed {bed.name}: an earlier run ({st.get('owner')}) left libvirt upgraded; restoring its original",
            warn=True)
        restore(bed)
        st = None
    if st is None:
        proof = install_mod.installed_build(bed)
        running = proof.get("id")
        st = {"id": running, "owner": owner, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if st["id"] == install_mod.STOCK:
            st["dpkg_v"] = _dpkg_v(bed)
        p = _ssh(bed, f"mkdir -p {STATE} && cat > {STATE}/original.json", stdin=json.dumps(st), timeout=60)
        if p.returncode != 0:
            raise HarnessError(f"bed {bed.name}: cannot write {STATE}: {p.stderr.strip()[-300:]}")
    return st, running


def _backup(bed, b: build_mod.Build) -> None:
    """Save (or note as absent) every path the tarball writes that this upgrade series has not yet covered."""
    import tarfile
    with tarfile.open(b.tarball, "r:gz") as t:
        members = t.getmembers()
    paths = sorted("/" + m.name for m in members if m.isfile() or m.issym())
    # directories a packages target ships under /var (packages._var_dirs): made when missing (as dpkg would),
    # noted, and removed again on restore
    try:
        var_dirs = json.loads(b.log or "{}").get("var_dirs", [])
    except ValueError:
        var_dirs = []
    new_dirs = " ".join(shlex.quote(d) for d in var_dirs if d.startswith("/var/"))
    script = (f"set -e; S={STATE}; touch $S/covered.list $S/absent.list; sort -u > $S/new.list; "
              "sort -u $S/covered.list > $S/c.sorted; comm -23 $S/new.list $S/c.sorted > $S/todo.list; : > $S/exist.list; "
              "while IFS= read -r f; do if [ -e \"$f\" ] || [ -L \"$f\" ]; then echo \"${f#/}\" >> $S/exist.list; "
              "else echo \"$f\" >> $S/absent.list; fi; done < $S/todo.list; "
              "if [ -s $S/exist.list ]; then tar -C / -rf $S/backup.tar --no-recursion -T $S/exist.list; fi; "
              "cat $S/todo.list >> $S/covered.list; "
              # Driver modules the running libvirt has and the target does not bring (a harness build has
              # libvirt_driver_interface.so, the bed's Debian packages do not): the target's daemon would load
              # them and stop ("version LIBVIRT_PRIVATE_11.3.0 not found"). Saved like the rest, then set aside.
              f"for d in {' '.join(MODULE_DIRS)}; do [ -d \"$d\" ] && find \"$d\" -maxdepth 1 -name '*.so' "
              "\\( -type f -o -type l \\); done | sort -u > $S/mods.list; comm -23 $S/mods.list $S/new.list > $S/extra.list; "
              "comm -23 $S/extra.list $S/c.sorted | sed 's|^/||' > $S/extra.todo; "
              "if [ -s $S/extra.todo ]; then tar -C / -rf $S/backup.tar --no-recursion -T $S/extra.todo; "
              "sed 's|^|/|' $S/extra.todo >> $S/covered.list; fi; xargs -r -d '\\n' -a $S/extra.list rm -f --; "
              f"for d in {new_dirs}; do [ -d \"$d\" ] || {{ echo \"$d\" >> $S/absent-dirs.list; mkdir -m 0755 \"$d\"; }}; done; "
              "wc -l < $S/todo.list")
    p = _ssh(bed, script, stdin="\n".join(paths) + "\n", timeout=600)
    if p.returncode != 0:
        raise HarnessError(f"bed {bed.name}: backing up the original libvirt failed: {p.stderr.strip()[-800:]}")


def upgrade(bed, spec: dict, owner: str) -> dict:
    """Install what `spec` names (or restore the original), restart, prove. Returns the step's record."""
    t0 = time.monotonic()
    st, running = begin(bed, owner)
    before = running or install_mod.installed_build(bed).get("id")
    try:
        b, info = resolve(bed, spec, st.get("id"))
    except InfrastructureError:
        raise
    except HarnessError as e:   # the mirror, apt or a build failed: no answer of the bed's libvirt, so no verdict
        raise InfrastructureError(f"upgrade-libvirt: the target {spec.get('to')!r} cannot be had: {e.message}",
                                  hint=e.hint) from None
    t1 = time.monotonic()
    if b is None:
        proof = restore(bed, keep_state=True)
    else:
        _backup(bed, b)
        secs = install_mod.install(bed, b)
        proof = secs["running"]
        info["kept_in_bed"] = secs["kept_in_bed"]      # a whole build copied into this bed before
    info.update(before=before, after=proof.get("id"), verified=proof.get("verified"), original=st.get("id"),
                version=b.version if b else None,
                seconds={"resolve_build": round(t1 - t0, 1), "install": round(time.monotonic() - t1, 1)})
    say(f"bed {bed.name}: libvirt {before} -> {proof.get('id')} ({info.get('via', 'original')}, "
        f"{info['seconds']})")
    return info


def restore(bed, keep_state: bool = False) -> dict:
    """Put the bed's original libvirt back (no-op when it runs it) and prove it. Returns the proof."""
    st = state(bed)
    if st is None:
        return install_mod.installed_build(bed)
    script = (f"set -e; S={STATE}; [ -f $S/covered.list ] || exit 0; systemctl stop libvirtd.service 2>/dev/null || true; "
              "[ -f $S/absent.list ] && xargs -r -d '\\n' -a $S/absent.list rm -f --; "
              "[ -f $S/backup.tar ] && tar -C / -xpf $S/backup.tar; "
              "[ -f $S/absent-dirs.list ] && sort -r $S/absent-dirs.list | xargs -r -d '\\n' rmdir --ignore-fail-on-non-empty --; "
              + install_mod.restart_sh(90))
    p = _ssh(bed, script, timeout=300)
    if p.returncode != 0:
        raise HarnessError(f"bed {bed.name}: restoring the original libvirt failed (state kept in {STATE}):\n"
                           f"{(p.stdout + p.stderr)[-1500:]}")
    proof = install_mod.installed_build(bed)
    want = st.get("id")
    if proof.get("id") != want or (want not in (None, install_mod.STOCK) and not proof.get("verified")):
        raise HarnessError(f"bed {bed.name}: after the restore libvirtd is {proof.get('id')} "
                           f"(verified {proof.get('verified')}), not the original {want}: {proof.get('mismatches')}")
    if want == install_mod.STOCK:
        # Debian's files again, by dpkg's own md5sums of the libvirt packages
        bad = sorted(set(_dpkg_v(bed)) - set(st.get("dpkg_v", [])))
        if bad:
            raise HarnessError(f"bed {bed.name}: after the restore dpkg -V reports changed libvirt files: {bad[:5]}")
        proof["dpkg_verified"] = True
    if keep_state:
        # a rollback mid-scenario: the saved originals stay (a later upgrade need not save them again)
        _ssh(bed, f"cd {STATE} && rm -f absent.list absent-dirs.list backup.tar covered.list", timeout=60)
    else:
        _ssh(bed, f"rm -rf {shlex.quote(STATE)}", timeout=60)
    say(f"bed {bed.name}: original libvirt {want} restored and running")
    return proof


def _dpkg_v(bed) -> list[str]:
    """dpkg -V of the bed's libvirt packages, /etc left out (the bed's set-up edits its configuration)."""
    v = _ssh(bed, "dpkg -V $(dpkg-query -W -f '${source:Package} ${Package}\\n' | awk '$1==\"libvirt\"{print $2}')",
             timeout=120)
    return sorted(line for line in v.stdout.splitlines() if line.strip() and " /etc/" not in line)
