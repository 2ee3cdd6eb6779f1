"""The tiny guest's kernel recipe: the fragment's lines are checked against the built .config, and the cache
keys (the kernel's and every bed image's) follow the recipe. The kernel itself boots in every guest scenario
of the catalog, and test_bed checks the bed holds it."""
from __future__ import annotations

import pytest

from harness.bed import guest_kernel, image
from harness.errors import HarnessError

FRAGMENT = """# comment
CONFIG_PCI=y
CONFIG_LOCALVERSION="-hx-guest"
# CONFIG_INPUT is not set
CONFIG_HOTPLUG_PCI_PCIE=y
"""


def test_fragment_lines_give_line_symbol_and_value():
    assert guest_kernel.fragment_lines(FRAGMENT) == [
        (2, "CONFIG_PCI", "y"), (3, "CONFIG_LOCALVERSION", '"-hx-guest"'), (4, "CONFIG_INPUT", None),
        (5, "CONFIG_HOTPLUG_PCI_PCIE", "y")]


def test_a_config_that_holds_every_line_passes():
    built = ('CONFIG_64BIT=y\nCONFIG_PCI=y\nCONFIG_LOCALVERSION="-hx-guest"\n# CONFIG_INPUT is not set\n'
             "CONFIG_HOTPLUG_PCI_PCIE=y\n")
    guest_kernel.check_config(FRAGMENT, built)
    # an absent symbol and "=n" both count as off
    guest_kernel.check_config("# CONFIG_INPUT is not set\n# CONFIG_VT is not set\n", "CONFIG_VT=n\n")


def test_a_symbol_kconfig_dropped_is_named_with_its_line_and_the_fix():
    built = 'CONFIG_PCI=y\nCONFIG_LOCALVERSION="-hx-guest"\nCONFIG_INPUT=y\n'
    with pytest.raises(HarnessError) as e:
        guest_kernel.check_config(FRAGMENT, built, where="frag.config")
    msg = str(e.value)
    assert "frag.config" in msg
    assert "line 4: CONFIG_INPUT wanted off, built y" in msg
    assert "line 5: CONFIG_HOTPLUG_PCI_PCIE wanted y, built off" in msg
    assert "CONFIG_PCI " not in msg
    assert "dependency" in e.value.hint


def test_the_shipped_fragment_is_all_settings_or_comments():
    text = guest_kernel.FRAGMENT.read_text()
    settings = guest_kernel.fragment_lines(text)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    comments = [ln for ln in lines if ln.startswith("#") and not ln.endswith(" is not set")]
    assert len(settings) + len(comments) == len(lines)      # no line the check would silently skip
    wanted = {s for _, s, v in settings if v == "y"}
    assert {"CONFIG_PVH", "CONFIG_HOTPLUG_PCI_PCIE", "CONFIG_HOTPLUG_PCI_ACPI", "CONFIG_SERIAL_8250_CONSOLE",
            "CONFIG_BLK_DEV_INITRD"} <= wanted


def test_the_kernel_key_follows_the_fragment(tmp_path, monkeypatch):
    frag = tmp_path / "guest-kernel.config"
    frag.write_text(FRAGMENT)
    monkeypatch.setattr(guest_kernel, "FRAGMENT", frag)
    k1 = guest_kernel.cache_key()
    frag.write_text(FRAGMENT + "CONFIG_IGBVF=y\n")
    assert guest_kernel.cache_key() != k1
    assert guest_kernel.cache_key().startswith(guest_kernel.KERNEL_SUITE + "-")


def test_the_image_key_follows_the_guest_kernel_choice(monkeypatch):
    monkeypatch.delenv("HX_GUEST_KERNEL", raising=False)
    tiny = image.cache_key("trixie")
    monkeypatch.setenv("HX_GUEST_KERNEL", "debian")
    assert image.cache_key("trixie") != tiny
    monkeypatch.setenv("HX_GUEST_KERNEL", "tiny")
    assert image.cache_key("trixie") == tiny


def test_an_unknown_guest_kernel_choice_is_refused_with_the_choices(monkeypatch):
    monkeypatch.setenv("HX_GUEST_KERNEL", "custom")
    with pytest.raises(HarnessError) as e:
        guest_kernel.mode()
    assert "HX_GUEST_KERNEL='custom'" in str(e.value) and "debian" in e.value.hint
