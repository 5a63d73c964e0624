"""Ray engine benchmarks.

Issue 12 (default): FuDD on Ray against the single-process engine, and a Ray re-run with other classes.

    python bench/bench_ray.py [--images 512] [--workers 1] [--batch-size 32] [--ray-cpus N]

Both engines run ``cbd+fudd`` (descriptor and pair files, so no LLM is needed) on the same JPEGs and must give the
same rows (labels identical, probabilities within 1e-5); the wall time of each is printed. Then Ray runs again
with other classes: every feature comes from the feature store (0 images encoded, no encoder actor started), and
the bench prints how much faster that second Ray run is than the first. The single engine is the baseline: run once
first, not counted, then ``--repeats`` rounds alternate it with the two Ray runs (each round's first Ray run on an
empty feature store) and it runs once more at the end, bracketing them (``_timing.alternate``); medians.

Issue 8 (``--throughput``): throughput per worker of the Ray engine against the single-process engine.

    python bench/bench_ray.py --throughput [--images 256] [--workers 1,2] [--batch-size 32] [--ray-cpus N]

Both engines classify the same JPEGs with the same random-init, seeded ViT-B/32 (saved to a local-dir: folder, so
every Ray worker loads the very weights the driver has) and must give the same labels. The single-process engine
is timed with one torch thread (one worker's worth of compute, the baseline: warmed, bracketing) and with all cores,
its model loaded beforehand, alternated with the Ray runs for ``--repeats`` rounds; medians.
A Ray run's wall time includes starting its actors and loading the model in each, so besides end-to-end throughput
the bench reports the engine's steady rate (``stats["steady_images_per_second"]``: rows finished after the first
batch over the time they took), and divides that by the number of actors.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import alternate  # noqa: E402

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

    from vlmcls.encode.models import load_model

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
    parser.add_argument("--throughput", action="store_true", help="issue 8's throughput-per-worker table instead")
    parser.add_argument("--images", type=int, default=None, help="default 512 (256 with --throughput)")
    parser.add_argument("--workers", default=None, help="comma-separated numbers of encoder actors to time "
                        "(default 1; 1,2 with --throughput)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ray-cpus", type=int, default=None,
                        help="logical CPUs given to Ray (default: cores, at least max(workers) + 1 so decoding can run)")
    parser.add_argument("--repeats", type=int, default=2, help="alternated rounds")
    args = parser.parse_args()
    from _machine import print_load, print_machine

    print_machine()  # the CPU model and flags, and how busy the machine is, with every figure
    if args.throughput:
        args.images, args.workers = args.images or 256, args.workers or "1,2"
        throughput(args)
    else:
        args.images, args.workers = args.images or 512, args.workers or "1"
        fudd_and_rerun(args)
    print_load("end")


LABELS_AGAIN = ["apple", "bridge", "camel", "desk", "eagle", "forest", "guitar", "harbour", "island", "jeep"]


def pair_file(path: Path, labels: list[str]) -> Path:
    """FuDD pair JSON for every pair of labels (three attributes each), as `vlmcls classify --pairs` reads it."""
    import json

    pairs = {}
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            pairs[f"{a}_{b}"] = {"classes": [a, b], "prompt_pairs": [
                {"attr_type": attr, "prompt_pair": [f"a photo of a {a} with a {attr} {a} {i} look.",
                                                    f"a photo of a {b} with a {attr} {b} look."]}
                for attr in ("shape", "colour", "texture")]}
    path.write_text(json.dumps(pairs))
    return path


def descriptor_file(path: Path, labels: list[str]) -> Path:
    import json

    path.write_text(json.dumps({c: [f"a {c}-like outline", f"the usual colours of a {c}", "seen outdoors"]
                                for c in labels}))
    return path


def same_rows(got, want) -> tuple[bool, float]:
    """(labels, errors and top-k classes identical; the largest probability difference)."""
    worst = 0.0
    for g, w in zip(got.predictions, want.predictions):
        if (g.label, g.error, [c for c, _ in g.top_k]) != (w.label, w.error, [c for c, _ in w.top_k]):
            return False, float("nan")
        worst = max([worst, *(abs(a - b) for (_, a), (_, b) in zip(g.top_k, w.top_k))])
    return len(got.predictions) == len(want.predictions), worst


def fudd_and_rerun(args) -> None:
    cores = os.cpu_count() or 1
    workers = int(args.workers.split(",")[0])
    ray_cpus = args.ray_cpus or max(cores, workers + 1)
    logging.basicConfig(level=logging.WARNING)

    import ray

    from vlmcls.api import Classifier
    from vlmcls.engines.ray import classify_with_ray
    from vlmcls.methods import MethodOptions

    work = Path(tempfile.mkdtemp(prefix="vlmcls-bench-ray-"))
    os.environ["VLMCLS_CACHE"] = str(work / "cache")
    paths = make_jpegs(work / "images", args.images)
    model_id = save_random_vit_b32(work / "model")
    spec = "cbd+fudd"
    runs = {}
    for name, labels in (("first", LABELS), ("again", LABELS_AGAIN)):
        runs[name] = MethodOptions(descriptors=str(descriptor_file(work / f"descriptors-{name}.json", labels)),
                                   methods={"fudd": {"pairs": str(pair_file(work / f"pairs-{name}.json", labels)),
                                                     "k": 5}})
    print(f"{args.images} JPEGs 500x375, ViT-B/32 random-init (seed 0), {spec} (k=5, 45 pairs, from files), batch "
          f"{args.batch_size}, {cores} cores, Ray given {ray_cpus} logical CPUs, {workers} encoder actor(s), "
          f"load average {os.getloadavg()[0]:.1f}")

    # The single engine, store off: it encodes every image, as the first Ray run must.
    single_clf = Classifier(model_id, device="cpu", use_cache=False, batch_size=args.batch_size)
    last: dict[str, object] = {}
    stores = iter(range(10**6))

    def keep(name, fn):
        def run() -> float:
            t, last[name] = timed(fn)
            return t
        return run

    def ray_first():
        last["store"] = work / f"feature-store-{next(stores)}"  # empty: every image is encoded
        return classify_with_ray(model_id, paths, LABELS, method=spec, options=runs["first"],
                                 batch_size=args.batch_size, num_workers=workers, feature_store=last["store"])

    ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        rounds = alternate(keep("single", lambda: single_clf.classify(paths, LABELS, method=spec, options=runs["first"])),
                           {"ray, first run": keep("ray", ray_first),
                            "ray, again": keep("again", lambda: classify_with_ray(
                                model_id, paths, LABELS_AGAIN, method=spec, options=runs["again"],
                                batch_size=args.batch_size, num_workers=workers, feature_store=last["store"]))},
                           args.repeats, name="single engine")
    finally:
        ray.shutdown()
    single, on_ray, again = last["single"], last["ray"], last["again"]
    single_s, ray_s, again_s = rounds.median(), rounds.median("ray, first run"), rounds.median("ray, again")
    single_again = Classifier(model_id, device="cpu", use_cache=False, batch_size=args.batch_size).classify(
        paths, LABELS_AGAIN, method=spec, options=runs["again"])

    equal, worst = same_rows(on_ray, single)
    equal_again, worst_again = same_rows(again, single_again)
    print(f"\n{'run':<44}{'wall s':>9}{'encoded':>9}{'from store':>11}{'moved by FuDD':>15}")
    for name, seconds, result in (("single engine, " + spec, single_s, single),
                                  ("ray, first run", ray_s, on_ray),
                                  ("ray, again with 10 other classes", again_s, again)):
        print(f"{name:<44}{seconds:>9.1f}{result.stats.get('encoded', 0):>9}{result.stats.get('cached', 0):>11}"
              f"{result.stats.get('images_moved', 0):>15}")
    print(f"\nrows equal, ray vs single engine: {equal} (largest probability difference {worst:.2e}); "
          f"second run: {equal_again} ({worst_again:.2e})")
    print(f"ray first run / single engine: {ray_s / single_s:.2f}x the wall time")
    print(f"ray re-run with other classes: {ray_s / again_s:.1f}x faster than the first ray run "
          f"({again.stats['encoded']} images encoded)")
    rounds.print_summary()


def throughput(args) -> None:
    worker_counts = [int(w) for w in args.workers.split(",")]
    cores = os.cpu_count() or 1
    ray_cpus = args.ray_cpus or max(cores, max(worker_counts) + 1)
    logging.basicConfig(level=logging.WARNING)

    import ray

    from vlmcls.api import Classifier
    from vlmcls.engines.ray import classify_with_ray

    work = Path(tempfile.mkdtemp(prefix="vlmcls-bench-ray-"))
    os.environ["VLMCLS_CACHE"] = str(work / "cache")
    paths = make_jpegs(work / "images", args.images)
    model_id = save_random_vit_b32(work / "model")
    print(f"{args.images} JPEGs 500x375, ViT-B/32 random-init (seed 0), batch {args.batch_size}, "
          f"{cores} cores, Ray given {ray_cpus} logical CPUs, load average {os.getloadavg()[0]:.1f}")

    rows = []  # (engine, workers, seconds, images/s end-to-end, images/s steady, per worker)
    clf = Classifier(model_id, device="cpu", use_cache=False, batch_size=args.batch_size)
    clf.classify(paths[:4], LABELS)  # warm-up: text features, first-call allocations
    labels: dict[str, list] = {}
    steady_of: dict[str, list[float]] = {}

    def single(threads: int):
        def run() -> float:
            torch.set_num_threads(threads)
            seconds, result = timed(lambda: clf.classify(paths, LABELS))
            labels.setdefault("reference", [p.label for p in result.predictions])
            torch.set_num_threads(1)  # the driver's share while Ray runs: text features only
            return seconds
        return run

    def on_ray(workers: int):
        def run() -> float:
            seconds, result = timed(lambda: classify_with_ray(model_id, paths, LABELS, batch_size=args.batch_size,
                                                              num_workers=workers))
            labels[f"ray {workers}"] = [p.label for p in result.predictions]
            steady_of.setdefault(f"ray {workers}", []).append(result.stats["steady_images_per_second"] or float("nan"))
            return seconds
        return run

    ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        measured = {f"single {cores}": single(cores)} if cores > 1 else {}
        measured.update({f"ray {w}": on_ray(w) for w in worker_counts})
        rounds = alternate(single(1), measured, args.repeats, name="single 1")
    finally:
        ray.shutdown()
    for threads in sorted({1, cores}):
        seconds = rounds.median(f"single {threads}")
        rate = args.images / seconds
        rows.append((f"single-process, {threads} torch thread(s)", threads, seconds, rate, rate, rate / threads))
    for workers in worker_counts:
        seconds = rounds.median(f"ray {workers}")
        same = labels[f"ray {workers}"] == labels["reference"]
        steady = statistics.median(steady_of[f"ray {workers}"])
        rows.append((f"ray, {workers} actor(s){'' if same else ' (LABELS DIFFER)'}", workers, seconds,
                     args.images / seconds, steady, steady / workers))

    base = rows[0][5]
    print(f"\n{'engine':<36}{'workers':>8}{'wall s':>9}{'img/s':>8}{'steady':>8}{'per worker':>12}{'vs 1 thread':>13}")
    for engine, workers, seconds, rate, steady, per_worker in rows:
        print(f"{engine:<36}{workers:>8}{seconds:>9.1f}{rate:>8.1f}{steady:>8.1f}{per_worker:>12.1f}{per_worker / base:>12.2f}x")
    print("\nsteady = images/s once the actors are up (Ray) or with the model loaded (single); per worker = steady /"
          "\nworkers (threads for single); the last column compares it with the single-process engine on one thread.")
    rounds.print_summary()


if __name__ == "__main__":
    sys.exit(main())
