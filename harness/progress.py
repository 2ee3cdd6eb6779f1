"""Live progress for long work (image build, boot, scenario steps): timestamped lines on stderr.

Quiet in CI logs: with HARNESS_QUIET=1 only warnings are printed.
"""
from __future__ import annotations

import os
import sys
import time

_T0 = time.monotonic()


def say(msg: str, *, warn: bool = False) -> None:
    if os.environ.get("HARNESS_QUIET") == "1" and not warn:
        return
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp} +{time.monotonic() - _T0:6.1f}s] {'WARNING: ' if warn else ''}{msg}", file=sys.stderr, flush=True)
