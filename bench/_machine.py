"""What every bench prints beside its figures: the CPU (model and flags), and how busy the machine was.

A rate measured on this 2-core box moves by 2x with what else runs (a cold process, another engineer's tests), so
each figure says where it was taken, and the benches warm, bracket and alternate their baselines (``bracketed``).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from typing import Callable


def cpu_description() -> str:
    """``CPU: <model name>, N CPUs; flags: …`` from lscpu (or /proc/cpuinfo where lscpu is missing)."""
    fields: dict[str, str] = {}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    if "Flags" not in fields:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                for line in fh:
                    key, _, value = line.partition(":")
                    fields.setdefault({"model name": "Model name", "flags": "Flags"}.get(key.strip(), key.strip()),
                                      value.strip())
        except OSError:
            pass
    model = fields.get("Model name") or platform.processor() or "unknown"
    return f"CPU: {model}, {os.cpu_count()} CPUs; flags: {fields.get('Flags', 'unknown')}"


def load_average() -> str:
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "load average unknown"


def print_machine(label: str = "start") -> None:
    """The CPU line and the load average, flushed (run once at the start, and ``print_load('end')`` at the end)."""
    print(cpu_description(), flush=True)
    print_load(label)


def print_load(label: str) -> None:
    print(f"{label}: {load_average()} (2 CPUs busy = 2.0; other processes slow every figure)", flush=True)


def bracketed(baseline: Callable[[], float], measured: dict[str, Callable[[], float]], rounds: int,
              warmup: bool = True) -> tuple[list[float], dict[str, list[float]]]:
    """Seconds of ``baseline`` and of each ``measured`` run, alternating: baseline, every measured run, baseline, …,
    ending with a baseline, so each measured run has a baseline before and after it (drift shows as a spread of the
    baseline runs). ``warmup``: one baseline run first, not counted (a cold process runs its first half-minute at
    about half speed: allocator, oneDNN primitives, page cache)."""
    if warmup:
        baseline()
    base: list[float] = []
    runs: dict[str, list[float]] = {name: [] for name in measured}
    for _ in range(rounds):
        base.append(baseline())
        for name, run in measured.items():
            runs[name].append(run())
    base.append(baseline())
    return base, runs


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def spread(values: list[float]) -> str:
    """``median 12.3 s (min 11.9, max 14.0, n 5)``."""
    return (f"median {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f}, "
            f"n {len(values)})")
