"""`harness run -n N`: one bed per xdist worker (cli.run_workers, lifecycle), each worker on its own
(plugin.bed_for_worker), and one run folder whose beds must run the same software (RunFolder.claim)."""
from __future__ import annotations

import json

import pytest

from harness.bed import lifecycle
from harness.cli import run_workers
from harness.errors import HarnessError
from harness.plugin import bed_for_worker
from harness.report.run_folder import RunFolder

META = {"uri": "qemu+ssh://root@127.0.0.1:40001/system", "libvirt": "11.3.0", "qemu": "10.0.13",
        "kernel": "6.12.117+deb13-amd64", "suite": "trixie", "accelerator": "tcg", "domain_type": "qemu",
        "bed": "trixie"}


def test_each_worker_takes_its_own_bed_round_robin():
    assert bed_for_worker("trixie,trixie-w1", "gw0") == "trixie"
    assert bed_for_worker("trixie,trixie-w1", "gw1") == "trixie-w1"
    assert bed_for_worker("trixie,trixie-w1", "gw2") == "trixie"
    assert bed_for_worker("trixie,trixie-w1", None) == "trixie"       # no xdist, or the controller
    assert bed_for_worker("trixie", "gw5") == "trixie"
    assert bed_for_worker(None, "gw1") is None and bed_for_worker("", "gw0") is None


def test_worker_beds_are_the_default_bed_then_numbered():
    assert lifecycle.worker_bed_names("trixie", 1) == ["trixie"]
    assert lifecycle.worker_bed_names("sid", 3) == ["sid", "sid-w1", "sid-w2"]


def test_default_is_one_worker_per_core_at_most_two_and_beds_as_memory_allows():
    assert run_workers(None, "qemu", cpus=2, room=8) == (2, 2)
    assert run_workers(None, "qemu", cpus=1, room=8) == (1, 1)
    assert run_workers(None, "qemu", cpus=32, room=8) == (2, 2)
    assert run_workers("4", "qemu", cpus=2, room=3) == (4, 3)          # two workers share a bed
    assert run_workers("auto", "qemu", cpus=6, room=0) == (6, 1)       # never fewer than one bed
    assert run_workers(2, "vagrant", cpus=2, room=8) == (2, 1)


def test_room_for_beds_reads_memavailable():
    assert lifecycle.room_for_beds(2560, "MemTotal: 24000000 kB\nMemAvailable: 12000000 kB\n") == 3
    assert lifecycle.room_for_beds(2560, "MemAvailable: 1000000 kB\n") == 0
    assert lifecycle.room_for_beds(2560, "MemTotal: 1 kB\n") == 1          # unknown: assume one


def _folder(tmp_path, sid="20261205T200000Z-abc123"):
    return RunFolder(sid, tmp_path / "results", tmp_path / "work")


def test_second_bed_with_the_same_software_joins_and_is_listed(tmp_path):
    (tmp_path / "work").mkdir()
    a, b = _folder(tmp_path), _folder(tmp_path)
    a.claim(META)
    b.claim(dict(META, bed="trixie-w1", uri="qemu+ssh://root@127.0.0.1:40002/system"))
    assert a.path == b.path
    meta = json.loads((a.path / "meta.json").read_text())
    assert meta["beds"] == ["trixie", "trixie-w1"] and meta["bed"] == "trixie"
    _folder(tmp_path).claim(META)                                       # a third worker on the first bed
    assert json.loads((a.path / "meta.json").read_text())["beds"] == ["trixie", "trixie-w1"]


def test_a_bed_with_another_libvirt_is_refused_naming_both(tmp_path):
    (tmp_path / "work").mkdir()
    _folder(tmp_path).claim(META)
    with pytest.raises(HarnessError) as e:
        _folder(tmp_path).claim(dict(META, bed="trixie-w1", libvirt="12.8.0"))
    assert "libvirt 11.3.0 on bed trixie but 12.8.0 on bed trixie-w1" in e.value.message


def test_longest_first_puts_the_upgrade_then_the_guest_scenarios_first():
    import glob

    from harness.engine import plan
    from harness.scenario import loader
    scs = [sc for f in sorted(glob.glob("scenarios/*.yaml")) for sc in loader.load_file(f)]
    order = [sc.name for sc in sorted(scs, key=lambda s: -plan.cost(s))]
    assert {n for n in order[:4]} == {n for n in order if n.startswith("upgrade-")}
    assert set(order[4:6]) == {sc.name for sc in scs if sc.domain.guest}
