"""harness/engine/devices.py offline: classify() and the filelock leases that keep two pytest-xdist
workers from passing the same NIC through (proved with real separate processes)."""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

import _lease_workers
from harness.engine.devices import E1000E, IGB_PF, IGB_VF, HostNic, Leases, classify, counts
from harness.engine.xmlbuild import PciAddr
from harness.errors import HarnessError

PF = "0000:01:00.0"
VFS = ["0000:01:10.0", "0000:01:10.2", "0000:01:10.4"]
PF2 = "0000:05:00.0"
E1S = ["0000:02:00.0", "0000:03:00.0"]

NICS = ([HostNic(PF, "pf", "enp1s0", None, "10")]
        + [HostNic(v, "vf", None, PF, str(20 + i)) for i, v in enumerate(VFS)]
        + [HostNic(e, "e1000e", f"enp{i + 2}s0", None, str(30 + i)) for i, e in enumerate(E1S)]
        + [HostNic("0000:04:00.0", "other", "enp4s0", None, "40")])


def leases(tmp_path: Path, nics=None, wait: float = 0.0) -> Leases:
    return Leases(tmp_path / "locks", list(NICS if nics is None else nics), wait=wait)


# ---- classify / counts -----------------------------------------------------------------------------------------------

def entry(pci, ident, **kw):
    return {"pci": pci, "vendor": ident[0] if ident else None, "device": ident[1] if ident else None, **kw}


def test_classify():
    got = classify([
        entry(PF, IGB_PF, ifname="enp1s0", totalvfs="7", numvfs="3", iommu_group="10", driver="igb"),
        entry(VFS[0], IGB_VF, physfn=PF, iommu_group="20", driver="igbvf"),
        entry(E1S[0], E1000E, ifname="enp2s0", iommu_group="30"),
        entry("0000:00:02.0", ("0x1af4", "0x1041"), ifname="enp0s2"),     # virtio-net: mgmt, not ours
        entry("0000:00:03.0", ("0x8086", "0x10d4")),                      # another Intel NIC
        entry("0000:00:04.0", None),                                      # sysfs gave nothing
    ])
    assert got == [HostNic(PF, "pf", "enp1s0", None, "10"),
                   HostNic(VFS[0], "vf", None, PF, "20"),
                   HostNic(E1S[0], "e1000e", "enp2s0", None, "30"),
                   HostNic("0000:00:02.0", "other", "enp0s2", None, None),
                   HostNic("0000:00:03.0", "other", None, None, None),
                   HostNic("0000:00:04.0", "other", None, None, None)]


def test_classify_nothing():
    assert classify([]) == []


def test_counts():
    assert counts(NICS) == {"vf": 3, "pf": 1, "e1000e": 2}
    assert counts([]) == {"vf": 0, "pf": 0, "e1000e": 0}


def test_addr():
    assert Leases.addr(NICS[1]) == PciAddr(0, 1, 0x10, 0)


# ---- one process ------------------------------------------------------------------------------------------------------

def test_vfs_leased_once_each(tmp_path):
    with leases(tmp_path) as ls:
        got = [ls.lease(f"vf{i}", "vf").pci for i in range(3)]
        assert sorted(got) == VFS
        with pytest.raises(HarnessError, match=r"device 'vf4': all 3 vf devices stayed leased"):
            ls.lease("vf4", "vf")


def test_two_holders_never_share(tmp_path):
    with leases(tmp_path) as a, leases(tmp_path) as b:
        mine = {a.lease("x", "vf").pci, a.lease("y", "vf").pci}
        theirs = b.lease("z", "vf").pci
        assert theirs not in mine and theirs in VFS
        with pytest.raises(HarnessError):
            b.lease("w", "vf")


def test_leases_released_by_another_thread_are_free_again(tmp_path):
    """A passed scenario's teardown thread releases its leases (engine/teardown.py): until then nobody,
    this process included, gets those devices; afterwards another holder does."""
    import threading
    alive = []     # the lock objects stay referenced (so no garbage collection releases them by accident)
    real_try = Leases._try
    Leases._try = lambda self, pci: (lambda lk: (alive.append(lk), lk)[1])(real_try(self, pci))
    try:
        held = leases(tmp_path).__enter__()
        mine = {held.lease(f"v{i}", "vf").pci for i in range(3)}
    finally:
        Leases._try = real_try
    with leases(tmp_path) as other:
        with pytest.raises(HarnessError):
            other.lease("w", "vf")
    t = threading.Thread(target=held.__exit__, args=(None, None, None))
    t.start()
    t.join()
    with leases(tmp_path) as other:
        assert {other.lease(f"w{i}", "vf").pci for i in range(3)} == mine


def test_kind_missing_from_the_bed_fails_at_once(tmp_path):
    nics = [n for n in NICS if n.kind != "pf"]
    t0 = time.monotonic()
    with leases(tmp_path, nics, wait=60) as ls, pytest.raises(HarnessError) as ei:
        ls.lease("pf1", "pf")
    assert time.monotonic() - t0 < 5
    assert ei.value.message == "device 'pf1': the bed has no pf device"
    assert "bed status" in ei.value.hint


def test_pf_lease_takes_its_vfs(tmp_path):
    with leases(tmp_path) as a, leases(tmp_path) as b:
        nic = a.lease("pf1", "pf")
        assert nic.pci == PF
        assert set(a.held) == {PF, *VFS}
        with pytest.raises(HarnessError):
            b.lease("vf1", "vf")          # every VF went with the PF
        with pytest.raises(HarnessError):
            a.lease("vf1", "vf")          # also for the holder itself: they are the PF's now


