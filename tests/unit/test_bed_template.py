"""Warm-bed templates, the pure parts: which command lines match, the template key, staleness, pruning,
the synced SSH protocol (against a local shell), and key files that are never readable by others."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from harness.bed import launch_qemu, lifecycle, qemu, template, template_store
from harness.bed.image import Image
from harness.bed.state import BedInfo


def _bed(tmp_path: Path, name: str, port: int, **kw) -> BedInfo:
    d = tmp_path / "beds" / name
    return BedInfo(name=name, suite="trixie", via="qemu", dir=str(d), ssh_port=port, accel=kw.pop("accel", "tcg"),
                   **kw)


def _img(tmp_path: Path) -> Image:
    return Image(suite="trixie", key="trixie-0123456789ab", dir=tmp_path / "images" / "trixie-0123456789ab")


def _hw(bed: BedInfo, img: Image, incoming: bool = False, **kw) -> list[str]:
    cmd = qemu.command(bed, img, qemu.overlay_path(bed), incoming=incoming, **kw)
    return template_store.hardware_args(cmd, bed.dir, bed.name, bed.ssh_port)


# ---- which command lines match -------------------------------------------------------------------

def test_two_beds_of_the_same_hardware_have_the_same_hardware_args(tmp_path):
    img = _img(tmp_path)
    a, b = _bed(tmp_path, "hx-snap-a", 40001), _bed(tmp_path, "other", 51234)
    ha, hb = _hw(a, img), _hw(b, img, incoming=True)
    assert ha == hb
    joined = " ".join(ha)
    assert "hx-snap-a" not in joined and "40001" not in joined and str(a.path) not in joined
    assert "-incoming" not in hb and "defer" not in hb
    assert "hostfwd=tcp:127.0.0.1:{PORT}-:22" in joined and "hx-bed-{NAME}" in ha
    assert "file={BED}/overlay.qcow2,if=virtio,format=qcow2,cache=unsafe,discard=unmap" in ha
    # the fw_cfg key files are the bed's own (its folder), so they do not split templates
    assert "name=opt/harness/ssh_host_ed25519_key,file={BED}/host_ed25519" in ha


@pytest.mark.parametrize("change", [
    {"memory_mib": 2048}, {"cpus": 1}, {"vfs": 2}, {"accel": "kvm"},
])
def test_other_bed_settings_are_other_hardware(tmp_path, change):
    img = _img(tmp_path)
    base = _hw(_bed(tmp_path, "a", 40001), img)
    other = _hw(_bed(tmp_path, "b", 40002, **change), img)
    assert base != other


@pytest.mark.parametrize("layout", [{"pfs": 2}, {"e1000e": 1}, {"e1000e": 3}])
def test_another_nic_layout_is_other_hardware(tmp_path, layout):
    img = _img(tmp_path)
    assert _hw(_bed(tmp_path, "a", 40001), img) != _hw(_bed(tmp_path, "b", 40002), img, **layout)


def test_another_image_is_other_hardware(tmp_path):
    a = _bed(tmp_path, "a", 40001)
    other = Image(suite="trixie", key="trixie-ffffffffffff", dir=tmp_path / "images" / "trixie-ffffffffffff")
    assert _hw(a, _img(tmp_path)) != _hw(a, other)


def test_only_the_hostfwd_port_and_the_name_value_are_placeholders(tmp_path):
    img = _img(tmp_path)
    # port equal to the memory size, name equal to a word of the kernel command line
    bed = _bed(tmp_path, "root", 4096, memory_mib=4096)
    hw = _hw(bed, img)
    assert hw[hw.index("-m") + 1] == "4096"
    assert "root=LABEL=hx-bed-root" in hw[hw.index("-append") + 1]
    assert hw[hw.index("-name") + 1] == "hx-bed-{NAME}"
    assert _hw(_bed(tmp_path, "x", 4096, memory_mib=4096), img) == hw


def test_the_command_line_has_vmgenid_so_restored_guests_reseed(tmp_path):
    cmd = qemu.command(_bed(tmp_path, "a", 1), _img(tmp_path), "/x.qcow2")
    assert cmd[cmd.index("vmgenid") - 1] == "-device"
    assert qemu.command(_bed(tmp_path, "a", 1), _img(tmp_path), "/x.qcow2", incoming=True)[-2:] == \
        ["-incoming", "defer"]


# ---- the key and compatibility -------------------------------------------------------------------

def test_template_key_is_stable_and_changes_with_each_input():
    hw, q, i = ["qemu-system-x86_64", "-m", "4096"], "QEMU 10.0.2|1|2", {"key": "k", "built": "t1"}
    k = template_store.template_key("trixie-abc", hw, q, i)
    assert k == template_store.template_key("trixie-abc", list(hw), q, dict(i))
    assert k.startswith("trixie-abc-") and len(k.split("-")[-1]) == 12
    assert template_store.template_key("trixie-abc", hw + ["-smp", "1"], q, i) != k
    assert template_store.template_key("trixie-abc", hw, "QEMU 10.0.3|1|2", i) != k
    assert template_store.template_key("trixie-abc", hw, q, {"key": "k", "built": "t2"}) != k


def _meta(hw, q="Q", img=None):
    return {"format": template_store.FORMAT, "suite": "trixie", "hw": hw, "qemu": q, "image": img or {"key": "k"}}


def test_compatible_names_what_differs():
    hw = ["qemu-system-x86_64", "-m", "4096", "-smp", "2"]
    assert template_store.compatible(_meta(hw), hw, "Q", {"key": "k"}) is None
    assert "command line differs" in template_store.compatible(_meta(hw), hw[:2] + ["2048"] + hw[3:], "Q", {"key": "k"})
    assert "'4096' != '2048'" in template_store.compatible(_meta(hw), hw[:2] + ["2048"] + hw[3:], "Q", {"key": "k"})
    assert "another QEMU" in template_store.compatible(_meta(hw), hw, "Q2", {"key": "k"})
    assert "image changed" in template_store.compatible(_meta(hw), hw, "Q", {"key": "k", "built": "x"})
    assert "format" in template_store.compatible(dict(_meta(hw), format=0), hw, "Q", {"key": "k"})


def test_image_identity_changes_when_the_image_is_rebuilt(tmp_path):
    img = _img(tmp_path)
    img.dir.mkdir(parents=True)
    for f in (img.disk, img.kernel, img.initrd):
        f.write_bytes(b"x")
    (img.dir / "manifest.json").write_text(json.dumps({"built": "2026-01-01T00:00:00Z"}))
    a = template_store.image_identity(img)
    (img.dir / "manifest.json").write_text(json.dumps({"built": "2026-01-02T00:00:00Z"}))
    assert template_store.image_identity(img) != a
    b = template_store.image_identity(img)
    img.disk.write_bytes(b"yy")
    assert template_store.image_identity(img) != b


def _fake_template(root: Path, key: str, hw, q="Q", img=None) -> template_store.Template:
    d = root / key
    d.mkdir(parents=True)
    for f in ("disk.qcow2", "state.mig", "host_ed25519.pub"):
        (d / f).write_bytes(b"data-" + f.encode())
    template_store.write_private(d / "id_ed25519", b"key")
    tpl = template_store.Template(key=key, dir=d)
    meta = dict(_meta(hw, q, img), created="c1", disk_id=template_store.file_id(tpl.disk),
                state_id=template_store.file_id(tpl.state))
    tpl.meta_file.write_text(json.dumps(meta))
    return tpl


def test_a_template_whose_files_changed_is_not_usable(tmp_path):
    hw = ["qemu-system-x86_64"]
    tpl = _fake_template(tmp_path, "k1", hw)
    assert template_store.usable(tpl, hw, "Q", {"key": "k"}) is None
    os.chmod(tpl.state, 0o644)
    time.sleep(0.01)
    tpl.state.write_bytes(b"truncated")
    assert "state.mig changed" in template_store.usable(tpl, hw, "Q", {"key": "k"})
    tpl2 = _fake_template(tmp_path, "k2", hw)
    tpl2.client_key.unlink()
    assert "keys are missing" in template_store.usable(tpl2, hw, "Q", {"key": "k"})
    tpl3 = _fake_template(tmp_path, "k3", hw)
    tpl3.meta_file.write_text("{")
    assert "unreadable meta.json" in template_store.usable(tpl3, hw, "Q", {"key": "k"})


def test_discard_removes_only_the_template_it_was_asked_to(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    root = template_store.templates_dir()
    tpl = _fake_template(root, "k1", ["q"])
    assert template_store.discard(tpl, created="not-this-one") is False       # a newer template stays
    assert tpl.ready()
    assert template_store.discard(tpl, created="c1") is True
    assert not tpl.dir.exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".trash-")]


def test_prune_drops_templates_of_gone_images_and_keeps_the_most_recent(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    root = template_store.templates_dir()
    img = Image(suite="trixie", key="trixie-aaaaaaaaaaaa", dir=tmp_path / "images" / "trixie-aaaaaaaaaaaa")
    img.dir.mkdir(parents=True)
    for f in (img.disk, img.kernel, img.initrd):
        f.write_bytes(b"x")
    (img.dir / "manifest.json").write_text(json.dumps({"built": "b1"}))
    ident = template_store.image_identity(img)
    gone = _fake_template(root, "gone", ["q"], img={"key": "trixie-000000000000"})
    old_format = _fake_template(root, "old-format", ["q"], img=ident)
    meta = json.loads(old_format.meta_file.read_text())
    old_format.meta_file.write_text(json.dumps(dict(meta, format=template_store.FORMAT - 1)))
    rebuilt = _fake_template(root, "rebuilt", ["q"], img=dict(ident, built="b0"))
    kept = []
    for i in range(template_store.MAX_TEMPLATES + 2):
        t = _fake_template(root, f"t{i}", ["q", str(i)], img=ident)
        (t.dir / "last-used").touch()
        os.utime(t.dir / "last-used", (1000 + i, 1000 + i))
        kept.append(t)
    (root / ".tmp-x-999999999").mkdir()          # staging of a dead process
    removed = template_store.prune()
    assert not gone.dir.exists() and not rebuilt.dir.exists() and not old_format.dir.exists()
    assert not (root / ".tmp-x-999999999").exists()
    alive = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert alive == sorted(t.key for t in kept[-template_store.MAX_TEMPLATES:])
    assert any("least recently used" in r for r in removed) and any("image is gone" in r for r in removed)


def test_parse_rotation():
    out = "hx-ready\nhx-libvirtd=ok\nhx-vfs=4\nhx-hostkey=ssh-ed25519 AAAA hx-host_ed25519\nhx-done\n"
    assert template.parse_rotation(out) == {"libvirtd": "ok", "vfs": "4",
                                            "hostkey": "ssh-ed25519 AAAA hx-host_ed25519"}


# ---- the synced command protocol, against a local shell with a fake `date` -----------------------

def test_run_synced_sends_the_host_clock_then_the_lines(tmp_path, monkeypatch):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "date").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/date.args\n')
    (bin_ / "date").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:{os.environ['PATH']}")
    before = time.time()
    p = template.run_synced(["sh", "-c"], 'read -r A; read -r B; echo "got=$A,$B"', ["one", "two"], timeout=20)
    assert p.returncode == 0, p.stderr
    assert "got=one,two" in p.stdout
    args = (tmp_path / "date.args").read_text().split()
    assert args[:2] == ["-u", "-s"] and args[2].startswith("@")
    assert before - 1 <= float(args[2][1:]) <= time.time() + 1


def test_run_synced_returns_when_the_remote_side_fails_at_once():
    # like ssh refusing the login: the remote script never runs (argv's own command ignores it)
    p = template.run_synced(["sh", "-c", "echo refused >&2; exit 255", "ignored"], "", [], timeout=20)
    assert p.returncode == 255 and "refused" in p.stderr


def test_run_synced_is_bounded():
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        template.run_synced(["sh", "-c", "sleep 30", "x"], "", [], timeout=1)
    assert time.monotonic() - t0 < 10


# ---- secrets are never readable by others --------------------------------------------------------

@pytest.fixture
def wide_umask():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_write_private_is_0600_from_the_start_and_never_overwrites(tmp_path, wide_umask):
    f = tmp_path / "k"
    template_store.write_private(f, b"secret")
    assert stat.S_IMODE(f.stat().st_mode) == 0o600 and f.read_bytes() == b"secret"
    with pytest.raises(FileExistsError):
        template_store.write_private(f, b"other")
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    with pytest.raises(OSError):
        template_store.write_private(tmp_path / "link", b"x")
    assert not (tmp_path / "elsewhere").exists()


def test_bed_keys_are_created_private_even_under_a_wide_umask(tmp_path, monkeypatch, wide_umask):
    """A fake ssh-keygen that writes like any program would (mode from the umask) and records the modes
    it saw while writing: the bed folder must already be 0700 and the key files 0600."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "modes"
    (bin_ / "ssh-keygen").write_text(
        "#!/bin/sh\nwhile [ $# -gt 1 ]; do [ \"$1\" = -f ] && f=$2; shift; done\n"
        f'echo "dir $(stat -c %a "$(dirname "$f")")" >> {log}\n'
        'echo private > "$f"; echo public > "$f.pub"\n'
        f'echo "key $(stat -c %a "$f") pub $(stat -c %a "$f.pub")" >> {log}\n')
    (bin_ / "ssh-keygen").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:{os.environ['PATH']}")
    d = lifecycle._new_bed_dir("hx-unit-keys")
    lifecycle._make_keys(d)
    lines = log.read_text().splitlines()
    assert lines.count("dir 700") == 2
    assert lines.count("key 600 pub 600") == 2
    for name in ("id_ed25519", "host_ed25519"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600


def test_real_ssh_keygen_keys_are_private(tmp_path, monkeypatch, wide_umask):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    d = lifecycle._new_bed_dir("hx-unit-real-keys")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    lifecycle._make_keys(d)
    for name in ("id_ed25519", "host_ed25519"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600
        assert (d / f"{name}.pub").read_text().startswith("ssh-ed25519 ")


def test_new_bed_dir_replaces_an_old_one(tmp_path, monkeypatch, wide_umask):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    d = lifecycle._new_bed_dir("hx-unit-dir")
    (d / "old").write_text("x")
    d.chmod(0o755)
    d2 = lifecycle._new_bed_dir("hx-unit-dir")
    assert d2 == d and not (d / "old").exists() and stat.S_IMODE(d.stat().st_mode) == 0o700


@pytest.mark.parametrize("env,arg,want", [
    (None, None, False), ("1", None, True), ("0", None, False), ("", None, False), ("yes", None, True),
    ("1", False, False), (None, True, True),
])
def test_cold_boot_is_forced_by_the_argument_or_HX_BED_COLD(monkeypatch, env, arg, want):
    if env is None:
        monkeypatch.delenv("HX_BED_COLD", raising=False)
    else:
        monkeypatch.setenv("HX_BED_COLD", env)
    assert launch_qemu.cold_forced(arg) is want
