"""Minimal QMP client for the bed's own QEMU (status, quit). Test domains are reached through
libvirt's qemu-monitor-command instead, never directly."""
from __future__ import annotations

import json
import socket


class QMP:
    def __init__(self, path: str, timeout: float = 5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.f = None
        try:
            self.sock.connect(path)
            self.f = self.sock.makefile("rw")
            json.loads(self.f.readline())  # greeting
            self.cmd("qmp_capabilities")
        except BaseException:
            self.close()
            raise

    def cmd(self, name: str, **args) -> dict:
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            msg = json.loads(self.f.readline())
            if "return" in msg or "error" in msg:
                return msg

    def close(self) -> None:
        # The makefile() object holds the socket open too: closing only the socket would keep the
        # connection (QEMU serves one QMP client at a time) until garbage collection.
        for c in (self.f, self.sock):
            if c is None:
                continue
            try:
                c.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
