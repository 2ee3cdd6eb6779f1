"""The tiny guest's kernel: the ELF inside a bzImage is found for both codecs Debian uses (zstd, xz)."""
from __future__ import annotations

import lzma
import shutil
import subprocess

import pytest

from harness.bed.image import guest_kernel

ELF = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 8192          # > 1 MiB, like a real vmlinux
SETUP = b"MZ\x00\x00HdrS" + b"\x00" * 20000                        # the bzImage's real-mode setup code
TRAILER = b"\x00\x10\x00\x00" * 64                                 # what follows the payload in a bzImage


def test_xz_payload_unpacks_to_the_elf(tmp_path):
    vmlinuz = tmp_path / "vmlinuz"
    vmlinuz.write_bytes(SETUP + lzma.compress(ELF, format=lzma.FORMAT_XZ) + TRAILER)
    assert guest_kernel(vmlinuz, tmp_path / "vmlinux") == "elf"
    assert (tmp_path / "vmlinux").read_bytes() == ELF


@pytest.mark.skipif(not shutil.which("zstd"), reason="zstd is a host package (harness.sh installs it)")
def test_zstd_payload_with_trailer_unpacks_to_the_elf(tmp_path):
    packed = subprocess.run(["zstd", "-q", "-c"], input=ELF, capture_output=True, check=True).stdout
    vmlinuz = tmp_path / "vmlinuz"
    # a false magic before the real stream: the search goes on to the next occurrence
    vmlinuz.write_bytes(SETUP + b"\x28\xb5\x2f\xfd junk" + packed + TRAILER)
    assert guest_kernel(vmlinuz, tmp_path / "vmlinux") == "elf"
    assert (tmp_path / "vmlinux").read_bytes() == ELF


def test_unknown_payload_falls_back_to_the_bzimage(tmp_path):
    vmlinuz = tmp_path / "vmlinuz"
    vmlinuz.write_bytes(SETUP + b"\x1f\x8b gzip is not used by Debian amd64 kernels" + TRAILER)
    assert guest_kernel(vmlinuz, tmp_path / "vmlinux") == "bzimage"
    assert (tmp_path / "vmlinux").read_bytes() == vmlinuz.read_bytes()
