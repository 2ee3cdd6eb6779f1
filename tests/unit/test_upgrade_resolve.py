"""harness/libvirt_build/upgrade.resolve: a target is looked up on the mirror once per process, and each caller
gets its own copy of the record (upgrade() adds before/after/seconds to it)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from harness.libvirt_build import upgrade


def test_the_same_target_is_resolved_once_and_each_caller_gets_its_own_record(monkeypatch):
    calls = []

    def fake(bed, spec, original_id):
        calls.append((bed.name, dict(spec), original_id))
        return SimpleNamespace(id="b" * 18), {"to": spec["to"], "via": "packages", "pulled": ["libnl 3"]}

    monkeypatch.setattr(upgrade, "_resolve", fake)
    monkeypatch.setattr(upgrade, "_RESOLVED", {})
    bed = SimpleNamespace(name="trixie", suite="trixie")
    b1, info1 = upgrade.resolve(bed, {"to": "next"}, "stock")
    info1.update(before="stock", seconds={"install": 1})
    info1["pulled"].append("changed by the caller")
    b2, info2 = upgrade.resolve(bed, {"to": "next"}, "stock")
    assert len(calls) == 1 and b1 is b2
    assert info2 == {"to": "next", "via": "packages", "pulled": ["libnl 3"]}

    upgrade.resolve(bed, {"to": "next", "via": "packages"}, "stock")             # another spec
    upgrade.resolve(SimpleNamespace(name="other", suite="trixie"), {"to": "next"}, "stock")   # another bed
    upgrade.resolve(bed, {"to": "next"}, "4defc14067f18d1f2f")                   # another original
    assert len(calls) == 4
    assert upgrade.resolve(bed, {"to": "original"}, "stock") == (None, {"to": "original"})
    assert len(calls) == 4


SOURCES = ("Package: libvirt\nVersion: 12.8.0-1\nDirectory: pool/main/libv/libvirt\n\n"
           "Package: other\nVersion: 1\n\n")


def test_the_libvirt_stanza_is_kept_per_signed_index_and_an_older_indexs_answer_goes(tmp_path, monkeypatch):
    import lzma

    from harness.libvirt_build import source
    sx = tmp_path / "Sources.xz"
    sx.write_bytes(lzma.compress(SOURCES.encode()))
    index = {"sha": "a" * 64}
    monkeypatch.setattr(source, "verified_sources_xz", lambda suite: (sx, index["sha"]))
    unpacked = []
    real = lzma.decompress
    monkeypatch.setattr(source.lzma, "decompress", lambda b: unpacked.append(1) or real(b))

    assert source.verified_stanza("sid")["Version"] == "12.8.0-1"
    assert source.verified_stanza("sid")["Directory"] == "pool/main/libv/libvirt"
    assert len(unpacked) == 1                                   # the second answer came from the kept stanza
    index["sha"] = "b" * 64                                     # the mirror published a new index
    sx.write_bytes(lzma.compress(SOURCES.replace("12.8.0-1", "12.9.0-1").encode()))
    assert source.verified_stanza("sid")["Version"] == "12.9.0-1" and len(unpacked) == 2
    assert [p.name for p in tmp_path.glob("stanza-*")] == ["stanza-libvirt-newest-bbbbbbbbbbbbbbbb.json"]


def test_a_target_that_cannot_be_had_is_an_infrastructure_error_not_a_verdict(monkeypatch):
    """A catalog run reported 'failed: sid has no package libvirt-clients' (apt's lists were being rewritten by
    the other worker): the mirror or apt failing is no answer of the bed's libvirt."""
    from harness.errors import HarnessError, InfrastructureError
    monkeypatch.setattr(upgrade, "begin", lambda bed, owner: ({"id": "stock"}, "stock"))

    def no_target(bed, spec, original_id):
        raise HarnessError("sid has no package libvirt-clients (installed in bed trixie)", hint="check the mirror")

    monkeypatch.setattr(upgrade, "resolve", no_target)
    with pytest.raises(InfrastructureError) as e:
        upgrade.upgrade(SimpleNamespace(name="trixie", suite="trixie"), {"to": "next"}, owner="hx-x")
    assert e.value.message == ("upgrade-libvirt: the target 'next' cannot be had: sid has no package libvirt-clients "
                               "(installed in bed trixie)") and e.value.hint == "check the mirror"


def test_apt_answers_no_such_package_only_when_it_says_so_and_reads_under_the_update_lock(tmp_path, monkeypatch):
    from harness.errors import HarnessError
    from harness.libvirt_build import packages
    monkeypatch.setattr(packages, "sub", lambda *parts: tmp_path.joinpath(*parts))
    apt = packages.Apt("sid")
    held = []

    def run(*args, **kw):
        held.append(apt.lock.is_locked)
        if args[:2] == ("apt-get", "update"):
            return ""
        name = args[-1]
        if name == "gone":
            raise HarnessError("apt-cache show --no-all-versions (sid) failed: E: No packages found")
        if name == "broken":
            raise HarnessError("apt-cache show --no-all-versions (sid) failed: E: The package lists or status file "
                               "could not be parsed or opened.")
        deps = "" if name != "libvirt0" else "libnl-3-200 (>= 3.11.0)"
        return f"Package: {name}\nVersion: 1.{len(name)}\nDepends: {deps}\n"

    monkeypatch.setattr(apt, "run", run)
    assert apt.show("gone") is None
    with pytest.raises(HarnessError, match="could not be parsed"):
        apt.show("broken")                        # before: "sid has no package broken", a false verdict
    monkeypatch.setattr(packages, "Apt", lambda suite: apt)
    monkeypatch.setattr(packages, "bed_packages",
                        lambda bed: ({"libvirt0": "11.3.0-1"}, set(), {"libvirt0": "libvirt"}))
    held.clear()
    out = packages.plan(SimpleNamespace(name="trixie"), "sid")
    assert out["packages"] == {"libvirt0": "1.8", "libnl-3-200": "1.11"}
    assert held and all(held)                     # apt-get update and every apt-cache read under the lock
    assert not apt.lock.is_locked
