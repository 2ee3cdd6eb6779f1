"""Shared bits for benchmarks: medians, environment facts, writing results/bench/*.json."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

from harness import paths


def median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 3) if xs else None


def env() -> dict:
    return {"host_kernel": platform.release(), "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write(name: str, data: dict) -> Path:
    out = paths.results_dir() / "bench"
    out.mkdir(parents=True, exist_ok=True)
    f = out / f"{name}.json"
    f.write_text(json.dumps(data, indent=2))
    print(json.dumps(data, indent=2))
    print(f"wrote {f}")
    return f
