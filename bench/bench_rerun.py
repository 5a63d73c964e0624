"""Issue 16 benchmark: wall time of a CLI re-run (a new process) over a folder that was already classified.

    python bench/bench_rerun.py [--images 256] [--repeats 3]

A 256-JPEG folder is classified once through the CLI with a seeded random-init ViT-B/32 saved as a local-dir:
model (fp32). Then, alternating ``--repeats`` times, each in a new process: ``python -c "import torch"`` (what
any run that needs the model pays first), a re-run with the same classes (every image and text feature is in the
store: no model is built and, the default head scoring numpy arrays, neither torch nor open_clip nor transformers
is imported), the same re-run with FuDD and a pairs file (its re-rank scores tensors: torch is imported, no model
is built), a re-run with classes never seen before (the text features are missing: the model is built), and
``vlmcls --help``. Medians are printed. Target: same classes <= 1.5 s wall.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

LABELS = "cat,dog,car,tree,house,bird,boat,flower,person,horse"

# The CLI in a new interpreter, then which model backends that process imported.
CLI_AND_MODULES = """
import json, sys
from vlmcls.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    backends = ("open_clip", "transformers", "onnxruntime", "torch")
    print("MODULES=" + json.dumps(sorted(m for m in backends if m in sys.modules)), file=sys.stderr)
"""


def run(cmd: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}… failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, proc.stderr


def modules(stderr: str) -> list[str]:
    return json.loads([ln for ln in stderr.splitlines() if ln.startswith("MODULES=")][-1][len("MODULES="):])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from _machine import print_machine

    print_machine()  # the CPU model and flags, and how busy the machine is, with every figure
    from bench_classify import make_jpegs
    from bench_ray import save_random_vit_b32

    work = Path(tempfile.mkdtemp(prefix="vlmcls-bench-rerun-"))
    make_jpegs(work / "images", args.images)
    model = save_random_vit_b32(work / "vit_b32")
    env = {**os.environ, "VLMCLS_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    py = sys.executable

    def classify(classes: str) -> list[str]:
        return [py, "-c", CLI_AND_MODULES, "classify", str(work / "images"), "--classes", classes, "--model", model,
                "-q", "-o", str(work / "out.jsonl")]

    demo = ROOT / "vlmcls" / "data" / "demo"
    main_job = [py, "-c", CLI_AND_MODULES, "classify", str(demo / "images"), "--classes", str(demo / "classes.txt"),
                "--method", "fudd", "--descriptors", str(demo / "descriptors.json"), "--pairs", str(demo / "pairs.json"),
                "--model", f"local-dir:{ROOT / 'vlmcls' / 'data' / 'demo_model'}", "-q", "-o", str(work / "fudd.jsonl")]
    t_first, err = run(classify(LABELS), env)
    print(f"first run (encodes {args.images} images): {t_first:.1f} s; imported {modules(err)}", flush=True)
    run(main_job, env)
    times: dict[str, list[float]] = {"import torch": [], "same classes": [], "README job (fudd)": [],
                                     "other classes": [], "--help": []}
    imported: dict[str, list[str]] = {}
    for r in range(args.repeats):
        times["import torch"].append(run([py, "-c", "import torch"], env)[0])
        t, err = run(classify(LABELS), env)
        times["same classes"].append(t)
        imported["same classes"] = modules(err)
        t, err = run(main_job, env)
        times["README job (fudd)"].append(t)
        imported["README job (fudd)"] = modules(err)
        fresh = ",".join(f"{name} no{r}" for name in LABELS.split(","))  # never encoded: the model must load
        t, err = run(classify(fresh), env)
        times["other classes"].append(t)
        imported["other classes"] = modules(err)
        times["--help"].append(run([py, "-m", "vlmcls", "--help"], env)[0])
    for name, values in times.items():
        extra = f"; imported {imported[name]}" if name in imported else ""
        print(f"{name:18s} {statistics.median(values):6.2f} s  runs {['%.2f' % v for v in values]}{extra}")
    same = statistics.median(times["same classes"])
    print(f"re-run, same classes: {same:.2f} s wall (target <= 1.5 s); importing torch alone takes "
          f"{statistics.median(times['import torch']):.2f} s", flush=True)


if __name__ == "__main__":
    main()
