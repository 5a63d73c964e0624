"""Tip-Adapter: a training-free cache model over a labelled support set.

``logits = zero_shot_logits + α · exp(−β (1 − f Kᵀ)) L`` where ``zero_shot_logits = logit_scale · f Wᵀ`` (or
any logits on that scale, e.g. from descriptors), ``K [S, D]`` the normalised support features and ``L [S, C]``
the one-hot support labels over the class list. :func:`tune_alpha_beta` picks α and β by leave-one-out on the
support set itself, so no query image ever takes part in choosing them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_BETA",
    "CacheModel",
    "CacheOutput",
    "TuneResult",
    "build_cache",
    "cache_logits",
    "tune_alpha_beta",
]

log = logging.getLogger(__name__)

# β = 1 is the paper's default sharpness: exp(−(1 − cos)) turns cos in [0.7, 1] (typical CLIP image-image
# similarities) into weights in [0.74, 1], smooth enough that several shots vote. α = 1 puts one perfectly
# matching shot at one logit unit of a 100-scaled zero-shot logit: the reference's tuned values sit in 1–3,
# and the low end is the safe default when nothing has been tuned (the cache can only nudge a confident model).
DEFAULT_ALPHA = 1.0
DEFAULT_BETA = 1.0

_NORM_TOLERANCE = 1e-2  # float16 features from the encoder still pass


def _check_feats(feats: Tensor, what: str) -> Tensor:
    if feats.ndim != 2:
        raise ConfigError(f"{what} have shape {tuple(feats.shape)}; expected [count, D].")
    if not torch.isfinite(feats).all():
        raise ConfigError(f"{what} hold NaN or infinite values.")
    norms = feats.to(torch.float64).norm(dim=1)
    if feats.shape[0] and (norms - 1).abs().max().item() > _NORM_TOLERANCE:
        raise ConfigError(
            f"{what} are not L2-normalised (norms from {norms.min().item():.3g} to {norms.max().item():.3g}); "
            "pass the normalised features the embeddings stage returns."
        )
    return feats


def _check_logits(logits: Tensor, count: int, class_names: Sequence[str], what: str) -> None:
    """Raise a ConfigError unless ``logits`` is ``[count, len(class_names)]``."""
    if logits.ndim != 2 or logits.shape != (count, len(class_names)):
        raise ConfigError(
            f"{what} have shape {tuple(logits.shape)}; expected [{count}, {len(class_names)}], one row per image and "
            "one column per class, in the cache's class order."
        )


@dataclass
class CacheModel:
    """The keys, one-hot values and class names of a cache; ``sources`` says where each key came from."""

    keys: Tensor  # [S, D] normalised features
    values: Tensor  # [S, C] one-hot labels over class_names
    class_names: list[str]
    sources: list[int]  # [S] index of each key in the support set (or in the unlabelled images, for TFUP)


@dataclass
class CacheOutput:
    """Refined logits and the cache's share of them, per image and class."""

    logits: Tensor  # [N, C] zero-shot + cache term
    zero_shot_logits: Tensor  # [N, C]
    cache_term: Tensor  # [N, C] α · affinity · L, the cache's contribution
    nearest_key: Tensor  # [N] per image, the cache entry of its predicted class with the highest affinity
    class_names: list[str]
    sources: list[int]

    def explain(self, image: int) -> dict:
        """What the cache did for one image: the prediction, its two parts, and the most similar cached example."""
        predicted = int(self.logits[image].argmax())
        key = int(self.nearest_key[image])
        return {
            "class": self.class_names[predicted],
            "zero_shot_class": self.class_names[int(self.zero_shot_logits[image].argmax())],
            "zero_shot_logit": float(self.zero_shot_logits[image, predicted]),
            "cache_term": float(self.cache_term[image, predicted]),
            "nearest_cached_example": self.sources[key] if key >= 0 else None,
        }


