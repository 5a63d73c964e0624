"""GDA (Wang et al., ICLR 2024): Gaussian discriminant analysis on the support shots, added to zero-shot logits.

Every class is a Gaussian with its own mean and one covariance shared by all classes; with equal priors the
posterior is linear in the feature (the released code, mrflogs/ICLR24 ``main_few_shots.py``)::

    μ_k  = mean of the shots of class k                                    [C, D]
    X    = every shot minus its class mean                                 [S, D]
    Σ̂    = cov(X) (unbiased, over the S rows)                              [D, D]
    P    = D · pinv((S − 1) · Σ̂ + tr(Σ̂) · I)     # the shrunk precision ("KS estimator")
    W    = μ P,   b_k = log(1/C) − ½ μ_k P μ_kᵀ
    logits = zero_shot_logits + α · (f Wᵀ + b)

α is picked from the reference's grid {1e-4 … 100} by the accuracy of labelled images held out of the fit; the
first best wins and 0.1 stands when no α classifies any held-out image (the reference's rule). The reference holds
out a validation split of the dataset; a user has only the support folder, so :func:`choose_alpha` holds out its
shots fold by fold (shot r of a class goes to fold r mod F) and refits on the rest: no image being classified
takes part. With one shot per class the shots have no spread: Σ̂ = 0, P = pinv(0) = 0 and W = 0, so the reference
adds the same constant to every class and predicts as zero-shot; :func:`fit_gda` says so (``spread`` False).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from ..errors import ConfigError
from .cache_model import _check_feats, _check_logits

__all__ = ["ALPHA_GRID", "DEFAULT_ALPHA", "GdaModel", "fit_gda", "gda_logits", "choose_alpha", "AlphaChoice",
           "label_columns"]

log = logging.getLogger(__name__)

ALPHA_GRID = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0)  # the reference's grid, searched in this order
DEFAULT_ALPHA = 0.1  # the reference's α when no grid point classifies a held-out image
MAX_FOLDS = 4  # held-out folds for choosing α; the reference validates on at most 4 shots per class


@dataclass
class GdaModel:
    """The closed-form classifier: ``f Wᵀ + b``."""

    weights: Tensor  # [C, D] μ P
    bias: Tensor  # [C] log(1/C) − ½ μ_k P μ_kᵀ
    spread: bool  # False when every class has one shot: no covariance, W = 0 (zero-shot predictions)


def label_columns(labels: Sequence[str], class_names: Sequence[str]) -> Tensor:
    """Each support label's column in ``class_names`` (by name); every class needs at least one shot."""
    column = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({label for label in labels if label not in column})
    if unknown:
        shown = ", ".join(f"'{n}'" for n in unknown[:10])
        raise ConfigError(f"{len(unknown)} support labels are not in the class list: {shown}. "
                          "Add them to the classes or fix their spelling.")
    columns = torch.tensor([column[label] for label in labels], dtype=torch.long)
    missing = [name for i, name in enumerate(class_names) if not bool((columns == i).any())]
    if missing:
        shown = ", ".join(f"'{n}'" for n in missing[:10])
        raise ConfigError(f"GDA needs support shots of every class; {len(missing)} have none: {shown}. "
                          "Add a sub-folder of shots for each (GDA's class means come from them).")
    return columns


