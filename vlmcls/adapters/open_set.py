"""Open-set maths: how sure an image is that it shows one of the classes, a threshold set without labels, and how
well a score separates in-list images from the others.

- :func:`mcm_score` — MCM (Ming et al., NeurIPS 2022): the largest softmax of the cosines at temperature τ.
- :func:`neglabel_score` — NegLabel (Jiang et al., ICLR 2024): the softmax mass of the classes when negative texts
  compete with them, ``Σ_c e^{l_c} / (Σ_c e^{l_c} + Σ_m e^{l_m})``.
- :func:`farthest_negatives` — NegLabel's mining: the words least like any class in text-embedding space.
- :func:`recall_threshold` — the label-free threshold: a two-component Gaussian mixture on the run's own scores (in
  log-odds), the upper component taken as the in-list images, cut where it keeps the asked recall.
- :func:`auroc`, :func:`fpr_at_tpr` — how well a score separates in-list (positive) from other (negative) images.

Every function takes torch tensors (the pipeline's) except the run-level ones, which take numpy arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["mcm_score", "neglabel_score", "farthest_negatives", "ThresholdFit", "ESTIMATORS", "recall_threshold", "auroc",
           "fpr_at_tpr"]


def mcm_score(cos: "torch.Tensor", temperature: float = 1.0) -> "torch.Tensor":
    """cos [B, C] -> MCM score [B] = max_c softmax(cos / τ)."""
    import torch

    return torch.softmax(cos.double() / temperature, dim=1).max(dim=1).values


def neglabel_score(class_logits: "torch.Tensor", negative_logits: "torch.Tensor", groups: int = 1) -> "torch.Tensor":
    """class_logits [B, C], negative_logits [B, M] (both at the model's logit scale) -> score [B] in (0, 1]: the
    classes' share of the softmax over classes and negatives together. With ``groups`` > 1 the negatives are split
    into that many groups (in order) and the shares averaged, NegLabel's grouping: thousands of weak negatives
    then cannot drown every class by their number alone."""
    import torch

    pos = torch.logsumexp(class_logits.double(), dim=1)  # [B]
    parts = torch.tensor_split(negative_logits.double(), max(1, min(groups, negative_logits.shape[1])), dim=1)
    shares = [torch.exp(pos - torch.logaddexp(pos, torch.logsumexp(part, dim=1))) for part in parts]
    return torch.stack(shares).mean(dim=0)


def farthest_negatives(word_feats: "torch.Tensor", class_feats: "torch.Tensor", count: int,
                       percentile: float = 0.95) -> "torch.Tensor":
    """NegLabel's selection: word_feats [W, D], class_feats [C, D] (unit rows) -> the indices [count] of the words
    whose ``percentile`` similarity to the classes is lowest (the reference takes a high percentile rather than
    the max so one odd class does not veto a word), farthest first."""
    import torch

    sims = word_feats.double() @ class_feats.double().T  # [W, C]
    near = torch.quantile(sims, percentile, dim=1) if sims.shape[1] > 1 else sims[:, 0]  # [W]
    count = max(0, min(int(count), word_feats.shape[0]))
    return torch.argsort(near, stable=True)[:count]


@dataclass
class ThresholdFit:
    """What :func:`recall_threshold` decided and why."""

    threshold: float
    estimator: str  # "mixture" (two components found) or "quantile" (all images taken as in-list)
    in_list_share: float  # the mixture's weight of the upper component (1.0 for the quantile)


def _logit(scores: np.ndarray) -> np.ndarray:
    clipped = np.clip(scores, 1e-6, 1 - 1e-6)
    return np.log(clipped) - np.log1p(-clipped)


ESTIMATORS = ("mixture", "quantile")


def recall_threshold(scores: np.ndarray, recall: float, *, estimator: str = "mixture", bounded: bool = True,
                     min_images: int = 30, min_separation: float = 2.5) -> ThresholdFit:
    """A threshold on ``scores [N]`` that keeps the fraction ``recall`` of the in-list images, with no labels.

    The run's scores mix in-list images (high) with others (low). A two-component Gaussian mixture is fitted
    on them — in log-odds when ``bounded`` (scores in (0, 1)), where both parts look far more Gaussian — and
    the upper component's responsibilities weigh an empirical quantile: the threshold keeps ``recall`` of the
    in-list mass. When the two components are not clearly apart (``min_separation`` pooled standard
    deviations), or there are fewer than ``min_images`` scores, every image is taken as in-list and the
    threshold is the plain (1 − recall) quantile; that keeps at least the asked recall, and rejects fewer others.
    ``estimator="quantile"`` always does the latter.
    """
    values = np.asarray(scores, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return ThresholdFit(float("-inf"), "quantile", 1.0)
    x = _logit(values) if bounded else values
    quantile = ThresholdFit(_weighted_quantile(values, np.ones_like(values), 1.0 - recall), "quantile", 1.0)
    if estimator == "quantile" or values.size < min_images or float(x.std()) < 1e-9:
        return quantile
    responsibility, means, stds, weights = _two_gaussians(x)
    upper = int(np.argmax(means))
    pooled = math.sqrt((stds[0] ** 2 + stds[1] ** 2) / 2)  # Ashman's D below: the two parts clearly apart?
    if abs(means[1] - means[0]) < min_separation * pooled or min(weights) < 0.1:
        return quantile
    threshold = _weighted_quantile(values, responsibility[:, upper], 1.0 - recall)
    return ThresholdFit(threshold, "mixture", float(weights[upper]))


def _two_gaussians(x: np.ndarray, steps: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """EM for a 1-D mixture of two Gaussians, started at the quartiles (deterministic)."""
    means = np.quantile(x, [0.25, 0.75]).astype(np.float64)
    stds = np.full(2, max(float(x.std()) / 2, 1e-3))
    weights = np.array([0.5, 0.5])
    resp = np.full((x.size, 2), 0.5)
    for _ in range(steps):
        log_p = (-0.5 * ((x[:, None] - means) / stds) ** 2 - np.log(stds) + np.log(weights))  # [N, 2]
        log_p -= log_p.max(axis=1, keepdims=True)
        resp = np.exp(log_p)
        resp /= resp.sum(axis=1, keepdims=True)
        mass = resp.sum(axis=0) + 1e-12
        new_means = (resp * x[:, None]).sum(axis=0) / mass
        stds = np.sqrt((resp * (x[:, None] - new_means) ** 2).sum(axis=0) / mass).clip(min=1e-3)
        weights = mass / mass.sum()
        if np.allclose(new_means, means, atol=1e-7):
            means = new_means
            break
        means = new_means
    return resp, means, stds, weights


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The largest value v with (weight of values < v) ≤ q · total weight: keeping values ≥ v keeps ≥ 1 − q."""
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    below = np.concatenate([[0.0], np.cumsum(w)[:-1]]) / max(float(w.sum()), 1e-12)  # weight strictly below each
    allowed = np.flatnonzero(below <= q + 1e-12)
    return float(v[allowed[-1]]) if allowed.size else float(v[0])


def auroc(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """Probability that a random positive (in-list) scores above a random negative; ties count half."""
    pos, neg = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if pos.size == 0 or neg.size == 0:
        return None
    both = np.concatenate([pos, neg])
    order = np.argsort(both, kind="stable")
    ranks = np.empty(both.size)
    ranks[order] = np.arange(1, both.size + 1)
    for value in np.unique(both):  # average ranks over ties
        tied = both == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def fpr_at_tpr(positive: np.ndarray, negative: np.ndarray, tpr: float = 0.95) -> float | None:
    """The share of negatives kept by the highest threshold that keeps ``tpr`` of the positives (FPR95)."""
    pos, neg = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if pos.size == 0 or neg.size == 0:
        return None
    threshold = _weighted_quantile(pos, np.ones_like(pos), 1.0 - tpr)
    return float((neg >= threshold).mean())
