"""Benchmark the tree Fréchet mean: images/s on a 100,000-label tree, and the ratio to the dense matrix form.

Run: ``python bench/bench_frechet.py`` (``--help`` for sizes). Random recursive trees (each label's parent is
a uniformly chosen earlier label), observed classes = random leaves, logits = 100 · cos of random unit features.
The dense form cannot run at 100,000 labels (its |Y| × |Y| float64 matrix would take 80 GB), so the ratio is
measured side by side on a 2,000-label tree, where both forms run on the same logits and must agree. Every timing is
warmed and alternated for ``--repeats`` rounds, the baseline (full P on the big tree; the dense form on the small one)
bracketing its candidate; medians (``_timing.alternate``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _machine import print_load, print_machine  # noqa: E402
from _timing import alternate, timed_out  # noqa: E402
from vlmcls.adapters import LabelMetric, TreeMetric, frechet_mean  # noqa: E402

TARGET_IMAGES_PER_SECOND = 100.0


def random_tree(num_labels: int, seed: int) -> tuple[TreeMetric, np.ndarray]:
    """A random recursive tree and the positions of its leaves."""
    rng = np.random.default_rng(seed)
    parents = (rng.random(num_labels - 1) * np.arange(1, num_labels)).astype(np.int64)  # parent of label i+1
    names = [f"label {i}" for i in range(num_labels)]
    metric = LabelMetric.from_tree(zip((names[p] for p in parents), names[1:]))
    has_child = np.zeros(num_labels, dtype=bool)
    has_child[parents] = True
    return metric, np.flatnonzero(~has_child)


def clip_like_logits(num_images: int, num_classes: int, seed: int) -> torch.Tensor:
    """``100 · cos`` of random unit image and class features, ``[N, K]``."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(torch.randn(num_images, 64, generator=generator), dim=1)
    classes = torch.nn.functional.normalize(torch.randn(num_classes, 64, generator=generator), dim=1)
    return 100.0 * images @ classes.T


def observed_leaves(metric: TreeMetric, leaves: np.ndarray, count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed + 1)
    return [metric.names[i] for i in rng.choice(leaves, size=count, replace=False)]


def compare(baseline, candidate, rounds: int, names: tuple[str, str]):
    """(median seconds of the baseline, of the candidate, their last results, the Rounds): warmed, alternated,
    the baseline bracketing the candidate."""
    last = {}

    def keep(name, fn):
        def run():
            seconds, last[name] = timed_out(fn)
            return seconds
        return run

    got = alternate(keep(names[0], baseline), {names[1]: keep(names[1], candidate)}, rounds, name=names[0],
                    warm_measured=True, verbose=False)
    return got.median(), got.median(names[1]), last[names[0]], last[names[1]], got


def dense_squared_distances(metric: TreeMetric) -> np.ndarray:
    """All-pairs squared path lengths via an ancestor-indicator matrix: d = depth_a + depth_b - 2 depth(lca)."""
    size = len(metric)
    ancestors = np.zeros((size, size), dtype=np.float32)  # [L, L] row v marks v and its ancestors
    parent = metric.parent.numpy()
    for label in range(size):
        node = label
        while node >= 0 and node < size:
            ancestors[label, node] = 1.0
            node = parent[node]
    common = ancestors @ ancestors.T  # number of shared ancestors = depth(lca) + 1
    depth = metric.depth.numpy()[:size].astype(np.float64)
    distances = depth[:, None] + depth[None, :] - 2.0 * (common.astype(np.float64) - 1.0)
    return np.square(distances)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=100_000, help="labels in the big tree")
    parser.add_argument("--observed", type=int, default=1_000, help="observed (prompted) leaves")
    parser.add_argument("--images", type=int, default=2_000, help="images per timed run")
    parser.add_argument("--small-labels", type=int, default=2_000, help="labels in the tree for the dense ratio")
    parser.add_argument("--top-k", type=int, default=10, help="truncation for the extra top-k run")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the box is shared)")
    parser.add_argument("--repeats", type=int, default=5, help="alternated rounds")
    args = parser.parse_args()

    print_machine()  # the CPU model and flags, and how busy the machine is, with every figure
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU")

    start = time.perf_counter()
    metric, leaves = random_tree(args.labels, seed=0)
    build_seconds = time.perf_counter() - start
    observed = observed_leaves(metric, leaves, args.observed, seed=0)
    logits = clip_like_logits(args.images, args.observed, seed=0)
    closure = int(metric._closure(metric.indices(observed)).sum())
    print(
        f"tree: {len(metric):,} labels, height {int(metric.depth.max())}, {len(leaves):,} leaves, built in "
        f"{build_seconds:.2f} s; {args.observed:,} observed leaves, closure of {closure:,} labels"
    )
    seconds, seconds_k, result, result_k, big_rounds = compare(
        lambda: frechet_mean(logits, observed, metric), lambda: frechet_mean(logits, observed, metric, top_k=args.top_k),
        args.repeats, ("full P", f"top-{args.top_k} P"))
    rate = args.images / seconds
    verdict = "meets" if rate >= TARGET_IMAGES_PER_SECOND else "MISSES"
    print(
        f"tree Fréchet mean, full P: {rate:,.0f} images/s ({args.images:,} images in {seconds:.3f} s); "
        f"{verdict} the {TARGET_IMAGES_PER_SECOND:.0f} images/s target ({rate / TARGET_IMAGES_PER_SECOND:.1f}x)"
    )
    unobserved = sum(label not in set(observed) for label in result.labels)
    print(f"  {unobserved:,} of {args.images:,} predictions are labels that were never prompted")
    agree = sum(a == b for a, b in zip(result.labels, result_k.labels)) / args.images
    print(
        f"tree Fréchet mean, top-{args.top_k} P: {args.images / seconds_k:,.0f} images/s; mean kept mass "
        f"{result_k.kept_mass.mean().item():.4f}; same prediction as full P for {agree:.1%} of images"
    )
    big_rounds.print_summary()

    small, small_leaves = random_tree(args.small_labels, seed=1)
    small_observed = observed_leaves(small, small_leaves, min(args.observed, len(small_leaves) // 2), seed=1)
    small_logits = clip_like_logits(args.images, len(small_observed), seed=1)
    start = time.perf_counter()
    dense = LabelMetric.from_distance_matrix(small.names, np.sqrt(dense_squared_distances(small)))
    dense_build = time.perf_counter() - start
    dense_seconds, tree_seconds, dense_result, tree_result, small_rounds = compare(
        lambda: frechet_mean(small_logits, small_observed, dense), lambda: frechet_mean(small_logits, small_observed, small),
        args.repeats, ("dense matrix", "tree"))
    same = sum(a == b for a, b in zip(tree_result.labels, dense_result.labels)) / args.images
    gap = (tree_result.objective - dense_result.objective).abs().max().item()
    print(
        f"{len(small):,}-label tree, {len(small_observed):,} observed: tree {args.images / tree_seconds:,.0f} "
        f"images/s, dense matrix {args.images / dense_seconds:,.0f} images/s (matrix built in {dense_build:.2f} s, "
        f"{len(small) ** 2 * 8 / 2**20:.0f} MiB)"
    )
    print(
        f"  ratio tree/dense speed = {dense_seconds / tree_seconds:.2f}x; predictions agree on {same:.1%}, "
        f"largest objective gap {gap:.1e}"
    )
    small_rounds.print_summary()
    print(f"  dense at {len(metric):,} labels would need a {len(metric) ** 2 * 8 / 2**30:,.0f} GiB matrix")
    print_load("end")


if __name__ == "__main__":
    main()
