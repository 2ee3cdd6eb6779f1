"""The host's Debian mirror comes from apt's own view (apt-get indextargets), whatever the file layout."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from harness.bed import image

# `apt-get indextargets --format '$(SITE) $(RELEASE) $(TARGET_OF)'` as printed on this project's machines
DEB822_BOOKWORM = """\
http://deb.debian.org/debian bookworm deb
http://deb.debian.org/debian bookworm-updates deb
http://deb.debian.org/debian-security bookworm-security deb
"""


def test_site_of_the_hosts_own_release():
    assert image.debian_site(DEB822_BOOKWORM, "bookworm") == "http://deb.debian.org/debian"


def test_security_archive_is_never_taken_as_the_mirror():
    sec_first = "http://m.example/debian-security bookworm-security deb\nhttp://m.example/debian/ trixie deb\n"
    assert image.debian_site(sec_first, "bookworm") == "http://m.example/debian"


def test_source_only_entries_and_noise_are_ignored():
    assert image.debian_site("http://m/debian bookworm deb-src\ngarbage\n\n", "bookworm") is None


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="not a Debian host")
def test_real_apt_answers_the_query():
    p = subprocess.run(image.APT_SOURCES_CMD, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    m = image.host_mirror()
    assert m is not None and f"{m} " in p.stdout.replace("/ ", " "), (m, p.stdout)