def test_pf_not_leased_while_one_of_its_vfs_is(tmp_path):
    with leases(tmp_path) as a:
        a.lease("vf1", "vf")
        with leases(tmp_path) as b:
            with pytest.raises(HarnessError):
                b.lease("pf1", "pf")
            assert b.held == {}
    # the failed PF attempt left no lock behind: with the VF free again the PF can be had
    with leases(tmp_path) as c:
        assert c.lease("pf1", "pf").pci == PF


def test_second_pf_is_free_when_the_first_is_partly_leased(tmp_path):
    nics = NICS + [HostNic(PF2, "pf", "enp5s0", None, "50"), HostNic("0000:05:10.0", "vf", None, PF2, "51")]
    with leases(tmp_path, nics) as a, leases(tmp_path, nics) as b:
        vf = a.lease("vf1", "vf").pci
        assert vf in VFS                                    # a VF of the first PF
        nic = b.lease("pf1", "pf")
        assert nic.pci == PF2
        assert set(b.held) == {PF2, "0000:05:10.0"}


def test_leases_released_on_exit_even_on_error(tmp_path):
    one_vf = [n for n in NICS if n.pci in (PF, VFS[0])]
    with pytest.raises(RuntimeError):
        with leases(tmp_path, one_vf) as a:
            assert a.lease("vf1", "vf").pci == VFS[0]
            raise RuntimeError("scenario failed")
    assert a.held == {}
    with leases(tmp_path, one_vf) as b:
        assert b.lease("vf1", "vf").pci == VFS[0]


def test_lease_waits_for_a_release(tmp_path):
    one_vf = [n for n in NICS if n.pci in (PF, VFS[0])]
    a = leases(tmp_path, one_vf)
    a.lease("vf1", "vf")
    b = leases(tmp_path, one_vf, wait=0.2)
    t0 = time.monotonic()
    with pytest.raises(HarnessError, match="stayed leased"):
        b.lease("vf1", "vf")
    assert time.monotonic() - t0 >= 0.2
    a.__exit__(None, None, None)
    assert b.lease("vf1", "vf").pci == VFS[0]
    b.__exit__(None, None, None)


def test_lease_index(tmp_path):
    with leases(tmp_path) as a, leases(tmp_path) as b:
        i, j = a.lease_index("subnet", 250), a.lease_index("subnet", 250)
        k = b.lease_index("subnet", 250)
        assert len({i, j, k}) == 3 and all(0 <= x < 250 for x in (i, j, k))
    with leases(tmp_path) as c:
        assert c.lease_index("subnet", 250) == min(i, j, k)          # all released


def test_lease_index_with_no_wait_still_tries(tmp_path):
    # wait=0 used to skip the loop entirely and fail although every slot was free
    with leases(tmp_path, wait=0) as a:
        assert a.lease_index("subnet", 3) == 0


def test_lease_index_exhausted(tmp_path):
    with leases(tmp_path) as a, leases(tmp_path, wait=0) as b:
        assert [a.lease_index("slot", 2) for _ in range(2)] == [0, 1]
        with pytest.raises(HarnessError, match="no free slot slot among 2"):
            b.lease_index("slot", 2)
        assert b.lease_index("other", 2) == 0                        # prefixes are separate


# ---- separate processes (what pytest-xdist workers are) ----------------------------------------------------------------

def _run(target, args_for, n: int, monkeypatch) -> list:
    # forkserver: real separate processes like xdist workers, without a fresh interpreter per worker
    # ("fork" is not safe under xdist's threads). Python 3.11's forkserver ignores the parent's
    # sys.path when it preloads, so it gets the paths to this folder and the repo the old way.
    here = Path(__file__).resolve().parent
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(here), str(here.parent.parent),
                                                      os.environ.get("PYTHONPATH", "")]))
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["pytest", "_lease_workers"])   # children re-import __main__ (pytest)
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args_for(i), barrier, out)) for i in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return results


def test_processes_with_no_wait_get_distinct_vfs(tmp_path, monkeypatch):
    # four workers race for three VFs at the same moment: three distinct VFs, one clean failure
    res = _run(_lease_workers.hold_one_vf, lambda i: (str(tmp_path), NICS, 0.0, 0.3), 4, monkeypatch)
    ok = sorted(r[1] for r in res if r[0] == "ok")
    failed = [r[1] for r in res if r[0] == "failed"]
    assert ok == VFS
    assert failed == ["device 'vf1': all 3 vf devices stayed leased for 0 s"]


def test_processes_take_turns_on_one_vf(tmp_path, monkeypatch):
    # two workers, one VF, both willing to wait: both get it, never at the same time
    one_vf = [n for n in NICS if n.pci in (PF, VFS[0])]
    res = _run(_lease_workers.hold_one_vf, lambda i: (str(tmp_path), one_vf, 20.0, 0.2), 2, monkeypatch)
    assert [r[:2] for r in res] == [("ok", VFS[0]), ("ok", VFS[0])]
    (s1, e1), (s2, e2) = sorted((r[2], r[3]) for r in res)
    assert e1 <= s2, f"held together: {s1:.3f}-{e1:.3f} and {s2:.3f}-{e2:.3f}"


def test_processes_get_distinct_indices(tmp_path, monkeypatch):
    res = _run(_lease_workers.take_index, lambda i: (str(tmp_path),), 4, monkeypatch)
    assert sorted(res) == [0, 1, 2, 3]