def build_cache(support_feats: Tensor, support_labels: Sequence[str], class_names: Sequence[str]) -> CacheModel:
    """A Tip-Adapter cache: keys are the normalised support features, values their one-hot labels by class name."""
    class_names = list(class_names)
    if len(set(class_names)) != len(class_names) or not class_names:
        raise ConfigError("the class list is empty or names a class twice; give each class once.")
    _check_feats(support_feats, "support features")
    if support_feats.shape[0] == 0:
        raise ConfigError("the support set is empty; give at least one labelled image per class you want cached.")
    if len(support_labels) != support_feats.shape[0]:
        raise ConfigError(
            f"{support_feats.shape[0]} support features but {len(support_labels)} labels; give one label per feature."
        )
    column = {name: position for position, name in enumerate(class_names)}
    unknown = sorted({label for label in support_labels if label not in column})
    if unknown:
        shown = ", ".join(f"'{name}'" for name in unknown[:10])
        raise ConfigError(
            f"{len(unknown)} support labels are not in the class list: {shown}. "
            "Add them to the classes or fix their spelling."
        )
    label_columns = torch.tensor([column[label] for label in support_labels], dtype=torch.long)  # [S]
    values = torch.nn.functional.one_hot(label_columns, len(class_names)).to(support_feats)  # [S, C]
    return CacheModel(support_feats, values, class_names, list(range(support_feats.shape[0])))


def cache_logits(
    image_feats: Tensor,
    zero_shot_logits: Tensor,
    cache: CacheModel,
    alpha: float = DEFAULT_ALPHA,
    beta: float = DEFAULT_BETA,
) -> CacheOutput:
    """Tip-Adapter logits: ``zero_shot_logits + α · exp(−β (1 − f Kᵀ)) L``."""
    _check_feats(image_feats, "image features")
    _check_logits(zero_shot_logits, image_feats.shape[0], cache.class_names, "zero-shot logits")
    keys = cache.keys.to(image_feats)
    affinity = torch.exp(-beta * (1.0 - image_feats @ keys.T))  # [N, S]
    return _output(affinity, zero_shot_logits, cache, alpha)


def _output(affinity: Tensor, zero_shot_logits: Tensor, cache: CacheModel, alpha: float) -> CacheOutput:
    values = cache.values.to(affinity)
    cache_term = alpha * (affinity @ values)  # [N, C]
    logits = zero_shot_logits.to(cache_term.dtype) + cache_term
    predicted = logits.argmax(dim=1)  # [N]
    in_class = values[:, predicted].T > 0  # [N, S] keys labelled with each image's prediction
    masked = torch.where(in_class, affinity, torch.full_like(affinity, -1.0))  # affinities are > 0
    best_affinity, nearest = masked.max(dim=1)
    nearest = torch.where(best_affinity >= 0, nearest, torch.full_like(nearest, -1))  # -1: class has no key
    return CacheOutput(logits, zero_shot_logits, cache_term, nearest, cache.class_names, cache.sources)


@dataclass
class TuneResult:
    """α and β picked by leave-one-out on the support set, with the whole grid for inspection."""

    alpha: float
    beta: float
    loo_accuracy: float  # support accuracy of the chosen pair, each image classified without itself
    zero_shot_accuracy: float  # support accuracy of the zero-shot logits alone, for comparison
    alphas: Tensor  # [A]
    betas: Tensor  # [B]
    accuracy: Tensor  # [B, A] leave-one-out accuracy of every pair


