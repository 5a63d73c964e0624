"""The Fréchet-mean adapter (Loki): predict over a label space larger than the classes that were prompted.

``y_hat(x) = argmin_{y in Y} sum_{i in observed} P(i|x) · d(y, i)^2`` with ``P = softmax(logits)`` and
``logits = logit_scale · cos`` over the observed (prompted) classes, so a label that was never prompted — a
parent, a sibling — can still be predicted when it sits between the classes the model is torn between.
The metric ``d`` is a :class:`~vlmcls.adapters.metrics.LabelMetric`; classes are matched to it by name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from ..errors import ConfigError
from .metrics import LabelMetric

__all__ = ["FrechetResult", "frechet_mean", "expected_squared_distance", "label_space_scores"]

log = logging.getLogger(__name__)


@dataclass
class FrechetResult:
    """Fréchet-mean predictions and what explains them."""

    labels: list[str]  # predicted label name per image [N]
    indices: Tensor  # [N] position of each prediction in label_space
    objective: Tensor  # [N] sum_i P(i|x) d(y_hat, i)^2 at the prediction (over the kept mass only)
    kept_mass: Tensor  # [N] probability mass kept by top_k truncation (all 1 without it)
    label_space: list[str]  # the candidates, in the order `indices` refers to
    zero_shot_labels: list[str]  # argmax over the observed classes, what the model alone would say [N]
    contributions: list[list[dict]] = field(default_factory=list)
    # per image: the observed classes with the most probability, each {"class", "probability", "squared_distance"}
    # with squared_distance = d(y_hat, class)^2 — the terms that pulled the prediction where it is.


def frechet_mean(
    logits: Tensor,
    observed_classes: Sequence[str],
    metric: LabelMetric,
    *,
    label_space: Sequence[str] | None = None,
    top_k: int | None = None,
    batch_size: int = 128,
    explain_top: int = 3,
) -> FrechetResult:
    """Predict the Fréchet mean of each image's class distribution in ``metric``.

    ``logits [N, K]`` are ``logit_scale · cos`` over ``observed_classes`` (their columns, by name); P is their
    softmax, as in the reference (no truncation by default). ``label_space`` lists the labels that may be
    predicted (default: every label of the metric). ``top_k`` keeps only each image's k most probable observed
    classes — not renormalised, so the objective covers the kept mass, which is returned per image.
    """
    observed_classes = list(observed_classes)
    if logits.ndim != 2 or logits.shape[1] != len(observed_classes):
        raise ConfigError(
            f"logits have shape {tuple(logits.shape)} but {len(observed_classes)} observed classes are named; "
            f"expected [N, {len(observed_classes)}] with one column per observed class."
        )
    if len(set(observed_classes)) != len(observed_classes):
        raise ConfigError("the observed classes name a class more than once; each class must appear once.")
    if label_space is not None and len(set(label_space)) != len(label_space):
        raise ConfigError("the label space names a label more than once; each label must appear once.")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k is '{top_k}'; it must be a positive number of classes, or None for no truncation.")
    if batch_size < 1:
        raise ConfigError(f"batch_size is '{batch_size}'; it must be at least 1.")
    observed = metric.indices(observed_classes, "observed classes")  # [K]
    candidates = None if label_space is None else metric.indices(list(label_space), "label-space labels")
    space = list(metric.names) if label_space is None else list(label_space)

    logits = logits.detach().cpu()  # the metric lives on the CPU; this step is cheap next to encoding
    probs = torch.softmax(logits.to(torch.float64), dim=1)  # [N, K]
    if torch.isnan(probs).any():
        raise ConfigError("some logits rows are all -inf or NaN; every image needs a finite logit for some class.")
    if top_k is not None and top_k < probs.shape[1]:
        kept, kept_columns = probs.topk(top_k, dim=1)  # [N, k]
        probs = torch.zeros_like(probs).scatter_(1, kept_columns, kept)
    kept_mass = probs.sum(dim=1)  # [N]
    if top_k is not None and probs.shape[0]:
        log.info("Fréchet mean keeps the top %d classes: mean kept mass %.4f", top_k, kept_mass.mean().item())

    positions, values = [], []
    for start in range(0, probs.shape[0], batch_size):
        best_position, best_value = metric.best(probs[start : start + batch_size], observed, candidates)
        positions.append(best_position)
        values.append(best_value)
    positions_all = torch.cat(positions) if positions else torch.empty(0, dtype=torch.long)
    values_all = torch.cat(values) if values else torch.empty(0, dtype=torch.float64)

    predicted = positions_all if candidates is None else candidates[positions_all]  # [N] metric indices
    return FrechetResult(
        labels=[space[p] for p in positions_all.tolist()],
        indices=positions_all,
        objective=values_all,
        kept_mass=kept_mass,
        label_space=space,
        zero_shot_labels=[observed_classes[c] for c in logits.argmax(dim=1).tolist()] if logits.shape[0] else [],
        contributions=_contributions(probs, predicted, observed, observed_classes, metric, explain_top),
    )


def _contributions(
    probs: Tensor, predicted: Tensor, observed: Tensor, observed_classes: list[str], metric: LabelMetric, top: int
) -> list[list[dict]]:
    if top < 1 or probs.shape[0] == 0:
        return [[] for _ in range(probs.shape[0])]
    top = min(top, probs.shape[1])
    top_probs, top_columns = probs.topk(top, dim=1)  # [N, t]
    squared = metric.squared_distances(predicted[:, None].expand(-1, top), observed[top_columns])  # [N, t]
    return [
        [
            {"class": observed_classes[c], "probability": p, "squared_distance": d}
            for c, p, d in zip(columns, image_probs, image_squared)
        ]
        for columns, image_probs, image_squared in zip(top_columns.tolist(), top_probs.tolist(), squared.tolist())
    ]


def expected_squared_distance(predicted: Sequence[str], true_labels: Sequence[str], metric: LabelMetric) -> float:
    """Mean of ``d(predicted, true)^2`` over images — Loki's main metric, reported beside accuracy."""
    if len(predicted) != len(true_labels):
        raise ConfigError(f"{len(predicted)} predictions but {len(true_labels)} true labels; give one per image.")
    if not len(predicted):
        raise ConfigError("no predictions to score; give at least one image.")
    a = metric.indices(list(predicted), "predicted labels")
    b = metric.indices(list(true_labels), "true labels")
    return metric.squared_distances(a, b).mean().item()


def label_space_scores(predicted: Sequence[str], true_labels: Sequence[str], metric: LabelMetric) -> dict[str, float]:
    """Accuracy and expected squared distance of predictions over a label space, side by side."""
    squared = expected_squared_distance(predicted, true_labels, metric)
    accuracy = sum(p == t for p, t in zip(predicted, true_labels)) / len(predicted)
    return {"accuracy": accuracy, "expected_squared_distance": squared, "count": float(len(predicted))}
