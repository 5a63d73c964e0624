"""What every bench prints beside its figures: the CPU (model and flags), and how busy the machine was.

A rate measured on this 2-core box moves by 2x with what else runs (a cold process, another engineer's tests), so
each figure says where it was taken, and the benches warm, bracket and alternate their baselines (``_timing``).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _timing, whoever imports this


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


def cpu_summary() -> str:
    """``AMD EPYC, 2 CPUs, avx512: yes, vnni: yes (avx512_vnni avx_vnni)``: what a README figure names its CPU by."""
    line = cpu_description()
    model, _, flags = line.partition("; flags: ")
    names = set(flags.split())
    vnni = sorted(f for f in names if "vnni" in f)
    avx512 = any(f.startswith("avx512") for f in names)
    return (f"{model.removeprefix('CPU: ')}, avx512: {'yes' if avx512 else 'no'}, "
            f"vnni: {'yes (' + ' '.join(vnni) + ')' if vnni else 'no'}")


def load_average() -> str:
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "load average unknown"


def print_machine(label: str = "start") -> None:
    """The CPU line and the load average, flushed (run once at the start, and ``print_load('end')`` at the end)."""
    print(cpu_description(), flush=True)
    print(f"CPU summary: {cpu_summary()}", flush=True)
    print_load(label)


def print_load(label: str) -> None:
    print(f"{label}: {load_average()} (2 CPUs busy = 2.0; other processes slow every figure)", flush=True)


# The timing logic lives in _timing.py; these names stay importable from here for older callers.
from _timing import bracketed, spread, timed  # noqa: E402,F401
