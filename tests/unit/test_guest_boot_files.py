"""The tiny guest: its kernel (the ELF inside a bzImage, for both codecs Debian uses: zstd, xz) and its initramfs."""
from __future__ import annotations

import lzma
import platform
import shutil
import stat
import subprocess

import pytest

from harness.bed.image import debian_guest_elf

ELF = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 8192          # > 1 MiB, like a real vmlinux
SETUP = b"MZ\x00\x00HdrS" + b"\x00" * 20000                        # the bzImage's real-mode setup code
TRAILER = b"\x00\x10\x00\x00" * 64                                 # what follows the payload in a bzImage


def test_xz_payload_unpacks_to_the_elf(tmp_path):
    vmlinuz = tmp_path / "vmlinuz"
    vmlinuz.write_bytes(SETUP + lzma.compress(ELF, format=lzma.FORMAT_XZ) + TRAILER)
    assert debian_guest_elf(vmlinuz, tmp_path / "vmlinux") == "elf"
    assert (tmp_path / "vmlinux").read_bytes() == ELF


@pytest.mark.skipif(not shutil.which("zstd"), reason="zstd is a host package (harness.sh installs it)")
def test_zstd_payload_with_trailer_unpacks_to_the_elf(tmp_path):
    packed = subprocess.run(["zstd", "-q", "-c"], input=ELF, capture_output=True, check=True).stdout
    vmlinuz = tmp_path / "vmlinuz"
    # a false magic before the real stream: the search goes on to the next occurrence
    vmlinuz.write_bytes(SETUP + b"\x28\xb5\x2f\xfd junk" + packed + TRAILER)
    assert debian_guest_elf(vmlinuz, tmp_path / "vmlinux") == "elf"
    assert (tmp_path / "vmlinux").read_bytes() == ELF


def test_unknown_payload_falls_back_to_the_bzimage(tmp_path):
    vmlinuz = tmp_path / "vmlinuz"
    vmlinuz.write_bytes(SETUP + b"\x1f\x8b gzip is not used by Debian amd64 kernels" + TRAILER)
    assert debian_guest_elf(vmlinuz, tmp_path / "vmlinux") == "bzimage"
    assert (tmp_path / "vmlinux").read_bytes() == vmlinuz.read_bytes()


# ---- the initramfs: /dev/console and a tiny static init that prints the marker --------------------------------------

def test_guest_init_is_a_static_x86_64_elf_that_prints_the_marker():
    from harness.bed.image import GUEST_MARKER, guest_init_elf
    elf = guest_init_elf()
    assert elf[:4] == b"\x7fELF" and elf[4] == 2 and int.from_bytes(elf[18:20], "little") == 62   # ELF64, x86-64
    assert int.from_bytes(elf[16:18], "little") == 2                                             # ET_EXEC
    assert elf.endswith(GUEST_MARKER) and len(elf) < 512
    assert guest_init_elf(b"other\n").endswith(b"other\n")


@pytest.mark.skipif(not (platform.system() == "Linux" and platform.machine() == "x86_64"),
                    reason="runs the guest's init natively")
def test_guest_init_runs_writes_the_marker_to_stdout_and_stays(tmp_path):
    from harness.bed.image import GUEST_MARKER, guest_init_elf
    init = tmp_path / "init"
    init.write_bytes(guest_init_elf())
    init.chmod(0o755)
    p = subprocess.Popen([str(init)], stdout=subprocess.PIPE)
    try:
        assert p.stdout.read(len(GUEST_MARKER)) == GUEST_MARKER
        with pytest.raises(subprocess.TimeoutExpired):
            p.wait(timeout=0.5)                   # PID 1 must never exit (the kernel would panic)
    finally:
        p.kill()
        p.wait()


def _read_newc(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    out, at = {}, 0
    while True:
        assert data[at:at + 6] == b"070701"
        f = [int(data[at + 6 + 8 * i:at + 14 + 8 * i], 16) for i in range(13)]
        name = data[at + 110:at + 110 + f[11] - 1].decode()
        at = (at + 110 + f[11] + 3) & ~3
        body = data[at:at + f[6]]
        at = (at + f[6] + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out[name] = (f[1], body, (f[9], f[10]))


def test_guest_initramfs_holds_the_console_node_and_init():
    from harness.bed.image import guest_init_elf, guest_initramfs
    data = guest_initramfs()
    assert len(data) % 512 == 0
    files = _read_newc(data)
    assert set(files) == {"dev", "dev/console", "init"}
    mode, _, rdev = files["dev/console"]
    assert stat.S_ISCHR(mode) and rdev == (5, 1)
    mode, body, _ = files["init"]
    assert stat.S_ISREG(mode) and mode & 0o111 and body == guest_init_elf()
    assert stat.S_ISDIR(files["dev"][0])


@pytest.mark.skipif(not shutil.which("cpio"), reason="cpio(1) cross-checks the archive")
def test_guest_initramfs_is_read_by_cpio(tmp_path):
    from harness.bed.image import guest_initramfs
    p = subprocess.run(["cpio", "-itv"], input=guest_initramfs(), capture_output=True, check=True)
    listing = p.stdout.decode()
    assert "dev/console" in listing and "5,   1" in listing and listing.rstrip().endswith("init")
