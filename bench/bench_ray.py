"""Issue 8 benchmark: throughput per worker of the Ray engine against the single-process engine.

    python bench/bench_ray.py [--images 256] [--workers 1,2] [--batch-size 32] [--ray-cpus N]

Both engines classify the same JPEGs with the same random-init, seeded ViT-B/32 (saved to a local-dir: folder, so
every Ray worker loads the very weights the driver has) and must give the same labels. The single-process engine
is timed with one torch thread (one worker's worth of compute) and with all cores, its model loaded beforehand.
A Ray run's wall time includes starting its actors and loading the model in each, so besides end-to-end throughput
the bench reports the engine's steady rate (``stats["steady_images_per_second"]``: rows finished after the first
batch over the time they took), and divides that by the number of actors.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

LABELS = ["cat", "dog", "car", "tree", "house", "bird", "boat", "flower", "person", "horse"]


def make_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Photo-sized JPEGs (gradient, blobs, mild noise), so decoding costs what a photo costs."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:375, 0:500]  # [H, W]
    paths = []
    for i in range(n):
        img = rng.uniform(0, 255, 3) + xx[..., None] * rng.uniform(-0.3, 0.3, 3) + yy[..., None] * rng.uniform(-0.3, 0.3, 3)
        for _ in range(4):
            cx, cy, r = rng.uniform(0, 500), rng.uniform(0, 375), rng.uniform(20, 120)
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
        pixels = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)  # [H, W, 3]
        path = folder / f"img_{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def save_random_vit_b32(folder: Path, seed: int = 0) -> str:
    """load_model('ViT-B-32') with seeded random weights, written as a local-dir: model every worker can load."""
    import json

    import open_clip
    from safetensors.torch import save_file

    from vlmcls.models import load_model

    torch.manual_seed(seed)
    backend = load_model("ViT-B-32", device="cpu")
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": open_clip.get_model_config("ViT-B-32"),
              "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD),
                                 "size": 224}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    state = {k: v.contiguous() for k, v in backend.model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return f"local-dir:{folder}"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--workers", default="1,2", help="comma-separated numbers of encoder actors to time")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ray-cpus", type=int, default=None,
                        help="logical CPUs given to Ray (default: cores, at least max(workers) + 1 so decoding can run)")
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]
    cores = os.cpu_count() or 1
    ray_cpus = args.ray_cpus or max(cores, max(worker_counts) + 1)
    logging.basicConfig(level=logging.WARNING)

    import ray

    from vlmcls.api import Classifier
    from vlmcls.distributed import classify_with_ray

    work = Path(tempfile.mkdtemp(prefix="vlmcls-bench-ray-"))
    os.environ["VLMCLS_CACHE"] = str(work / "cache")
    paths = make_jpegs(work / "images", args.images)
    model_id = save_random_vit_b32(work / "model")
    print(f"{args.images} JPEGs 500x375, ViT-B/32 random-init (seed 0), batch {args.batch_size}, "
          f"{cores} cores, Ray given {ray_cpus} logical CPUs, load average {os.getloadavg()[0]:.1f}")

    rows = []  # (engine, workers, seconds, images/s end-to-end, images/s steady, per worker)
    clf = Classifier(model_id, device="cpu", use_cache=False, batch_size=args.batch_size)
    clf.classify(paths[:4], LABELS)  # warm-up: text features, first-call allocations
    reference = None
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        seconds, result = timed(lambda: clf.classify(paths, LABELS))
        reference = reference or [p.label for p in result.predictions]
        rate = args.images / seconds
        rows.append((f"single-process, {threads} torch thread(s)", threads, seconds, rate, rate, rate / threads))
    torch.set_num_threads(1)  # the driver's share: text features only

    ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False)
    try:
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        for workers in worker_counts:
            seconds, result = timed(lambda: classify_with_ray(model_id, paths, LABELS, batch_size=args.batch_size,
                                                              num_workers=workers))
            same = [p.label for p in result.predictions] == reference
            steady = result.stats["steady_images_per_second"] or float("nan")
            rows.append((f"ray, {workers} actor(s){'' if same else ' (LABELS DIFFER)'}", workers, seconds,
                         args.images / seconds, steady, steady / workers))
    finally:
        ray.shutdown()

    base = rows[0][5]
    print(f"\n{'engine':<36}{'workers':>8}{'wall s':>9}{'img/s':>8}{'steady':>8}{'per worker':>12}{'vs 1 thread':>13}")
    for engine, workers, seconds, rate, steady, per_worker in rows:
        print(f"{engine:<36}{workers:>8}{seconds:>9.1f}{rate:>8.1f}{steady:>8.1f}{per_worker:>12.1f}{per_worker / base:>12.2f}x")
    print("\nsteady = images/s once the actors are up (Ray) or with the model loaded (single); per worker = steady /"
          "\nworkers (threads for single); the last column compares it with the single-process engine on one thread.")


if __name__ == "__main__":
    sys.exit(main())
