"""Bed image: a Debian root filesystem built with mmdebstrap from Debian packages only.

The image is generic (no keys inside); the launcher hands each bed its own keys through fw_cfg.
It is cached under a key made from the suite, the package list and this recipe (this module plus
files/), so it is rebuilt only when one of those changes.
"""
from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from harness import paths
from harness.bed import guest_kernel
from harness.errors import HarnessError
from harness.progress import say

FILES = Path(__file__).parent / "files"

COMMON_PACKAGES = [
    "linux-image-amd64", "systemd-sysv", "udev", "openssh-server", "sudo",
    "libvirt-daemon-system", "libvirt-clients", "libvirt-daemon-driver-qemu",
    "qemu-system-x86", "seabios", "ipxe-qemu", "pciutils", "iproute2", "kmod",
    "dnsmasq-base", "nftables", "busybox-static", "procps", "ethtool", "python3",
]

#: suite -> (extra packages, what it brings). Unknown suites are refused with this list.
SUITES = {
    "trixie": ([], "libvirt 11.3, QEMU 10.0, kernel 6.12"),
    "bookworm": (["iptables"], "libvirt 9.0, QEMU 7.2, kernel 6.1"),
    "sid": ([], "libvirt 12.x, QEMU 11.x, kernel 7.x"),
}

#: suite -> extra apt options for mmdebstrap. sid's Release file is valid for a week only (Valid-Until); a mirror
#: that lags behind it (a fixed copy, as on these machines) makes apt refuse the suite ("Release file ... is
#: expired"). The Release signature is still checked.
APT_OPTIONS = {"sid": ['Acquire::Check-Valid-Until "false"']}

ROOT_LABEL = "hx-bed-root"
IMAGE_SIZE = "6G"
GUEST_DIR = "/var/lib/libvirt/images/hx-guest"


@paths.with_files(record="manifest", disk="root.img", kernel="vmlinuz", initrd="initrd.img")
@dataclass
class Image:
    suite: str
    key: str
    dir: Path


def check_suite(suite: str) -> None:
    if suite not in SUITES:
        known = ", ".join(f"{s} ({d})" for s, (_, d) in SUITES.items())
        raise HarnessError(f"unknown suite {suite!r}", hint=f"choose one of: {known}")


def packages(suite: str) -> list[str]:
    check_suite(suite)
    return sorted(set(COMMON_PACKAGES + SUITES[suite][0]))


def recipe_digest() -> str:
    h = hashlib.sha256()
    for p in sorted([Path(__file__), Path(__file__).with_name("guest_kernel.py"), *FILES.iterdir()]):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def cache_key(suite: str) -> str:
    h = hashlib.sha256(json.dumps({"suite": suite, "packages": packages(suite), "recipe": recipe_digest(),
                                   "guest_kernel": guest_kernel.mode()}, sort_keys=True).encode())
    return f"{suite}-{h.hexdigest()[:12]}"


def image_for(suite: str) -> Image:
    key = cache_key(suite)
    return Image(suite=suite, key=key, dir=paths.images_dir() / key)


#: apt's own view of its sources, whatever files they are in (one-line sources.list, deb822 *.sources, both).
APT_SOURCES_CMD = ["apt-get", "indextargets", "--no-release-info", "--format", "$(SITE) $(RELEASE) $(TARGET_OF)",
                   "Identifier: Packages"]


def debian_site(indextargets: str, release: str | None) -> str | None:
    """The archive apt takes `release` from; else the first binary archive that is not a security one."""
    rows = [ln.split() for ln in indextargets.splitlines()]
    rows = [r for r in rows if len(r) == 3 and r[2] == "deb"]
    for site, rel, _ in rows:
        if release and rel == release:
            return site.rstrip("/")
    for site, rel, _ in rows:
        if not rel.endswith("-security") and not site.rstrip("/").endswith("-security"):
            return site.rstrip("/")
    return None


