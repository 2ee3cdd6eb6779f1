"""The template store: what a template is keyed by, where it lives, when it is usable, and pruning.

Why a module of its own: the key and the store are pure bookkeeping (file names, digests, modes,
locks) that harness/bed/template.py's capture and restore, `harness bed status` and the benchmarks
read without touching a VM.

Layout: <cache>/templates/<key>/ (0700): disk.qcow2 and state.mig (0444), id_ed25519 (the template's
client key, 0600), host_ed25519.pub (the origin bed's host key, pinned for the one login), meta.json,
last-used. The key is the image key + a digest of the hardware command line, the QEMU binary and the
image's identity, so another configuration, another QEMU or a rebuilt image never restores a mismatched
state. At most MAX_TEMPLATES are kept.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from harness import paths
from harness.bed import image as image_mod
from harness.bed import qemu
from harness.bed.image import Image
from harness.bed.state import MEMORY_MIB, BedInfo
from harness.errors import HarnessError
from harness.progress import say

FORMAT = 2
#: templates kept at most (least recently used go first); each is ~0.5 GB of RAM state + its disk
MAX_TEMPLATES = 4


class TemplateError(HarnessError):
    """A template could not be used; the caller cold-boots instead and, if `broken`, discards it."""
    broken = True


class TemplateBusy(TemplateError):
    """Not the template's fault (its lock held too long by a process saving or discarding it; QEMU did
    not start at all, which a cold boot would meet too): it is kept."""
    broken = False


# ---- the key: what must match ------------------------------------------------------------------

def hardware_args(cmd: list[str], bed_dir: str, name: str, port: int) -> list[str]:
    """The QEMU command line with what is the bed's own (its folder, name, host port; -incoming) replaced
    by placeholders: what is left is hardware and must be equal between a template and a bed started
    from it. Files in the bed's folder (overlay, fw_cfg keys, sockets, logs) are per bed by design: the
    device state in the stream does not depend on their contents (fw_cfg files are read by the guest at
    boot; the bed's keys are installed over SSH after the restore). QEMU's log (-D) is not hardware either:
    templates saved before beds had one stay valid."""
    out: list[str] = []
    d = str(bed_dir).rstrip("/") + "/"
    prev = ""
    for a in cmd:
        if prev in ("-incoming", "-D"):     # -D: QEMU's own log, not hardware
            out.pop()
        elif prev == "-name" and a == f"hx-bed-{name}":
            out.append("hx-bed-{NAME}")
        else:
            a = a.replace(d, "{BED}/")
            if prev == "-netdev":
                a = re.sub(rf"(hostfwd=tcp:127\.0\.0\.1:){port}(-:22)", r"\g<1>{PORT}\g<2>", a)
            out.append(a)
        prev = a
    return out


def qemu_identity(binary: str = "qemu-system-x86_64") -> str:
    """The QEMU that would run the bed: version line + the binary's size and mtime (a rebuild counts)."""
    path = shutil.which(binary)
    if path is None:
        return "missing"
    st = os.stat(os.path.realpath(path))
    v = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()
    return f"{v[0] if v else '?'}|{st.st_size}|{st.st_mtime_ns}"


def image_identity(img: Image) -> dict:
    """What tells one build of an image from another of the same key (image build --force keeps the key)."""
    ident = {"key": img.key}
    try:
        ident["built"] = img.manifest.get("built")
    except (OSError, ValueError):
        ident["built"] = None
    for f in (img.disk, img.kernel, img.initrd):
        try:
            st = f.stat()
            ident[f.name] = [st.st_size, st.st_mtime_ns]
        except OSError:
            ident[f.name] = None
    return ident


def template_key(image_key: str, hw: list[str], qemu_id: str, image_id: dict) -> str:
    h = hashlib.sha256(json.dumps({"format": FORMAT, "hw": hw, "qemu": qemu_id, "image": image_id},
                                  sort_keys=True).encode()).hexdigest()
    return f"{image_key}-{h[:12]}"


def compatible(meta: dict, hw: list[str], qemu_id: str, image_id: dict) -> str | None:
    """None if a template with this meta can start a bed of this hardware, else why not."""
    if meta.get("format") != FORMAT:
        return f"template format {meta.get('format')} (this harness: {FORMAT})"
    if meta.get("qemu") != qemu_id:
        return f"made by another QEMU ({meta.get('qemu')!r}, now {qemu_id!r})"
    if meta.get("image") != image_id:
        return "the bed image changed since the template was made"
    if meta.get("hw") != hw:
        theirs, ours = meta.get("hw") or [], hw
        diff = [f"{a!r} != {b!r}" for a, b in zip(theirs, ours) if a != b][:3]
        return "the QEMU command line differs: " + ("; ".join(diff) or f"{len(theirs)} vs {len(ours)} arguments")
    return None


# ---- the store -----------------------------------------------------------------------------------

def templates_dir() -> Path:
    p = paths.cache_dir() / "templates"
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    return p


@paths.with_files(record="meta", disk="disk.qcow2", state="state.mig", client_key="id_ed25519",
                  host_pub="host_ed25519.pub")
@dataclass
class Template:
    key: str
    dir: Path


def lock(key: str) -> FileLock:
    return FileLock(str(templates_dir() / f"{key}.lock"))


def for_key(key: str) -> Template:
    return Template(key=key, dir=templates_dir() / key)


def key_for(bed: BedInfo, img: Image, cmd: list[str]) -> tuple[str, list[str], str, dict]:
    hw = hardware_args(cmd, str(bed.path), bed.name, bed.ssh_port)
    qid, iid = qemu_identity(cmd[0]), image_identity(img)
    return template_key(img.key, hw, qid, iid), hw, qid, iid


def for_hardware(img: Image, memory_mib: int = MEMORY_MIB, cpus: int = 2, vfs: int = 4, accel: str = "tcg") -> Template:
    """The template (ready or not) that a bed of these settings would use."""
    probe = BedInfo(name="hx-probe", suite=img.suite, via="qemu", dir=str(paths.beds_dir() / "hx-probe"),
                    ssh_port=1, memory_mib=memory_mib, cpus=cpus, vfs=vfs, accel=accel)
    cmd = qemu.command(probe, img, qemu.overlay_path(probe))
    return for_key(key_for(probe, img, cmd)[0])


def write_private(path: Path, data: bytes) -> None:
    """A secret file created 0600 from the start (no window with a wider mode, whatever the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def file_id(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns]


def usable(tpl: Template, hw: list[str], qemu_id: str, image_id: dict) -> str | None:
    """None if tpl can be restored for this hardware; else why not (then it is stale or damaged)."""
    try:
        meta = tpl.meta
    except (OSError, ValueError) as e:
        return f"unreadable meta.json ({e})"
    why = compatible(meta, hw, qemu_id, image_id)
    if why:
        return why
    for f, want in (("disk", meta.get("disk_id")), ("state", meta.get("state_id"))):
        try:
            if file_id(getattr(tpl, f)) != want:
                return f"{getattr(tpl, f).name} changed since the template was made"
        except OSError as e:
            return f"{getattr(tpl, f).name}: {e.strerror}"
    if not tpl.client_key.exists() or not tpl.host_pub.exists():
        return "its keys are missing"
    return None


def discard(tpl: Template, created: str | None = None, why: str = "") -> bool:
    """Remove a template (only the one made at `created`, if given: a fresh one made meanwhile stays).
    Beds started from it keep running: their QEMU holds the backing file open."""
    with lock(tpl.key):
        return discard_locked(tpl, created, why)


def discard_locked(tpl: Template, created: str | None = None, why: str = "") -> bool:
    if not tpl.dir.exists():
        return False
    if created is not None:
        try:
            if tpl.meta.get("created") != created:
                return False
        except (OSError, ValueError):
            pass
    trash = templates_dir() / f".trash-{tpl.key}-{os.getpid()}-{time.monotonic_ns()}"
    os.rename(tpl.dir, trash)
    shutil.rmtree(trash, ignore_errors=True)
    if why:
        say(f"template {tpl.key}: discarded ({why})")
    return True


def prune(keep: str | None = None) -> list[str]:
    """Drop templates of images that are gone or were rebuilt and those of another template format, then
    all but the MAX_TEMPLATES most recently used. Leftover staging and trash folders of dead processes go
    too."""
    root = templates_dir()
    gone = []
    for d in root.iterdir():
        if d.name.startswith((".tmp-", ".trash-")) and d.is_dir():
            pid = d.name.split("-")[-2] if d.name.startswith(".trash-") else d.name.split("-")[-1]
            if not (pid.isdigit() and os.path.exists(f"/proc/{pid}")):
                shutil.rmtree(d, ignore_errors=True)
    live = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        tpl = Template(key=d.name, dir=d)
        try:
            meta = tpl.meta
        except (OSError, ValueError):
            continue            # being made or damaged; the maker's lock decides
        iid = meta.get("image") or {}
        img_dir = paths.images_dir() / str(iid.get("key"))
        if meta.get("format") != FORMAT and d.name != keep:
            if discard(tpl, meta.get("created")):
                gone.append(f"{d.name} (made by another version of the harness)")
            continue
        if d.name == keep:
            live.append((time.time(), tpl))
            continue
        suite = meta.get("suite", "")
        if not (img_dir / "manifest.json").exists() or (
                suite in image_mod.SUITES and image_identity(Image(suite=suite, key=str(iid.get("key")),
                                                                   dir=img_dir)) != iid):
            if discard(tpl, meta.get("created")):
                gone.append(f"{d.name} (its image is gone or was rebuilt)")
            continue
        try:
            used = (d / "last-used").stat().st_mtime
        except OSError:
            used = tpl.meta_file.stat().st_mtime
        live.append((used, tpl))
    live.sort(key=lambda x: x[0], reverse=True)
    for _, tpl in live[MAX_TEMPLATES:]:
        if tpl.key != keep and discard(tpl):
            gone.append(f"{tpl.key} (least recently used; at most {MAX_TEMPLATES} are kept)")
    return gone

