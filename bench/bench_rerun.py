"""Issue 16 benchmark: wall time of a CLI re-run (a new process) over a folder that was already classified.

    python bench/bench_rerun.py [--images 256] [--repeats 3]

A 256-JPEG folder is classified once through the CLI with a seeded random-init ViT-B/32 saved as a local-dir:
model (fp32). Then, alternating ``--repeats`` times, each in a new process: ``python -c "import torch"`` (what
any run that needs the model pays first), a re-run with the same classes (every image and text feature is in the
store: no model is built and, the default head scoring numpy arrays, neither torch nor open_clip nor transformers
is imported), the same re-run with FuDD and a pairs file (its re-rank scores tensors: torch is imported, no model
is built), a re-run with classes never seen before (the text features are missing: the model is built), and
``vlmcls --help``. Each kind runs once first, not counted (page cache, .pyc files), then ``--repeats`` alternated
rounds with ``import torch`` (the baseline, for scale) run before and after every other run (bracketed); medians are
printed (``_timing.alternate``). Target: same classes <= 1.5 s wall.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import print_load, print_machine  # noqa: E402
from _timing import alternate  # noqa: E402

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
    imported: dict[str, list[str]] = {}
    fresh_names = itertools.count()

    def cli(name: str, command) -> callable:
        def go() -> float:
            t, err = run(command() if callable(command) else command, env)
            imported[name] = modules(err)
            return t
        return go

    def fresh() -> list[str]:  # classes never encoded: the model must load
        r = next(fresh_names)
        return classify(",".join(f"{name} no{r}" for name in LABELS.split(",")))

    rounds = alternate(lambda: run([py, "-c", "import torch"], env)[0],
                       {"same classes": cli("same classes", lambda: classify(LABELS)),
                        "README job (fudd)": cli("README job (fudd)", main_job),
                        "other classes": cli("other classes", fresh),
                        "--help": lambda: run([py, "-m", "vlmcls", "--help"], env)[0]},
                       args.repeats, name="import torch", warm_measured=True)
    for name in ["import torch", *rounds.runs]:
        extra = f"; imported {imported[name]}" if name in imported else ""
        print(f"{name:18s} {rounds.median(name):6.2f} s  {rounds.describe(name)}{extra}")
    print(f"({rounds.method()}; import torch drift max/min {rounds.drift():.2f})")
    same = rounds.median("same classes")
    print(f"re-run, same classes: {same:.2f} s wall (target <= 1.5 s); importing torch alone takes "
          f"{rounds.median():.2f} s", flush=True)
    print_load("end")


if __name__ == "__main__":
    main()
