"""Vagrant box for the bed: the cached bed image turned into a GRUB-bootable qcow2 for vagrant-libvirt.

Why this exists: vagrant-libvirt boots a disk, not a kernel + initrd, and no public box may be
downloaded here. So the box is made from the very same image the direct-QEMU bed boots (same
packages, same harness-bed-setup, same fw_cfg key hand-over), plus only what a disk boot and
Vagrant need:

* an MBR disk with one partition holding the image's ext4 root filesystem, GRUB (i386-pc) in the
  MBR gap and /boot/grub/grub.cfg with ``intel_iommu=on iommu=pt`` on the kernel command line;
* systemd-networkd doing DHCP on virtio NICs only (Vagrant's management NIC; the igb/e1000e
  NICs used for passthrough stay untouched), because vagrant-libvirt learns the guest address
  from its dnsmasq leases.

SSH user: ``root``. The box holds no key; each bed's client key and host key still come
through ``-fw_cfg name=opt/harness/...`` (passed by the Vagrantfile via ``lv.qemuargs``) and
are installed at boot by harness-bed-setup. Vagrant logs in with ``config.ssh.private_key_path``
= the per-bed key, ``insert_key = false``. sudo is in the image for vagrant-libvirt's own use.

Build steps follow the measured facts for these hosts (no MSDOS partition parsing in the host
kernel, grub-install refuses loop devices): ``losetup`` + ``partx -a``, mount, write GRUB files,
``grub-mkimage -O i386-pc`` + ``dd`` of boot.img/core.img, ``partx -d`` before ``losetup -d``.
Loop devices and mounts are released on every path, failure included.

The box is cached next to the image, keyed by the image key and this module's own digest, and
built only when missing: ``images/<image-key>-box-<recipe>/hx-<image-key>.box``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from filelock import FileLock

from harness.bed import image as image_mod
from harness.bed.image import Image
from harness.errors import HarnessError
from harness.progress import say

GRUB_DIR = Path("/usr/lib/grub/i386-pc")
#: Modules baked into core.img: enough to read the MBR partition + ext4 and load normal.mod.
CORE_MODULES = ["biosdisk", "part_msdos", "ext2", "search", "search_label", "normal", "configfile",
                "linux", "echo", "test", "serial", "terminal"]
KERNEL_ARGS = ("root=LABEL={label} rw console=tty0 console=ttyS0,115200 intel_iommu=on iommu=pt quiet "
               "systemd.show_status=0 net.ifnames=1")
PART_START = 2048            # sectors: 1 MiB, the usual MBR gap that holds core.img
SECTOR = 512

BOX_VAGRANTFILE = """\
# Defaults shipped inside the libvirt-alias-harness box. The repo's top-level Vagrantfile
# sets everything that matters (keys through fw_cfg, IOMMU, NICs); this only keeps a bare
# 'vagrant up' of the box from trying anything the box cannot do.
Vagrant.configure("2") do |config|
  config.ssh.username = "root"
  config.ssh.insert_key = false
  config.vm.box_check_update = false
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.provider :libvirt do |lv|
    lv.driver = "qemu"
    lv.machine_type = "q35"
  end
end
"""

NETWORKD_UNIT = """\
# libvirt-alias-harness Vagrant box: DHCP on virtio NICs only (Vagrant's management network).
# The igb PF/VFs and e1000e NICs are for passthrough tests and must stay unconfigured.
[Match]
Driver=virtio_net

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no