def host_mirror() -> str | None:
    """The Debian mirror the host's apt already uses (so no address is baked into the project).

    Asks apt (`apt-get indextargets`) rather than reading files: fresh machines may have deb822
    sources only, or no /etc/apt/sources.list at all.
    """
    if os.environ.get("HARNESS_DEBIAN_MIRROR"):
        return os.environ["HARNESS_DEBIAN_MIRROR"]
    try:
        p = subprocess.run(APT_SOURCES_CMD, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    release = None
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                release = line.split("=", 1)[1].strip().strip('"') or None
    except OSError:
        pass
    return debian_site(p.stdout, release)


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise HarnessError(f"missing host tools: {', '.join(missing)}",
                           hint="run ./harness.sh (it installs them) or apt-get install mmdebstrap e2fsprogs cpio qemu-system-x86 qemu-utils")


def build(suite: str = "trixie", force: bool = False) -> Image:
    """Build (or reuse) the bed image for `suite`. Safe against concurrent builders."""
    img = image_for(suite)
    require_tools("mmdebstrap", "mke2fs", "cpio")
    if os.geteuid() != 0:
        raise HarnessError("building the bed image needs root (mmdebstrap --mode=root)",
                           hint="run as root, or reuse an image built by root in HARNESS_CACHE")
    with FileLock(str(img.dir) + ".lock"):
        if img.ready() and not force:
            say(f"bed image {img.key}: cached, reusing")
            return img
        t0 = time.monotonic()
        work = Path(str(img.dir) + ".tmp")
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(img.dir, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            _build_into(suite, work)
            manifest = {"suite": suite, "key": img.key, "packages": packages(suite),
                        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "build_seconds": round(time.monotonic() - t0, 1),
                        "versions": json.loads((work / "versions.json").read_text())}
            (work / "manifest.json").write_text(json.dumps(manifest, indent=2))
            work.rename(img.dir)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        say(f"bed image {img.key}: built in {time.monotonic() - t0:.0f} s")
        return img


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-15:])
        raise HarnessError(f"{what} failed (exit {p.returncode}): {' '.join(cmd[:3])} ...\n{tail}")
    return p


def _build_into(suite: str, work: Path) -> None:
    root = work / "rootfs"
    cmd = ["mmdebstrap", "--mode=root", "--variant=apt", "--quiet",
           "--include=" + ",".join(packages(suite)),
           "--aptopt=Acquire::Retries 3", *(f"--aptopt={o}" for o in APT_OPTIONS.get(suite, [])),
           "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
           "--dpkgopt=path-exclude=/usr/share/locale/*",
           suite, str(root)]
    mirror = host_mirror()
    if mirror:
        cmd.append(mirror)
    # Before the minute of mmdebstrap: a failed kernel build should cost nothing else (cached after once).
    tiny = guest_kernel.ensure() if guest_kernel.mode() == "tiny" else None
    say(f"mmdebstrap {suite}: {len(packages(suite))} packages (about a minute)")
    _run(cmd, f"mmdebstrap {suite}")
    _customize(root, tiny)
    versions = _versions(root)
    versions["guest_kernel"] = guest_kernel.describe() if tiny else "debian (HX_GUEST_KERNEL=debian)"
    (work / "versions.json").write_text(json.dumps(versions))
    kernels = sorted(root.glob("boot/vmlinuz-*"))
    initrds = sorted(root.glob("boot/initrd.img-*"))
    if not kernels or not initrds:
        raise HarnessError("the rootfs has no kernel or initrd under /boot", hint="check that linux-image-amd64 installed")
    shutil.copy2(kernels[-1], work / "vmlinuz")
    shutil.copy2(initrds[-1], work / "initrd.img")
    say("mke2fs: making the root filesystem image")
    _run(["mke2fs", "-q", "-t", "ext4", "-L", ROOT_LABEL, "-d", str(root), str(work / "root.img"), IMAGE_SIZE],
         "mke2fs")
    shutil.rmtree(root)