def fit_gda(support_feats: Tensor, columns: Tensor, num_classes: int) -> GdaModel:
    """Class means and the shared shrunk precision from labelled shots (module docstring); float64."""
    _check_feats(support_feats, "support features")
    feats = support_feats.to(torch.float64)  # [S, D]
    count, dim = feats.shape
    if count != columns.numel():
        raise ConfigError(f"{count} support features but {columns.numel()} labels; give one label per feature.")
    onehot = torch.nn.functional.one_hot(columns, num_classes).to(feats)  # [S, C]
    shots = onehot.sum(dim=0)  # [C]
    if bool((shots == 0).any()):
        raise ConfigError("GDA needs at least one support shot per class.")
    means = (onehot.T @ feats) / shots[:, None]  # [C, D]
    centered = feats - means[columns]  # [S, D]
    spread = bool(count > num_classes)  # a class with two shots gives the covariance something to estimate
    if count < 2:
        covariance = torch.zeros(dim, dim, dtype=feats.dtype)
    else:
        covariance = torch.cov(centered.T)  # [D, D] unbiased; the rows' mean is 0 up to rounding
    shrunk = (count - 1) * covariance + torch.trace(covariance) * torch.eye(dim, dtype=feats.dtype)
    precision = dim * torch.linalg.pinv(shrunk, hermitian=True)  # [D, D]
    weights = means @ precision  # [C, D]
    bias = math.log(1.0 / num_classes) - 0.5 * (weights * means).sum(dim=1)  # [C]
    return GdaModel(weights, bias, spread)


def gda_logits(image_feats: Tensor, zero_shot_logits: Tensor, model: GdaModel, alpha: float) -> Tensor:
    """``zero_shot_logits + α (f Wᵀ + b)``: [N, C] in float64."""
    _check_feats(image_feats, "image features")
    _check_logits(zero_shot_logits, image_feats.shape[0], range(model.weights.shape[0]), "zero-shot logits")
    term = image_feats.to(torch.float64) @ model.weights.T + model.bias  # [N, C]
    return zero_shot_logits.to(torch.float64) + alpha * term


@dataclass
class AlphaChoice:
    alpha: float
    accuracy: float | None  # held-out accuracy of the chosen α; None when nothing could be held out
    folds: int
    accuracies: dict[float, float] = field(default_factory=dict)  # every grid point's held-out accuracy


def choose_alpha(support_feats: Tensor, columns: Tensor, num_classes: int, support_zero_shot_logits: Tensor,
                 grid: Sequence[float] = ALPHA_GRID) -> AlphaChoice:
    """α by held-out accuracy on the shots: fold j holds out shot r of each class with two or more shots where
    r mod F = j (F = min(4, the most shots of a class)), fits on the rest and scores the held-out shots."""
    columns = columns.to(torch.long)
    rank = torch.zeros_like(columns)  # each shot's place among its class's shots, in listing order
    seen: dict[int, int] = {}
    for i, c in enumerate(columns.tolist()):
        rank[i] = seen.get(c, 0)
        seen[c] = seen.get(c, 0) + 1
    counts = torch.bincount(columns, minlength=num_classes)
    folds = min(MAX_FOLDS, int(counts.max()))
    eligible = counts[columns] >= 2  # a class's only shot stays in: its mean needs it
    correct = torch.zeros(len(grid), dtype=torch.float64)
    held_total = 0
    for fold in range(folds):
        held = eligible & (rank % folds == fold)
        if not bool(held.any()):
            continue
        model = fit_gda(support_feats[~held], columns[~held], num_classes)
        term = support_feats[held].to(torch.float64) @ model.weights.T + model.bias
        base = support_zero_shot_logits[held].to(torch.float64)
        truth = columns[held]
        for a, alpha in enumerate(grid):
            correct[a] += ((base + alpha * term).argmax(dim=1) == truth).sum()
        held_total += int(held.sum())
    if held_total == 0:
        return AlphaChoice(DEFAULT_ALPHA, None, 0)
    accuracy = correct / held_total
    best, best_accuracy = DEFAULT_ALPHA, 0.0
    for alpha, value in zip(grid, accuracy.tolist()):  # the reference's rule: strictly better replaces
        if value > best_accuracy:
            best, best_accuracy = alpha, value
    log.info("GDA: alpha=%g, held-out accuracy %.4f over %d shots in %d folds", best, best_accuracy, held_total, folds)
    return AlphaChoice(float(best), float(best_accuracy), folds, dict(zip(map(float, grid), accuracy.tolist())))
