"""Which image to label next, and scoring a run again with the labels given so far.

**The rule** (:func:`label_next_order`): uncertainty weighted by novelty, picked greedily. An image's
uncertainty is ``1 − margin`` (margin: its first class's probability minus its second's); its novelty is its
cosine distance to the nearest image already labelled (or already picked), ``1 − max cos``; the next image is the
one with the largest ``uncertainty × novelty``, and each pick updates the novelty of the rest. So it starts with
the least sure images, but a second image that looks like one just picked waits: a label teaches Tip-Adapter about
its neighbourhood, and ten labels of near-duplicates teach it one thing. ``bench/bench_active_labels.py`` compares
it with least-sure-first and random order on the demo world.

:func:`tip_with_labels` is Tip-Adapter over features already computed: the cache from the labelled images,
α and β by leave-one-out on them (two or more), applied to every image's zero-shot logits — what ``tip.labels``
does inside a run, for loops that must not re-run the pipeline per step (the bench).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["ORDERINGS", "margins", "label_next_order", "least_sure_order", "random_order", "tip_with_labels"]


def margins(probs: np.ndarray) -> np.ndarray:
    """probs [N, K≥1] (best first or not) -> [N] first minus second probability (1 for a single class)."""
    top = -np.sort(-np.asarray(probs, dtype=np.float64), axis=1)
    return top[:, 0] - (top[:, 1] if top.shape[1] > 1 else 0.0)


def label_next_order(feats: np.ndarray, probs: np.ndarray, labelled: Sequence[int] = (), count: int | None = None
                     ) -> list[int]:
    """feats [N, D] unit rows, probs [N, K]: the unlabelled images' positions, the one to label first first."""
    feats = np.asarray(feats, dtype=np.float32)
    n = feats.shape[0]
    uncertainty = 1.0 - margins(probs)  # [N] in [0, 1]
    nearest = np.full(n, -1.0, np.float32)  # [N] max cosine to a labelled or picked image
    for i in labelled:
        nearest = np.maximum(nearest, feats @ feats[i])
    open_ = np.ones(n, bool)
    open_[list(labelled)] = False
    order: list[int] = []
    want = int(open_.sum()) if count is None else min(count, int(open_.sum()))
    while len(order) < want:
        novelty = np.clip(1.0 - nearest, 0.0, 2.0) if labelled or order else np.ones(n, np.float32)
        score = np.where(open_, uncertainty * (novelty + 1e-6), -np.inf)
        pick = int(np.argmax(score))
        order.append(pick)
        open_[pick] = False
        nearest = np.maximum(nearest, feats @ feats[pick])
    return order


def least_sure_order(probs: np.ndarray, labelled: Sequence[int] = ()) -> list[int]:
    """The unlabelled images by margin, smallest first."""
    taken = set(labelled)
    return [int(i) for i in np.argsort(margins(probs), kind="stable") if int(i) not in taken]


def random_order(n: int, seed: int, labelled: Sequence[int] = ()) -> list[int]:
    taken = set(labelled)
    return [int(i) for i in np.random.default_rng(seed).permutation(n) if int(i) not in taken]


ORDERINGS = ("label-next", "least-sure", "random")


def tip_with_labels(feats: np.ndarray, zero_shot_logits: np.ndarray, labelled: dict[int, str],
                    class_names: list[str]) -> np.ndarray:
    """[N, C] Tip-Adapter logits with the images ``labelled`` ({position: class}) as the support set."""
    import torch

    from ..adapters import DEFAULT_ALPHA, DEFAULT_BETA, build_cache, cache_logits, tune_alpha_beta

    positions = list(labelled)
    image_feats = torch.as_tensor(np.asarray(feats), dtype=torch.float64)  # [N, D]
    logits = torch.as_tensor(np.asarray(zero_shot_logits), dtype=torch.float64)  # [N, C]
    cache = build_cache(image_feats[positions], [labelled[i] for i in positions], class_names)
    alpha, beta = DEFAULT_ALPHA, DEFAULT_BETA
    if len(positions) >= 2:
        tuned = tune_alpha_beta(cache, logits[positions])
        alpha, beta = tuned.alpha, tuned.beta
    return cache_logits(image_feats, logits, cache, alpha=alpha, beta=beta).logits.numpy()