def _customize(root: Path, tiny_kernel: Path | None = None) -> None:
    def write(rel: str, text: str, mode: int = 0o644) -> None:
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(mode)

    write("/etc/hostname", "hx-bed\n")
    write("/etc/hosts", "127.0.0.1 localhost\n127.0.1.1 hx-bed\n")
    write("/etc/fstab", f"LABEL={ROOT_LABEL} / ext4 rw,errors=remount-ro 0 1\n")
    shutil.copy2(FILES / "harness-bed-setup", root / "usr/local/sbin/harness-bed-setup")
    (root / "usr/local/sbin/harness-bed-setup").chmod(0o755)
    shutil.copy2(FILES / "harness-bed-setup.service", root / "etc/systemd/system/harness-bed-setup.service")
    # Keys come per bed through fw_cfg; the image must hold none.
    for k in root.glob("etc/ssh/ssh_host_*"):
        k.unlink()
    write("/etc/ssh/sshd_config.d/harness.conf",
          "HostKey /etc/ssh/ssh_host_ed25519_key\nPermitRootLogin prohibit-password\n"
          "PasswordAuthentication no\nUseDNS no\nMaxSessions 50\nMaxStartups 50:30:100\n")
    # libvirtd always on (no idle exit), logging hot-plug and alias decisions for failure artefacts.
    write("/etc/default/libvirtd", 'LIBVIRTD_ARGS=""\n')
    qemu_conf = root / "etc/libvirt/libvirtd.conf"
    qemu_conf.write_text(qemu_conf.read_text() + "\n# libvirt-alias-harness\nlog_level = 3\n"
                         'log_filters="1:qemu.qemu_hotplug 1:qemu.qemu_alias 1:qemu.qemu_domain_address '
                         '1:network.bridge_driver 1:conf.domain_addr"\n'
                         'log_outputs="1:file:/var/log/libvirt/libvirtd.log"\n')
    # The tiny guest for scenarios that need an OS to acknowledge unplug.
    guest = root / GUEST_DIR.lstrip("/")
    guest.mkdir(parents=True, exist_ok=True)
    if tiny_kernel:
        shutil.copy2(tiny_kernel, guest / "vmlinux")
        (guest / "vmlinux").chmod(0o644)
    else:
        debian_guest_elf(sorted(root.glob("boot/vmlinuz-*"))[-1], guest / "vmlinux")
    _guest_initramfs(guest / "initrd.img")
    services = ["harness-bed-setup.service", "ssh.service", "libvirtd.service"]
    _run(["chroot", str(root), "systemctl", "enable", *services], "systemctl enable")
    # No serial getty and no waiting for a network manager: the bed is reached over SSH only.
    _run(["chroot", str(root), "systemctl", "mask", "systemd-networkd-wait-online.service",
          "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer"], "systemctl mask",
         )


#: compressed-kernel magics (zstd: trixie's kernel; xz: bookworm's) -> how to unpack the stream
_KERNEL_CODECS = {b"\x28\xb5\x2f\xfd": "zstd", b"\xfd7zXZ\x00": "xz"}


def debian_guest_elf(vmlinuz: Path, out: Path) -> str:
    """With HX_GUEST_KERNEL=debian: the guest's kernel as the uncompressed ELF inside Debian's bzImage, booted
    through its PVH entry.

    Why: under TCG inside a TCG bed, decompressing the bzImage took ~50 of the guest's ~190 s boot; QEMU
    loads an ELF with a PVH note directly (Debian builds CONFIG_PVH=y). Falls back to the bzImage itself
    when no known stream unpacks to an ELF. Returns "elf" or "bzimage".
    """
    data = vmlinuz.read_bytes()
    for magic, codec in _KERNEL_CODECS.items():
        at = data.find(magic)
        while at >= 0:
            if codec == "xz":
                try:
                    elf = lzma.LZMADecompressor().decompress(data[at:])
                except lzma.LZMAError:
                    elf = b""
            else:   # the frame is followed by the bzImage's trailer: zstd says so on stderr, the output is whole
                elf = subprocess.run(["zstd", "-d", "-c", "-q"], input=data[at:], capture_output=True).stdout
            if elf[:4] == b"\x7fELF" and len(elf) > 1 << 20:
                out.write_bytes(elf)
                out.chmod(0o644)
                return "elf"
            at = data.find(magic, at + 1)
    shutil.copy2(vmlinuz, out)
    out.chmod(0o644)
    say(f"guest kernel: no zstd/xz stream in {vmlinuz.name} unpacks to an ELF; the guest boots the bzImage (slower)",
        warn=True)
    return "bzimage"


#: what the tiny guest's init prints on its console once it runs: every initcall is done by then, so the
#: kernel's PCI/ACPI hot-plug drivers are registered (engine/steps.py waits for it)
GUEST_MARKER = b"harness-guest-ready\n"


