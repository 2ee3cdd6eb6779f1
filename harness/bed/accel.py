"""Choose KVM or TCG for the bed, and say why.

/dev/kvm existing is not enough: on PVM-style hosts a stock Debian kernel stops at once with
"KVM internal error ... emulation failure". So we boot the bed's own kernel under KVM for a few
seconds and look: internal-error or a dead QEMU means TCG. The verdict is cached per host kernel
and bed kernel.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from harness import paths
from harness.bed.qmp import QMP


def detect(kernel: Path, forced: str | None = None) -> tuple[str, str]:
    if forced:
        return forced, f"forced by --accel {forced}"
    if not os.path.exists("/dev/kvm"):
        return "tcg", "no /dev/kvm on this host"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm is not accessible to this user"
    key = hashlib.sha256(f"{platform.release()}:{kernel.stat().st_size}:{kernel}".encode()).hexdigest()[:16]
    cache = paths.cache_dir() / "accel.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        accel, why = known[key]
        return accel, why + " (cached probe)"
    accel, why = _probe(kernel)
    known[key] = [accel, why]
    cache.write_text(json.dumps(known))
    return accel, why


def _probe(kernel: Path, seconds: float = 6.0) -> tuple[str, str]:
    with tempfile.TemporaryDirectory() as d:
        qmp_path = os.path.join(d, "qmp")
        serial = os.path.join(d, "serial")
        p = subprocess.Popen(
            ["qemu-system-x86_64", "-accel", "kvm", "-machine", "q35", "-cpu", "host", "-m", "512",
             "-nodefaults", "-display", "none", "-no-reboot", "-kernel", str(kernel),
             "-append", "console=ttyS0 panic=-1", "-serial", f"file:{serial}", "-qmp", f"unix:{qmp_path},server=on,wait=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + seconds
            status = "?"
            while time.monotonic() < deadline:
                if p.poll() is not None:
                    err = (p.stderr.read() or "").strip().splitlines()
                    return "tcg", f"KVM probe: QEMU exited at once ({err[-1] if err else 'no message'})"
                if os.path.exists(qmp_path):
                    try:
                        with QMP(qmp_path) as q:
                            status = q.cmd("query-status").get("return", {}).get("status", "?")
                    except OSError:
                        pass
                    if status == "internal-error":
                        return "tcg", "KVM probe: the bed kernel stops with a KVM internal error (emulation failure)"
                time.sleep(0.5)
            text = Path(serial).read_text(errors="replace") if os.path.exists(serial) else ""
            if "Linux version" in text and status == "running":
                return "kvm", "KVM probe: the bed kernel boots under KVM"
            return "tcg", f"KVM probe: the bed kernel did not print under KVM (status {status})"
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