def tune_alpha_beta(
    cache: CacheModel,
    support_zero_shot_logits: Tensor,
    alphas: Sequence[float] | Tensor | None = None,
    betas: Sequence[float] | Tensor | None = None,
    chunk_size: int = 4096,
) -> TuneResult:
    """Pick α and β by leave-one-out on the support set: each support image is scored by the cache without itself.

    Only the support set is used — there is no argument for query images. The pair with the best leave-one-out
    accuracy wins; ties go to the higher mean log-probability of the true class (a proper score, so the pick is
    the best-calibrated of the equally accurate pairs), then to the earlier grid point. The grid defaults to the
    reference's ranges, β in [0.1, 7] and α in [0.1, 3]. With one shot per class, leaving an image out removes its
    class from the cache, so leave-one-out is pessimistic about the cache and favours small α.
    Cost: one ``S × S`` affinity per β, computed ``chunk_size`` rows at a time.
    """
    keys, values = cache.keys.to(torch.float64), cache.values.to(torch.float64)  # [S, D], [S, C]
    support_count = keys.shape[0]
    _check_logits(support_zero_shot_logits, support_count, cache.class_names, "support zero-shot logits")
    if support_count < 2:
        raise ConfigError("leave-one-out tuning needs at least two support images; use the default α and β.")
    alpha_grid = torch.as_tensor(alphas if alphas is not None else torch.linspace(0.1, 3.0, 30), dtype=torch.float64)
    beta_grid = torch.as_tensor(betas if betas is not None else torch.linspace(0.1, 7.0, 70), dtype=torch.float64)
    if alpha_grid.ndim != 1 or beta_grid.ndim != 1 or not alpha_grid.numel() or not beta_grid.numel():
        raise ConfigError("alphas and betas must be non-empty lists of numbers.")
    zero_shot = support_zero_shot_logits.to(keys)  # [S, C]
    truth = values.argmax(dim=1)  # [S]

    accuracy = torch.zeros(beta_grid.numel(), alpha_grid.numel(), dtype=torch.float64)  # [B, A]
    log_likelihood = torch.zeros_like(accuracy)
    for b, beta in enumerate(beta_grid.tolist()):
        loo_term = torch.empty_like(zero_shot)  # [S, C] cache votes without the image itself
        for start in range(0, support_count, chunk_size):
            rows = slice(start, start + chunk_size)
            affinity = torch.exp(-beta * (1.0 - keys[rows] @ keys.T))  # [s, S]
            own = torch.arange(affinity.shape[0], device=affinity.device)
            affinity[own, own + start] = 0.0  # leave the image itself out
            loo_term[rows] = affinity @ values
        for a, alpha in enumerate(alpha_grid.tolist()):
            logits = zero_shot + alpha * loo_term  # [S, C]
            accuracy[b, a] = (logits.argmax(dim=1) == truth).to(torch.float64).mean().item()
            log_likelihood[b, a] = torch.log_softmax(logits, dim=1).gather(1, truth[:, None]).mean().item()

    best_accuracy = accuracy.max()
    tied = accuracy == best_accuracy
    score = torch.where(tied, log_likelihood, torch.full_like(log_likelihood, -torch.inf))
    flat = int(score.flatten().argmax())  # first maximum in (β, α) order
    b, a = divmod(flat, alpha_grid.numel())
    result = TuneResult(
        alpha=float(alpha_grid[a]),
        beta=float(beta_grid[b]),
        loo_accuracy=float(accuracy[b, a]),
        zero_shot_accuracy=float((zero_shot.argmax(dim=1) == truth).to(torch.float64).mean()),
        alphas=alpha_grid,
        betas=beta_grid,
        accuracy=accuracy,
    )
    log.info(
        "Tip-Adapter leave-one-out: alpha=%.3g beta=%.3g accuracy %.4f (zero-shot %.4f)",
        result.alpha, result.beta, result.loo_accuracy, result.zero_shot_accuracy,
    )
    return result


def loo_cache_logits(cache: CacheModel, support_zero_shot_logits: Tensor, alpha: float, beta: float) -> Tensor:
    """[S, C] each support image's Tip-Adapter logits with itself left out of the cache (what a held-out image
    would get), for fitting a temperature without scoring any image on a cache that holds it."""
    keys, values = cache.keys.to(torch.float64), cache.values.to(torch.float64)  # [S, D], [S, C]
    _check_logits(support_zero_shot_logits, keys.shape[0], cache.class_names, "support zero-shot logits")
    affinity = torch.exp(-beta * (1.0 - keys @ keys.T))  # [S, S]
    affinity.fill_diagonal_(0.0)  # leave the image itself out
    return support_zero_shot_logits.to(keys) + alpha * (affinity @ values)
