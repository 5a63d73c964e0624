"""vlmcls beside CLIP_benchmark on the same shards: field names, types and values of their output JSON.

    pip install clip-benchmark                       # in its own environment (it pins its own torch)
    python bench/compare_clip_benchmark.py --clip-benchmark-python /path/to/that/env/bin/python

Offline, on CPU, in about a minute: the demo world is packed as webdataset shards in CLIP_benchmark's layout
(``test/{0..3}.tar``, ``test/nshards.txt``, ``classnames.txt``, ``zeroshot_classification_templates.txt``), then

- CLIP_benchmark's own CLI (``clip_benchmark eval --dataset wds/demo --model local-dir:vlmcls/data/demo_model``)
  scores it with its zero-shot classifier (mean of the normalised template embeddings, 100 · cosine logits);
- ``vlmcls eval wds:... --methods templates --clip-benchmark-json`` scores it with the same model, classes and
  templates (read from the layout);
- both files are compared: the same keys, the same JSON types, acc1 / acc5 / mean_per_class_recall within
  ``--tolerance``; and ``clip_benchmark build`` must aggregate both files into one CSV.

CLIP_benchmark 1.6.2's ``accuracy`` calls ``float()`` on a one-element array, which NumPy 2 refuses (TypeError);
the CLIP_benchmark side runs with that one function replaced by the same sum taken with ``.item()``. Exit code 1
when anything differs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = "local-dir:" + str(ROOT / "vlmcls" / "data" / "demo_model")
METRICS = ("acc1", "acc5", "mean_per_class_recall")


def run_clip_benchmark(argv: list[str]) -> None:
    """CLIP_benchmark's CLI in this process (run by its own Python), with NumPy 2's float() fix applied."""
    import torch
    from clip_benchmark import cli
    from clip_benchmark.metrics import zeroshot_classification

    def accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[float]:
        pred = output.topk(max(topk), 1, True, True)[1].t()  # [k, N]
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]

    zeroshot_classification.accuracy = accuracy
    sys.argv = ["clip_benchmark", *argv]
    cli.main()


def pack(root: Path) -> Path:
    """The demo world as CLIP_benchmark's shards under ``root/wds``; the same JPEG bytes as a folder beside."""
    sys.path.insert(0, str(ROOT / "tests"))
    import shardgen

    samples = shardgen.demo_as_jpeg_folder(root / "folder")
    return shardgen.write_clip_benchmark(root / "wds", samples, shards=4)


def compare(theirs: dict, ours: dict, tolerance: float) -> list[str]:
    """What differs between CLIP_benchmark's object and vlmcls's (vlmcls_method, vlmcls' own, left out)."""
    problems = []
    ours = {k: v for k, v in ours.items() if k != "vlmcls_method"}
    if set(theirs) != set(ours):
        problems.append(f"keys: CLIP_benchmark {sorted(theirs)} vs vlmcls {sorted(ours)}")
    for key in sorted(set(theirs) & set(ours)):
        if type(theirs[key]) is not type(ours[key]):
            problems.append(f"type of '{key}': CLIP_benchmark {type(theirs[key]).__name__} vs vlmcls "
                            f"{type(ours[key]).__name__}")
    mine, their = ours.get("metrics", {}), theirs.get("metrics", {})
    for name in METRICS:
        a, b = their.get(name), mine.get(name)
        if type(a) is not type(b):
            problems.append(f"type of metrics.{name}: {type(a).__name__} vs {type(b).__name__}")
        elif isinstance(a, float) and not (math.isclose(a, b, abs_tol=tolerance) or (math.isnan(a) and math.isnan(b))):
            problems.append(f"metrics.{name}: CLIP_benchmark {a:.6f} vs vlmcls {b:.6f}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip-benchmark-python", required=True,
                        help="the Python of an environment where `pip install clip-benchmark` was run")
    parser.add_argument("--out", type=Path, help="keep the shards and both JSON files here (default: a temp folder)")
    parser.add_argument("--tolerance", type=float, default=1e-9, help="absolute, on each metric")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        wds = pack(out)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        theirs_file, ours_file = out / "clip_benchmark.json", out / "vlmcls.json"
        subprocess.run([args.clip_benchmark_python, __file__, "--as-clip-benchmark", "eval", "--dataset", "wds/demo",
                        "--dataset_root", str(wds), "--task", "zeroshot_classification", "--model", DEMO_MODEL,
                        "--pretrained", "", "--output", str(theirs_file), "--batch_size", "16", "--num_workers", "0",
                        "--no_amp"], check=True, env=env, cwd=out)
        subprocess.run([sys.executable, "-m", "vlmcls", "eval", f"wds:{wds}/test/{{0..3}}.tar", "--model", DEMO_MODEL,
                        "--methods", "templates", "--device", "cpu", "-q", "-o", str(out / "eval.json"),
                        "--clip-benchmark-json", str(ours_file)], check=True, env={**env, "PYTHONPATH": str(ROOT)},
                       cwd=ROOT)
        theirs, ours = (json.loads(f.read_text()) for f in (theirs_file, ours_file))
        print(f"{'':24}{'CLIP_benchmark':>16}{'vlmcls':>16}")
        for name in METRICS:
            print(f"{name:24}{theirs['metrics'][name]:>16.6f}{ours['metrics'][name]:>16.6f}")
        for key in sorted(set(theirs) | set(ours)):
            if key != "metrics":
                print(f"{key:24}{json.dumps(theirs.get(key, '—')):>16}  {json.dumps(ours.get(key, '—'))}")
        problems = compare(theirs, ours, args.tolerance)
        build = subprocess.run([args.clip_benchmark_python, __file__, "--as-clip-benchmark", "build",
                                str(theirs_file), str(ours_file), "--output", str(out / "benchmark.csv")],
                               capture_output=True, text=True, env=env, cwd=out)
        if build.returncode != 0:
            problems.append("clip_benchmark build failed on the two files: "
                            + (build.stderr.strip().splitlines() or ["?"])[-1])
        else:
            print(f"clip_benchmark build: {len((out / 'benchmark.csv').read_text().splitlines()) - 1} rows")
    for problem in problems:
        print("DIFFERS:", problem)
    print("same fields, types and metrics" if not problems else f"{len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--as-clip-benchmark"]:
        run_clip_benchmark(sys.argv[2:])
    else:
        sys.exit(main())
