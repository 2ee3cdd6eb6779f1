"""bed status's check that the igb VFs' BARs lie below 4 GiB, where QEMU maps them right (bed/state.py)."""
from __future__ import annotations

from harness.bed import state, status

# /sys/bus/pci/devices/<vf>/resource as the trixie bed showed it: BAR 0 and BAR 3, 64-bit prefetchable.
BELOW = """0x00000000fe800000 0x00000000fe803fff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000fe820000 0x00000000fe823fff 0x000000000014220c
"""
ABOVE = BELOW.replace("0x00000000fe82", "0x000000c04002")


def test_the_highest_bar_end_is_found():
    assert status.vf_bar_top(BELOW) == 0xfe823fff
    assert status.vf_bar_top(BELOW + ABOVE) == 0xc040023fff


def test_no_vf_or_only_empty_lines_is_none():
    assert status.vf_bar_top("") is None
    assert status.vf_bar_top("0x0000000000000000 0x0000000000000000 0x0000000000000000\n") is None


def test_io_ports_do_not_count():
    assert status.vf_bar_top("0x000000000000e000 0x000000000000e01f 0x0000000000040101\n") is None


def test_the_default_bed_keeps_its_ram_below_4_gib():
    # q35 splits RAM at 2 GiB from 0xb0000000 bytes on: the default must stay under that.
    assert state.MEMORY_MIB <= state.LOW_MEMORY_MAX_MIB < 0xb0000000 >> 20