def guest_init_elf(marker: bytes = GUEST_MARKER) -> bytes:
    """The tiny guest's PID 1: a static x86-64 ELF of under 200 bytes that writes `marker` to stdout (the
    kernel opens /dev/console, i.e. console=ttyS0, for init) and then sleeps in pause() for ever.

    Why not busybox: under TCG inside a TCG bed, exec'ing the 2 MB busybox shell and running the old init
    script (--install, three mounts, each a fork+exec) took 15-25 s of a ~130 s boot, page faults mostly;
    nothing in user space takes part in unplug (the kernel acknowledges it), so init needs to do nothing else.
    """
    code = bytes.fromhex(
        "b801000000"          # mov eax, 1         (write)
        "bf01000000"          # mov edi, 1         (stdout = /dev/console)
        "488d3510000000"      # lea rsi, [rip+16]  (the marker, right after this code)
        "ba") + len(marker).to_bytes(4, "little") + bytes.fromhex(   # mov edx, len(marker)
        "0f05"                # syscall
        "b822000000"          # mov eax, 34        (pause)
        "0f05"                # syscall
        "ebf7")               # jmp back to the pause
    assert len(code) == 0x21, "the lea's displacement assumes 33 bytes of code"
    base, hdr = 0x400000, 64 + 56
    size = hdr + len(code) + len(marker)
    ehdr = (b"\x7fELF\x02\x01\x01" + bytes(9)                       # 64-bit, little-endian, SysV
            + (2).to_bytes(2, "little") + (62).to_bytes(2, "little")      # ET_EXEC, EM_X86_64
            + (1).to_bytes(4, "little") + (base + hdr).to_bytes(8, "little")  # version, entry
            + (64).to_bytes(8, "little") + bytes(8)                       # phoff, shoff
            + bytes(4) + (64).to_bytes(2, "little") + (56).to_bytes(2, "little")  # flags, ehsize, phentsize
            + (1).to_bytes(2, "little") + bytes(6))                       # phnum, shentsize/shnum/shstrndx
    phdr = ((1).to_bytes(4, "little") + (5).to_bytes(4, "little")         # PT_LOAD, R+X
            + bytes(8) + base.to_bytes(8, "little") + base.to_bytes(8, "little")   # offset, vaddr, paddr
            + size.to_bytes(8, "little") + size.to_bytes(8, "little") + (0x1000).to_bytes(8, "little"))
    return ehdr + phdr + code + marker


def newc_cpio(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """An uncompressed newc cpio archive (what the kernel unpacks as initramfs) from (name, mode, data,
    (rdev major, minor)) entries. Written here rather than by cpio(1) so that device nodes need no mknod
    (and no root)."""
    out = bytearray()
    for ino, (name, mode, data, (major, minor)) in enumerate([*entries, ("TRAILER!!!", 0, b"", (0, 0))], 1):
        raw = name.encode() + b"\0"
        fields = [ino if name != "TRAILER!!!" else 0, mode, 0, 0, 1, 0, len(data), 0, 0, major, minor, len(raw), 0]
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + raw
        out += bytes(-len(out) % 4) + data
        out += bytes(-len(out) % 4)
    return bytes(out + bytes(-len(out) % 512))


def guest_initramfs() -> bytes:
    """/dev/console (so the kernel gives init a console) and /init; nothing else."""
    return newc_cpio([("dev", 0o040755, b"", (0, 0)),
                      ("dev/console", 0o020600, b"", (5, 1)),
                      ("init", 0o100755, guest_init_elf(), (0, 0))])


def _guest_initramfs(out: Path) -> None:
    out.write_bytes(guest_initramfs())
    out.chmod(0o644)


def _versions(root: Path) -> dict:
    p = _run(["chroot", str(root), "dpkg-query", "-W", "-f", "${Package} ${Version}\n"], "dpkg-query")
    pk = dict(line.split(" ", 1) for line in p.stdout.splitlines() if " " in line)
    kern = sorted(k.name[len("vmlinuz-"):] for k in root.glob("boot/vmlinuz-*"))
    return {"libvirt": pk.get("libvirt-daemon", "?"), "qemu": pk.get("qemu-system-x86", "?"),
            "kernel": kern[-1] if kern else "?"}


def list_images() -> list[dict]:
    out = []
    for m in sorted(paths.images_dir().glob("*/manifest.json")):
        try:
            out.append(json.loads(m.read_text()))
        except (OSError, ValueError):
            continue
    return out
