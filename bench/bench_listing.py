"""Listing a huge folder: wall time and peak resident memory of `list_images` and of a whole `classify` run.

    PYTHONPATH=. python bench/bench_listing.py --files 100000 1000000 [--tiny] [--classify] [--tree OTHER_CHECKOUT]

Makes N empty (or, with --tiny, 67-byte PNG) files in 100 class folders under a temp folder, then runs each
measured step in a fresh Python process (so its peak RSS is its own; `ru_maxrss` of the child) for this checkout and,
with --tree, another checkout side by side (the "before", the baseline). `classify` uses the shipped demo model on CPU;
with empty files every row is an error row, which is the path issue 27 measured (10^5 empty files: 10 s, 1.2 GB).
The baseline tree (the first --tree, else this checkout) runs once first, not counted, then ``--repeats`` rounds
alternate it with the other trees and it runs once more at the end (``_timing.alternate``); medians of each step's
seconds and peak memory are printed, with every run's JSON.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import print_load, print_machine  # noqa: E402
from _timing import alternate  # noqa: E402

_TINY_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")

_LIST = """
import resource, sys, time
from vlmcls.sources.listing import list_images
started = time.perf_counter()
records = list_images(sys.argv[1])
print(len(records), time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def make_folder(root: Path, n: int, tiny: bool) -> None:
    data = _TINY_PNG if tiny else b""
    per = max(1, n // 100)
    for i in range(n):
        folder = root / f"class{i // per:03d}"
        if i % per == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{i:07d}.png").write_bytes(data)


def measure(tree: Path, folder: Path, classify: bool, scratch: Path) -> dict[str, object]:
    """Each step in its own grandchild, so RUSAGE_CHILDREN's max is that step's peak."""
    result: dict[str, object] = {}
    steps = {"list_images": ["-c", _LIST, str(folder)]}
    if classify:
        steps["classify"] = ["-m", "vlmcls", "classify", str(folder), "--classes", "cat,dog", "--model",
                             "local-dir:vlmcls/data/demo_model", "--device", "cpu", "-o",
                             str(scratch / "out.jsonl"), "--quiet"]
    for name, args in steps.items():
        probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
                 "p = subprocess.run([sys.executable, *sys.argv[1:]], capture_output=True, text=True); "
                 "print(round(time.perf_counter() - t, 2), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss "
                 "// 1024, p.returncode, (p.stdout or p.stderr).strip()[-200:].replace(chr(10), ' '))")
        env = {**os.environ, "PYTHONPATH": str(tree), "VLMCLS_CACHE": str(scratch / "cache")}
        shutil.rmtree(scratch / "cache", ignore_errors=True)
        done = subprocess.run([sys.executable, "-c", probe, *args], cwd=tree, env=env, capture_output=True, text=True)
        fields = (done.stdout.strip().split(" ", 3) + ["", ""])[:4] if done.stdout.strip() else ["?", "?", "?", done.stderr[-300:]]
        seconds, peak_mb, rc, tail = fields
        result[name] = {"seconds": seconds, "peak_rss_mb": peak_mb, "exit": rc, "tail": tail[:120]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, nargs="+", default=[100_000])
    parser.add_argument("--tiny", action="store_true", help="tiny valid PNGs instead of empty files")
    parser.add_argument("--classify", action="store_true", help="also time a whole classify run")
    parser.add_argument("--tree", type=Path, action="append", default=[], help="another checkout to compare")
    parser.add_argument("--repeats", type=int, default=3, help="alternated rounds")
    options = parser.parse_args()
    print_machine()  # the CPU model and flags, and how busy the machine is, with every figure
    here = Path.cwd()
    trees = [*options.tree, here] if options.tree else [here]  # the baseline first
    for n in options.files:
        with tempfile.TemporaryDirectory(prefix="vlmcls-listing-") as tmp:
            folder = Path(tmp) / "photos"
            started = time.perf_counter()
            make_folder(folder, n, options.tiny)
            print(f"# {n:,} {'tiny PNG' if options.tiny else 'empty'} files made in {time.perf_counter() - started:.1f} s",
                  flush=True)
            for i in range(len(trees)):
                (Path(tmp) / f"scratch-{i}").mkdir()

            def step(i: int):
                def run() -> dict:
                    got = measure(trees[i], folder, options.classify, Path(tmp) / f"scratch-{i}")
                    print(json.dumps({"files": n, "tree": str(trees[i]), **got}), flush=True)
                    return got
                return run

            names = [f"{t} ({'this checkout' if t == here else 'before'})" for t in trees]
            rounds = alternate(step(0), {names[i]: step(i) for i in range(1, len(trees))}, options.repeats,
                               name=names[0], verbose=False)
            for i, name in enumerate(names):
                runs = rounds.baseline if i == 0 else rounds.runs[name]
                for what in runs[0]:
                    def number(field: str) -> str:
                        try:
                            return f"{statistics.median(float(r[what][field]) for r in runs):.2f}"
                        except ValueError:
                            return "?"
                    print(f"# {n:,} files, {name}: {what} median {number('seconds')} s, peak "
                          f"{number('peak_rss_mb')} MB ({len(runs)} runs)", flush=True)
            print(f"# ({rounds.method()})", flush=True)
    print_load("end")


if __name__ == "__main__":
    main()
