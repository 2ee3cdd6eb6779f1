"""The one description of a running bed that everything else consumes: URI, SSH facts, devices.

Nothing outside harness/bed knows whether the bed came from QEMU or Vagrant.
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness import paths

#: The bed's RAM. Why not more: QEMU (10.0) maps an igb VF's 64-bit BAR at the low 32 bits of its address
#: only. Firmware (SeaBIOS) puts 64-bit BARs above 4 GiB as soon as the VM has RAM there, which a q35 VM
#: of 2816 MiB or more has (RAM below 4 GiB stops at 2 GiB then). The VFs' registers were then out of
#: reach: the bed's igbvf driver waited 2 x 1 s for the PF's mailbox on every VF libvirt handed back (each
#: destroy or unplug of a VF), and a VF in a domain had no working registers. Up to 2815 MiB the whole RAM
#: sits below 4 GiB and so do the BARs. `harness bed status` checks it ("VF BARs below 4 GiB").
MEMORY_MIB = 2560
#: The largest bed whose RAM q35 keeps below 4 GiB (0xb0000000 bytes and up are split at 2 GiB).
LOW_MEMORY_MAX_MIB = 2815

#: The files of a bed's folder that everything else reaches through BedInfo.
BED_FILES = {"key_file": "id_ed25519", "known_hosts": "known_hosts", "ssh_config": "ssh_config",
             "ssh_wrapper": "ssh", "serial_log": "serial.log", "qemu_log": "qemu.log"}


@paths.with_files(**BED_FILES)
@dataclass
class BedInfo:
    name: str
    suite: str
    via: str                      # qemu | vagrant
    dir: str                      # per-bed folder: keys, known_hosts, logs, overlay
    ssh_host: str = "127.0.0.1"
    ssh_port: int = 0
    ssh_user: str = "root"
    accel: str = ""
    accel_reason: str = ""
    pid: int = 0                  # QEMU pid (qemu launcher)
    image_key: str = ""
    memory_mib: int = MEMORY_MIB
    cpus: int = 2
    vfs: int = 4
    started: str = ""
    extra: dict = field(default_factory=dict)

    # --- files -------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return Path(self.dir)

    @property
    def uri(self) -> str:
        """libvirt URI over SSH with the bed's host key pinned (the wrapper uses our known_hosts)."""
        return (f"qemu+ssh://{self.ssh_user}@{self.ssh_host}:{self.ssh_port}/system"
                f"?command={self.ssh_wrapper}&no_tty=1")

    def save(self) -> None:
        tmp = self.path / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, self.path / "state.json")

    def ssh_argv(self, *cmd: str) -> list[str]:
        return ["ssh", "-F", str(self.ssh_config), "bed", *cmd]

    def ssh(self, command: str, timeout: float = 60, check: bool = False,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run one shell command in the bed, `input` (if any) on its stdin. Always bounded by a timeout."""
        stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        return subprocess.run(self.ssh_argv(command), capture_output=True, text=True, timeout=timeout, check=check,
                              **stdin)

    def write_ssh_files(self) -> None:
        """ssh_config + wrapper: StrictHostKeyChecking with the per-bed known_hosts, never off."""
        self.ssh_config.write_text(
            f"Host bed {self.ssh_host}\n"
            f"  HostName {self.ssh_host}\n  Port {self.ssh_port}\n  User {self.ssh_user}\n"
            f"  IdentityFile {self.key_file}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts}\n  StrictHostKeyChecking yes\n"
            f"  HostKeyAlias hx-bed-{self.name}\n"
            "  GlobalKnownHostsFile /dev/null\n  BatchMode yes\n  LogLevel ERROR\n"
            "  ConnectTimeout 10\n  ServerAliveInterval 5\n  ServerAliveCountMax 3\n"
            f"  ControlMaster auto\n  ControlPath {self.path}/cm\n  ControlPersist 120\n"
            # Beds whose SSH port is not reachable from the host directly (the Vagrant bed lives in
            # a network namespace) name a ProxyCommand; the host key stays pinned either way.
            + (f"  ProxyCommand {self.extra['ssh_proxy_command']}\n" if self.extra.get("ssh_proxy_command") else ""))
        self.ssh_wrapper.write_text(f'#!/bin/sh\nexec ssh -F "{self.ssh_config}" "$@"\n')
        self.ssh_wrapper.chmod(0o755)


def bed_dir(name: str) -> Path:
    return paths.beds_dir() / name


def load(name: str) -> BedInfo | None:
    f = bed_dir(name) / "state.json"
    if not f.exists():
        return None
    data = json.loads(f.read_text())
    return BedInfo(**data)


def all_beds() -> list[BedInfo]:
    out = []
    for f in sorted(paths.beds_dir().glob("*/state.json")):
        b = load(f.parent.name)
        if b:
            out.append(b)
    return out