[DHCPv4]
UseDNS=no
UseHostname=no
"""


def recipe_digest() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:8]


def box_dir(img: Image) -> Path:
    return img.dir.parent / f"{img.key}-box-{recipe_digest()}"


def box_name(img: Image) -> str:
    """The name the box is added under in Vagrant: unique per image and recipe."""
    return f"hx-{img.key}-{recipe_digest()}"


def box_file(img: Image) -> Path:
    return box_dir(img) / f"{box_name(img)}.box"


def _run(cmd: list[str], what: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"{what} timed out after {timeout:.0f} s: {' '.join(cmd)}") from None
    if p.returncode != 0:
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-15:])
        raise HarnessError(f"{what} failed (exit {p.returncode}): {' '.join(cmd)}\n{tail}")
    return p


def build_box(img: Image, force: bool = False) -> Path:
    """Box file for the bed image `img` (built once, then cached). Safe against concurrent builders."""
    image_mod.require_tools("losetup", "partx", "debugfs", "grub-mkimage", "qemu-img", "tar", "mount", "chroot")
    if not (GRUB_DIR / "boot.img").exists():
        raise HarnessError(f"{GRUB_DIR}/boot.img missing", hint="apt-get install grub-pc-bin")
    if os.geteuid() != 0:
        raise HarnessError("building the Vagrant box needs root (loop devices, mount)")
    if not img.ready():
        raise HarnessError(f"bed image {img.key} is not built", hint="run 'harness bed build' first")
    d = box_dir(img)
    out = box_file(img)
    with FileLock(str(d) + ".lock"):
        if (d / "box.json").exists() and out.exists() and not force:
            say(f"vagrant box {box_name(img)}: cached, reusing")
            return out
        t0 = time.monotonic()
        work = Path(str(d) + ".tmp")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            disk = work / "disk.raw"
            _make_disk(img, disk)
            say("vagrant box: qemu-img convert to qcow2")
            _run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(disk), str(work / "box.img")],
                 "qemu-img convert", timeout=900)
            size = disk.stat().st_size
            disk.unlink()
            virtual_gib = -(-size // (1 << 30))
            (work / "metadata.json").write_text(json.dumps(
                {"provider": "libvirt", "format": "qcow2", "virtual_size": virtual_gib}) + "\n")
            (work / "Vagrantfile").write_text(BOX_VAGRANTFILE)
            say("vagrant box: tar")
            _run(["tar", "-C", str(work), "-cf", str(work / out.name), "metadata.json", "Vagrantfile", "box.img"],
                 "tar", timeout=600)
            (work / "box.img").unlink()
            (work / "box.json").write_text(json.dumps({
                "name": box_name(img), "image_key": img.key, "recipe": recipe_digest(),
                "file": out.name, "virtual_size_gib": virtual_gib,
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": round(time.monotonic() - t0, 1)}, indent=2) + "\n")
            shutil.rmtree(d, ignore_errors=True)      # only now: a failed rebuild keeps the old box
            work.rename(d)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        say(f"vagrant box {box_name(img)}: built in {time.monotonic() - t0:.0f} s")
        _prune(img, keep=d)
        return out


def _prune(img: Image, keep: Path) -> None:
    """Boxes of this image made by an older recipe are never used again: remove them."""
    for old in img.dir.parent.glob(f"{img.key}-box-*"):
        if old.is_dir() and old != keep and not old.name.endswith(".tmp"):
            lock = FileLock(str(old) + ".lock")
            try:
                lock.acquire(timeout=0)
            except Exception:
                continue              # someone is building or reading it right now
            try:
                shutil.rmtree(old, ignore_errors=True)
            finally:
                lock.release()
            Path(str(old) + ".lock").unlink(missing_ok=True)


def build_box_for_suite(suite: str = "trixie", force: bool = False) -> Path:
    """CLI hook for 'harness bed build --box': bed image (cached) then its box (cached)."""
    return build_box(image_mod.build(suite), force=force)


def _make_disk(img: Image, disk: Path) -> None:
    """MBR disk = [1 MiB gap with GRUB][partition 1 = the image's ext4 filesystem]."""
    fs_size = img.disk.stat().st_size
    with open(disk, "wb") as f:
        f.truncate(PART_START * SECTOR + fs_size)
    _write_mbr(disk, fs_size // SECTOR)
    say("vagrant box: copying the root filesystem into the disk (sparse)")
    _sparse_copy(img.disk, disk, PART_START * SECTOR)
    kernels = _boot_files(img)
    core = disk.parent / "core.img"
    _run(["grub-mkimage", "-O", "i386-pc", "-o", str(core), "-p", "(hd0,msdos1)/boot/grub", *CORE_MODULES],
         "grub-mkimage")
    if core.stat().st_size > (PART_START - 1) * SECTOR:
        raise HarnessError(f"GRUB core.img is {core.stat().st_size} bytes: does not fit the MBR gap")
    loop = None
    mnt = Path(tempfile.mkdtemp(prefix="hx-box-mnt-"))
    mounted = False
    try:
        loop = _run(["losetup", "--find", "--show", str(disk)], "losetup").stdout.strip()
        _run(["partx", "-a", loop], "partx -a")
        part = _partition_node(loop)
        _run(["mount", "-t", "ext4", part, str(mnt)], "mount")
        mounted = True
        _customize(mnt, *kernels)
        _run(["umount", str(mnt)], "umount")
        mounted = False
        # MBR boot code: only the first 446 bytes, the partition table stays. core.img right after.
        _run(["dd", f"if={GRUB_DIR / 'boot.img'}", f"of={loop}", "bs=446", "count=1", "conv=notrunc",
              "status=none"], "dd boot.img")
        _run(["dd", f"if={core}", f"of={loop}", f"bs={SECTOR}", "seek=1", "conv=notrunc,fsync", "status=none"],
             "dd core.img")
        _run(["sync"], "sync")
    finally:
        if mounted:
            if subprocess.run(["umount", str(mnt)], capture_output=True, timeout=60).returncode != 0:
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=60)
        if loop:
            subprocess.run(["partx", "-d", loop], capture_output=True, timeout=60)
            subprocess.run(["losetup", "-d", loop], capture_output=True, timeout=60)
        try:
            mnt.rmdir()
        except OSError:
            pass
        core.unlink(missing_ok=True)


def _sparse_copy(src: Path, dst: Path, offset: int) -> None:
    """Copy only the data extents of `src` into `dst` at `offset` (the image is mostly holes)."""
    chunk = 8 << 20
    with open(src, "rb") as fi, open(dst, "r+b") as fo:
        fdi, fdo = fi.fileno(), fo.fileno()
        end = os.fstat(fdi).st_size
        pos = 0
        while pos < end:
            try:
                data = os.lseek(fdi, pos, os.SEEK_DATA)
            except OSError:          # ENXIO: only a hole is left
                break
            hole = os.lseek(fdi, data, os.SEEK_HOLE)
            while data < hole:
                buf = os.pread(fdi, min(chunk, hole - data), data)
                if not buf:
                    break
                os.pwrite(fdo, buf, offset + data)
                data += len(buf)
            pos = hole
        os.fsync(fdo)


def _write_mbr(disk: Path, sectors: int) -> None:
    """A DOS partition table with one bootable Linux partition (no sfdisk needed)."""
    entry = struct.pack("<B3sB3sII", 0x80, bytes([0x20, 0x21, 0x00]), 0x83, bytes([0xFE, 0xFF, 0xFF]),
                        PART_START, sectors)
    with open(disk, "r+b") as f:
        f.seek(440)
        f.write(hashlib.sha256(disk.name.encode()).digest()[:4] + b"\0\0")   # disk id + reserved
        f.write(entry + b"\0" * 48 + b"\x55\xaa")


def _boot_files(img: Image) -> tuple[str, str]:
    """Kernel and initrd file names under the image's /boot (read without mounting)."""
    p = _run(["debugfs", "-R", "ls -p /boot", str(img.disk)], "debugfs ls /boot", timeout=60)
    names = [f.split("/")[5] for f in p.stdout.splitlines() if f.count("/") >= 6]
    kernels = sorted(n for n in names if n.startswith("vmlinuz-"))
    initrds = sorted(n for n in names if n.startswith("initrd.img-"))
    if not kernels or not initrds:
        raise HarnessError(f"no kernel/initrd under /boot in {img.disk}")
    return kernels[-1], initrds[-1]


def _partition_node(loop: str) -> str:
    """/dev/loopNp1 after partx -a; made with mknod from sysfs if no devtmpfs/udev created it."""
    base = os.path.basename(loop)
    node = f"{loop}p1"
    sysdev = Path(f"/sys/block/{base}/{base}p1/dev")
    for _ in range(50):
        if os.path.exists(node):
            return node
        if sysdev.exists():
            major, minor = sysdev.read_text().strip().split(":")
            try:
                os.mknod(node, 0o660 | 0o060000, os.makedev(int(major), int(minor)))
            except FileExistsError:
                pass
            return node
        time.sleep(0.1)
    raise HarnessError(f"partx -a {loop} made no partition device", hint="is the loop device usable here?")


def _customize(root: Path, kernel: str, initrd: str) -> None:
    grub = root / "boot/grub"
    (grub / "i386-pc").mkdir(parents=True, exist_ok=True)
    for f in GRUB_DIR.iterdir():
        if f.suffix in (".mod", ".lst"):
            shutil.copy2(f, grub / "i386-pc" / f.name)
    args = KERNEL_ARGS.format(label=image_mod.ROOT_LABEL)
    (grub / "grub.cfg").write_text(
        "# libvirt-alias-harness Vagrant box\n"
        "serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\n"
        "set timeout=0\nset default=0\n"
        "menuentry 'hx-bed' {\n"
        f"  search --no-floppy --label --set=root {image_mod.ROOT_LABEL}\n"
        f"  linux /boot/{kernel} {args}\n"
        f"  initrd /boot/{initrd}\n"
        "}\n")
    net = root / "etc/systemd/network"
    net.mkdir(parents=True, exist_ok=True)
    (net / "50-hx-vagrant-mgmt.network").write_text(NETWORKD_UNIT)
    _run(["chroot", str(root), "systemctl", "enable", "systemd-networkd.service"], "systemctl enable networkd")
