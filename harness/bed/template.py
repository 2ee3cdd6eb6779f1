"""Warm start for QEMU beds: save one ready bed (RAM and devices to a file, its disk frozen), start later
beds from it in seconds instead of booting.

Why: a boot to libvirtd answering takes 50-100 s under TCG; loading ~500 MB of saved RAM takes ~2 s.

Capture (`capture`): right after a cold-booted bed first answers (pristine: no domain, network or file of
any run yet), a fresh template client key is authorized in it, the bed is paused (QMP `stop`, which
flushes its disk), its overlay is copied as the frozen template disk, the RAM + device state is written
with `migrate` to a `file:` URI, and the bed continues (`cont`) on its own overlay and drops the template
key again: the template costs that bed a pause of about a second, not a boot. Disk copy and RAM are taken
in the same stopped moment, so they match.

Restore (`restore`): a new bed gets a NEW qcow2 overlay whose backing file is the frozen template disk
(read-only, never written: no bed shares a writable disk), the same QEMU command line as the template's
(checked: `hardware_args`) started with `-incoming defer`, then `migrate-incoming` from the file and
`cont`. Its host-side parts (folder, name, hostfwd port, fw_cfg files) are its own. Then its secrets are
rotated: one SSH login with the template's client key, pinned to the template's host key, installs this
bed's own authorized_keys and host key (the same ones its fw_cfg holds, so a reboot keeps them), sets the
guest clock to the host's, and reloads sshd; then the bed's own pinning must work and the template's client
key must be refused. The vmgenid device (qemu.command) makes the guest kernel reseed its RNG on restore.

The store (key, layout, usability, pruning) is harness/bed/template_store.py.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

from filelock import Timeout

from harness.bed import qemu
from harness.bed import template_store as store
from harness.bed.image import Image
from harness.bed.qmp import QMP
from harness.bed.state import BedInfo
from harness.bed.template_store import FORMAT, Template, TemplateBusy, TemplateError
from harness.errors import HarnessError
from harness.progress import say

MIGRATE_TIMEOUT = 180.0
#: a restored bed that does not answer SSH with the template key within this is given up (cold boot)
RESTORE_SSH_TIMEOUT = 45.0
#: after the key rotation: the bed's own pinning must work and libvirtd answer within this
RESTORE_READY_TIMEOUT = 45.0
TEMPLATE_HOST_ALIAS = "hx-template"


class RestoreTimedOut(HarnessError):
    """The caller's own deadline ran out while starting from a template: not the template's fault."""



# ---- QMP helpers ---------------------------------------------------------------------------------

def _ok(reply: dict, what: str) -> dict:
    if "error" in reply:
        raise TemplateError(f"QMP {what}: {reply['error'].get('desc', reply['error'])}")
    return reply.get("return", {})


def _wait_migration(q: QMP, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        r = _ok(q.cmd("query-migrate"), "query-migrate")
        st = r.get("status")
        if st == "completed":
            return r
        if st in ("failed", "cancelled"):
            raise TemplateError(f"{what} {st}: {r.get('error-desc', 'no reason given')}")
        if time.monotonic() > deadline:
            raise TemplateError(f"{what}: not done after {timeout:.0f} s (status {st})")
        time.sleep(0.05)


# ---- SSH helpers ---------------------------------------------------------------------------------

#: Remote prologue of every synced command: the host sends its clock the moment the guest is listening,
#: so the guest clock is set to within the loopback latency (a restored or paused bed lags behind).
_CLOCK = 'set -eu; echo hx-ready; read -r T; date -u -s "@$T" >/dev/null; '

#: This bed's own keys replace the template's. Written under umask 077 from the start, moved into place;
#: authorized_keys holds this bed's key only, so the template's key is dropped. sshd reloads its host key
#: on SIGHUP (what `systemctl reload ssh` sends after an `sshd -t` that costs a second under TCG). While
#: that runs, a background check: libvirtd answers, and how many VFs the igb PF has.
_ROTATE = (
    "( if virsh -c qemu:///system version --daemon >/dev/null 2>&1; then echo hx-libvirtd=ok; "
    "else echo hx-libvirtd=no; fi; "
    "echo hx-vfs=$(cat /sys/class/net/*/device/sriov_numvfs 2>/dev/null | sort -n | tail -1) ) "
    "> /run/hx-check.out 2>&1 & C=$!; "
    "read -r AK; read -r HK; read -r HP; umask 077; "
    "printf %s \"$AK\" | base64 -d > /root/.ssh/authorized_keys.hx-new; "
    "printf %s \"$HK\" | base64 -d > /etc/ssh/ssh_host_ed25519_key.hx-new; "
    "printf %s \"$HP\" | base64 -d > /etc/ssh/ssh_host_ed25519_key.pub.hx-new; "
    "chmod 644 /etc/ssh/ssh_host_ed25519_key.pub.hx-new; "
    "mv -f /root/.ssh/authorized_keys.hx-new /root/.ssh/authorized_keys; "
    "mv -f /etc/ssh/ssh_host_ed25519_key.hx-new /etc/ssh/ssh_host_ed25519_key; "
    "mv -f /etc/ssh/ssh_host_ed25519_key.pub.hx-new /etc/ssh/ssh_host_ed25519_key.pub; "
    "if [ -s /run/sshd.pid ]; then kill -HUP \"$(cat /run/sshd.pid)\"; else systemctl reload ssh; fi; "
    "wait $C || true; cat /run/hx-check.out; rm -f /run/hx-check.out; "
    "echo hx-hostkey=$(cat /etc/ssh/ssh_host_ed25519_key.pub); echo hx-done")


def parse_rotation(out: str) -> dict:
    """key=value lines the rotation printed (hx-libvirtd, hx-vfs, hx-hostkey)."""
    got = {}
    for line in out.splitlines():
        if line.startswith("hx-") and "=" in line:
            k, v = line.split("=", 1)
            got[k[3:]] = v.strip()
    return got


def run_synced(argv: list[str], script: str, lines: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run `_CLOCK + script` through `argv` (an ssh command line): set the guest clock from the host's,
    then feed `lines` on stdin. Bounded by `timeout` in all cases."""
    deadline = time.monotonic() + timeout
    p = subprocess.Popen(argv + [_CLOCK + script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        got = b""
        while b"hx-ready\n" not in got:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(argv, timeout)
            r, _, _ = select.select([p.stdout], [], [], left)
            if not r:
                continue
            chunk = os.read(p.stdout.fileno(), 4096)
            if not chunk:
                break            # ssh ended (refused, host key mismatch...): its stderr says why
            got += chunk
        if b"hx-ready\n" in got:
            p.stdin.write((f"{time.time():.6f}\n" + "".join(f"{x}\n" for x in lines)).encode())
        try:
            p.stdin.close()
        except BrokenPipeError:
            pass
        p.stdin = None          # communicate() must not touch it again
        out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        return subprocess.CompletedProcess(argv, p.returncode, (got + out).decode(errors="replace"),
                                           err.decode(errors="replace"))
    except BaseException:
        p.kill()
        p.wait()
        raise


def _template_ssh_config(bed: BedInfo, tpl: Template, known_hosts: Path) -> Path:
    """SSH as the template: its client key, its host key pinned; never a shared control master."""
    cfg = bed.path / "ssh_config.template"
    cfg.write_text(
        f"Host bed\n  HostName {bed.ssh_host}\n  Port {bed.ssh_port}\n  User {bed.ssh_user}\n"
        f"  IdentityFile {tpl.client_key}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {known_hosts}\n  StrictHostKeyChecking yes\n  HostKeyAlias {TEMPLATE_HOST_ALIAS}\n"
        "  GlobalKnownHostsFile /dev/null\n  BatchMode yes\n  LogLevel ERROR\n  ConnectTimeout 10\n"
        "  ServerAliveInterval 5\n  ServerAliveCountMax 3\n  ControlMaster no\n  ControlPath none\n")
    return cfg


def template_key_refused(bed: BedInfo, tpl: Template, timeout: float = 30) -> subprocess.CompletedProcess:
    """Log in with the template's client key, trusting only this bed's own host key: must fail with
    'Permission denied' (the bed's pinning works, and the template key is no longer authorized)."""
    return subprocess.run(
        ["ssh", "-F", "/dev/null", "-p", str(bed.ssh_port), "-i", str(tpl.client_key),
         "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={bed.known_hosts}",
         "-o", "StrictHostKeyChecking=yes", "-o", f"HostKeyAlias=hx-bed-{bed.name}",
         "-o", "GlobalKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
         "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "LogLevel=ERROR",
         f"{bed.ssh_user}@{bed.ssh_host}", "true"],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# ---- capture -------------------------------------------------------------------------------------

def capture(bed: BedInfo, img: Image, cmd: list[str], lock_timeout: float = 60.0) -> dict | None:
    """Save `bed` (just ready, pristine) as the template for its hardware, unless one exists. The bed keeps
    running on its own overlay after a pause of a few seconds. Returns what was done, or None if a
    template was already there. Never raises for a failed capture: the bed is fine, the template is not
    made (a warning says why)."""
    key, hw, qid, iid = store.key_for(bed, img, cmd)
    tpl = store.for_key(key)
    try:
        lk = store.lock(key)
        lk.acquire(timeout=lock_timeout)
    except Timeout:
        say(f"bed {bed.name}: another process is making template {key}; not waiting longer", warn=True)
        return None
    staging = store.templates_dir() / f".tmp-{key}-{os.getpid()}"
    try:
        why = store.usable(tpl, hw, qid, iid) if tpl.dir.exists() else None
        if tpl.dir.exists() and why is None:
            return None
        if tpl.dir.exists():
            store.discard_locked(tpl, why=why)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        # The template's own client key, authorized in the saved moment only: the origin bed drops it
        # again right after, so no running bed but a restore in progress accepts it.
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hx-template",
                        "-f", str(staging / "id_ed25519")], check=True, capture_output=True, umask=0o077)
        tpl_pub = (staging / "id_ed25519.pub").read_text().strip()
        (staging / "host_ed25519.pub").write_bytes((bed.path / "host_ed25519.pub").read_bytes())
        p = subprocess.run(bed.ssh_argv("umask 077; cat >> /root/.ssh/authorized_keys"), input=tpl_pub + "\n",
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise HarnessError(f"could not authorize the template key: {p.stderr.strip()[-300:]}")
        t0 = time.monotonic()
        try:
            # No TCP connection may be open into the guest at the saved moment: a bed started from it
            # would hold a dead sshd session. The bed's own control master reconnects on its next command.
            subprocess.run(["ssh", "-F", str(bed.ssh_config), "-O", "exit", "bed"], capture_output=True,
                           timeout=10)
            time.sleep(0.3)
            t0 = time.monotonic()
            stats = _save(bed, staging)
        finally:
            paused = time.monotonic() - t0
            _unauthorize(bed, tpl_pub)
        for f in ("disk.qcow2", "state.mig"):
            os.chmod(staging / f, 0o444)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + f"/{os.getpid()}/{time.monotonic_ns()}"
        meta = {"format": FORMAT, "key": key, "suite": bed.suite, "created": created, "origin_bed": bed.name,
                "hw": hw, "qemu": qid, "image": iid,
                "disk_id": store.file_id(staging / "disk.qcow2"), "state_id": store.file_id(staging / "state.mig"),
                "state_bytes": (staging / "state.mig").stat().st_size, "paused_s": round(paused, 2),
                "migrate": stats}
        (staging / "meta.json").write_text(json.dumps(meta, indent=2))
        os.rename(staging, tpl.dir)
    except (HarnessError, OSError, ValueError, subprocess.SubprocessError) as e:
        shutil.rmtree(staging, ignore_errors=True)
        say(f"bed {bed.name}: could not save it as a template ({getattr(e, 'message', e)}); "
            "later beds boot cold", warn=True)
        return None
    finally:
        if lk.is_locked:
            lk.release()
    for line in store.prune(keep=key):
        say(f"template {line}: removed")
    return {"template": key, "paused_s": round(paused, 2), "state_bytes": meta["state_bytes"]}


def _unauthorize(bed: BedInfo, pub: str) -> None:
    """After the save: the origin bed drops the template key again, and its clock (behind by the pause)
    is set. A failure is loud: that bed would keep accepting the template key."""
    script = ('read -r K; umask 077; grep -vxF -- "$K" /root/.ssh/authorized_keys > /root/.ssh/authorized_keys.hx-new '
              '|| true; mv -f /root/.ssh/authorized_keys.hx-new /root/.ssh/authorized_keys; '
              'if grep -qxF -- "$K" /root/.ssh/authorized_keys; then exit 3; fi; echo hx-done')
    try:
        p = run_synced(bed.ssh_argv(), script, [pub], timeout=60)
        ok = p.returncode == 0 and "hx-done" in p.stdout
        why = (p.stderr or p.stdout).strip()[-300:]
    except (subprocess.SubprocessError, OSError) as e:
        ok, why = False, str(e)
    if not ok:
        say(f"bed {bed.name}: could not remove the template key from its authorized_keys ({why}); "
            "it still accepts that key", warn=True)


def _save(bed: BedInfo, staging: Path) -> dict:
    """Pause, copy the overlay (flushed by the stop), write RAM + devices to a file, continue. The bed is
    continued whatever happens."""
    with QMP(str(bed.path / "qmp.sock"), timeout=30) as q:
        running = _ok(q.cmd("query-status"), "query-status").get("running")
        _ok(q.cmd("stop"), "stop")
        try:
            # The default 128 MiB/s cap would make the pause ~2x longer; nothing else shares this "link".
            q.cmd("migrate-set-parameters", **{"max-bandwidth": 8 << 30})
            shutil.copyfile(bed.path / "overlay.qcow2", staging / "disk.qcow2")
            _ok(q.cmd("migrate", uri=f"file:{staging / 'state.mig'}"), "migrate")
            r = _wait_migration(q, MIGRATE_TIMEOUT, "saving the bed's RAM")
            return {"total_ms": r.get("total-time"), "ram_bytes": (r.get("ram") or {}).get("transferred")}
        finally:
            if running:
                _ok(q.cmd("cont"), "cont")


# ---- restore -------------------------------------------------------------------------------------

def find(bed: BedInfo, img: Image, cmd: list[str]) -> tuple[Template | None, str]:
    """The usable template for this bed's hardware, or None and why not."""
    key, hw, qid, iid = store.key_for(bed, img, cmd)
    tpl = store.for_key(key)
    if not tpl.ready():
        return None, f"no template {key} yet"
    why = store.usable(tpl, hw, qid, iid)
    if why:
        store.discard(tpl, why=why)
        return None, f"template {key} was unusable ({why})"
    return tpl, ""


def restore(bed: BedInfo, img: Image, tpl: Template, deadline: float | None = None) -> dict:
    """Start `bed` from `tpl` (see the module doc), by `deadline` (time.monotonic()) if given. Raises
    TemplateError (or HarnessError) on any failure: the caller stops the QEMU, discards the template
    and cold-boots; RestoreTimedOut if the caller's deadline ran out first. Returns timings."""
    caller = deadline if deadline is not None else float("inf")

    def left(own: float) -> float:
        """Seconds to wait: `own` (this step's limit) or less if the caller's deadline comes first."""
        return max(0.0, min(own, caller - time.monotonic()))

    t0 = time.monotonic()
    overlay = qemu.overlay_path(bed)
    cmd = qemu.command(bed, img, overlay, incoming=True)
    key, hw, qid, iid = store.key_for(bed, img, cmd)
    if key != tpl.key:
        raise TemplateError(f"template {tpl.key} is not for this hardware ({key})")
    lk = store.lock(tpl.key)
    try:
        lk.acquire(timeout=left(60))
    except Timeout:
        raise (RestoreTimedOut if time.monotonic() >= caller else TemplateBusy)(
            f"template {tpl.key} stayed locked (another process is saving or discarding it)") from None
    q = None
    try:            # not discarded or replaced until QEMU has its files open
        why = store.usable(tpl, hw, qid, iid)
        if why:
            raise TemplateError(why)
        created = tpl.meta.get("created")
        bed.extra["template_created"] = created     # a failure discards this template, not a newer one
        qemu.create_overlay(overlay, str(tpl.disk), "qcow2")
        try:
            qemu.launch(bed, cmd)
        except HarnessError as e:
            raise TemplateBusy(e.message, hint=e.hint) from None
        bed.save()          # from here on, 'bed down' (or the next 'bed up') finds and stops this QEMU
        q = QMP(str(bed.path / "qmp.sock"), timeout=30)
        r = q.cmd("migrate-incoming", uri=f"file:{tpl.state}", **{"exit-on-error": False})
        if "error" in r and "exit-on-error" in str(r["error"]):       # QEMU < 9.1
            r = q.cmd("migrate-incoming", uri=f"file:{tpl.state}")
    except BaseException:
        if q is not None:
            q.close()
        raise
    finally:
        lk.release()
    try:
        with q:
            _ok(r, "migrate-incoming")
            _wait_migration(q, left(MIGRATE_TIMEOUT), "loading the template's RAM")
            t_load = time.monotonic()
            st = _ok(q.cmd("query-status"), "query-status")
            if not st.get("running"):
                _ok(q.cmd("cont"), "cont")
            st = _ok(q.cmd("query-status"), "query-status")
            if st.get("status") != "running":
                raise TemplateError(f"the restored bed is {st.get('status')!r}, not running")
        with contextlib.suppress(OSError):
            (tpl.dir / "last-used").touch()
        vfs, kh = _rotate(bed, tpl, lambda: left(t_load + RESTORE_SSH_TIMEOUT - time.monotonic()))
        t_keys = time.monotonic()
        wait_own_ssh(bed, tpl, left(RESTORE_READY_TIMEOUT))
    except TemplateError as e:
        if time.monotonic() >= caller:
            raise RestoreTimedOut(e.message) from e
        raise
    t_ready = time.monotonic()
    for f in (kh, bed.path / "ssh_config.template"):
        with contextlib.suppress(OSError):
            f.unlink()
    return {"load_s": round(t_load - t0, 2), "keys_s": round(t_keys - t_load, 2),
            "ready_s": round(t_ready - t_keys, 2), "total_s": round(t_ready - t0, 2), "vfs": vfs}


def _rotate(bed: BedInfo, tpl: Template, left) -> tuple[int, Path]:
    """One login as the template: this bed's own keys in, the template's out, the clock set, libvirtd and
    the VFs checked. `left()` says how long it may still try. Returns the VF count and the template's
    known_hosts file (removed by the caller once the bed's own pinning is proven)."""
    kh = bed.path / "known_hosts.template"
    pub = tpl.host_pub.read_text().split()
    kh.write_text(f"{TEMPLATE_HOST_ALIAS} {pub[0]} {pub[1]}\n")
    argv = ["ssh", "-F", str(_template_ssh_config(bed, tpl, kh)), "bed"]
    own_pub = (bed.path / "host_ed25519.pub").read_text().strip()
    b64 = [base64.b64encode(f.read_bytes()).decode() for f in
           (bed.path / "id_ed25519.pub", bed.path / "host_ed25519", bed.path / "host_ed25519.pub")]
    last = ""
    while True:
        if not qemu.alive(bed.pid):
            raise TemplateError("QEMU exited after the restore")
        if left() <= 0:
            raise TemplateError(f"no SSH answer with the template key ({last or 'no attempt finished'})")
        try:
            p = run_synced(argv, _ROTATE, b64, timeout=max(1.0, min(40.0, left())))
            if p.returncode == 0 and "hx-done" in p.stdout:
                break
            last = ((p.stderr or p.stdout).strip().splitlines() or [f"exit {p.returncode}"])[-1]
            if "verification failed" in last.lower() or "permission denied" in last.lower():
                raise TemplateError(f"the template login was refused: {last}")
        except subprocess.TimeoutExpired:
            last = "timed out"
        time.sleep(min(0.5, left()))
    got = parse_rotation(p.stdout)
    if own_pub.split()[:2] != got.get("hostkey", "").split()[:2]:
        raise TemplateError("the bed did not report its new host key after the rotation")
    if got.get("libvirtd") != "ok":
        raise TemplateError("libvirtd does not answer in the restored bed")
    vfs = got.get("vfs", "")
    if not vfs.isdigit() or int(vfs) < bed.vfs:
        raise TemplateError(f"the restored bed has {vfs or 'no'} VFs, want {bed.vfs}")
    return int(vfs), kh


def wait_own_ssh(bed: BedInfo, tpl: Template, timeout: float) -> None:
    """After the rotation: the bed's own pinned SSH works (this also opens its control master for what
    follows) and the template's client key is refused. Both probes run at once."""
    deadline = time.monotonic() + timeout
    last = ""
    refused = False
    while time.monotonic() < deadline:
        probe = subprocess.Popen(bed.ssh_argv("true"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 stdin=subprocess.DEVNULL, text=True)
        try:
            if not refused:
                r = template_key_refused(bed, tpl)
                err = r.stderr.lower()
                if r.returncode == 0:
                    raise TemplateError("the template's client key is still accepted after the rotation")
                if "verification failed" in err or "remote host identification has changed" in err:
                    raise TemplateError(f"the bed does not present its own host key: {r.stderr.strip()}")
                refused = "permission denied" in err
                if not refused:
                    last = f"template-key probe: {r.stderr.strip()}"
            out, err = probe.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except BaseException:
            probe.kill()
            probe.wait()
            raise
        if probe.returncode == 0 and refused:
            return
        if probe.returncode != 0:
            last = (err or out).strip()
            if "verification failed" in last.lower():
                raise TemplateError(f"the bed's own host key pinning failed: {last}")
        time.sleep(0.3)
    raise TemplateError(f"not ready with its own keys {timeout:.0f} s after the rotation ({last})")
