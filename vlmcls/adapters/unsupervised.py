"""A TFUP-style unsupervised cache: built from the unlabelled images being classified, no labels needed.

Selection (per class c, from the zero-shot distributions ``p = softmax(10 · cos)`` over the classes):
take the ``2·s`` images with the highest ``p(c|x)``, and keep the ``s`` whose summed divergence
``sum_k KL(p_j ‖ p_k)`` to the other candidates is smallest — the most typical confident images. The same image
may be kept for two classes when it ranks high for both; each copy votes for its own class.
``s = clamp(int(0.3 · N / C), 9, 16)`` (truncated, as the reference), then clamped to the images available.

Similarity of a query x to a cached image j is ``cos(x, j) · w(x, j)``; the default weight is the reference's
(wlb12345/TFUP ``utils.get_sim_based_kl``): per query row, the divergences ``KL(p_x ‖ p_j)`` to every key are
z-scored (unbiased std), min-max scaled to [0, 1] and mapped to ``w = 2 · (1 − scaled)``: 2 for the key whose
distribution is closest, 0 for the farthest. Where every key is equally far (or there is one key), the reference
divides by zero; here w = 1 there. ``kl_weight="exp"`` selects ``w = 2 · exp(−KL)`` instead (absolute, not
relative to the other keys). Logits then follow Tip-Adapter with α = 0.3, β = 1:
``zero_shot_logits + α · exp(−β (1 − cos · w)) L``. Every query is also a candidate, so an image that was cached
meets itself (cos = 1): the method is transductive by design.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..errors import ConfigError
from .cache_model import CacheModel, CacheOutput, _check_feats, _check_logits, _output

__all__ = [
    "TFUP_ALPHA",
    "TFUP_BETA",
    "SELECTION_SCALE",
    "KL_WEIGHTS",
    "UnsupervisedCache",
    "cache_size_per_class",
    "prediction_weights",
    "build_unsupervised_cache",
    "unsupervised_cache_logits",
]

log = logging.getLogger(__name__)

TFUP_ALPHA = 0.3  # the reference's residual ratio: a cache of pseudo-labels deserves less trust than real shots
TFUP_BETA = 1.0
KL_WEIGHTS = ("reference", "exp")  # the reference's row-scaled KL weight; ours, 2 · exp(−KL)
SELECTION_SCALE = 10.0  # softmax(10 · cos): soft enough that KL between images says something
_LOG_FLOOR = -1000.0  # log 0 -> -1000, so 0 · log 0 stays 0 and a class with p = 0 still gives a finite KL


@dataclass
class UnsupervisedCache(CacheModel):
    """A cache of pseudo-labelled images, with the zero-shot distribution of each key for the KL weight."""

    key_log_probs: Tensor  # [S, C] log softmax(10 · cos) of each cached image, floored
    per_class: int  # s, the number of images kept per class


def cache_size_per_class(num_images: int, num_classes: int) -> int:
    """``s = clamp(int(0.3 · N / C), 9, 16)`` (truncated, as the reference), never more than the images available."""
    share = int(0.3 * num_images / num_classes)
    return max(1, min(max(share, 9), 16, num_images))


def _selection_probs(zero_shot_logits: Tensor, logit_scale: float) -> tuple[Tensor, Tensor]:
    """``p = softmax(10 · cos)`` and its floored log, from logits on ``logit_scale``."""
    scaled = zero_shot_logits.to(torch.float64) * (SELECTION_SCALE / logit_scale)  # 10 · cos
    log_probs = torch.log_softmax(scaled, dim=1)  # [N, C]
    return log_probs.exp(), log_probs.clamp(min=_LOG_FLOOR)


def _kl_matrix(probs: Tensor, log_probs: Tensor, other_log_probs: Tensor) -> Tensor:
    """``KL(p_a ‖ q_b)`` for every row a of ``probs`` and b of ``other_log_probs``: ``[A, B]``."""
    entropy_term = (probs * log_probs).sum(dim=1, keepdim=True)  # [A, 1] sum p log p (0 where p = 0)
    return entropy_term - probs @ other_log_probs.T  # [A, B]


def prediction_weights(query_probs: Tensor, query_log_probs: Tensor, key_log_probs: Tensor, kl_weight: str = "reference") -> Tensor:
    """The KL weight ``w(x, j)`` in [0, 2] of each query to each key (module docstring): ``[N, S]``."""
    if kl_weight not in KL_WEIGHTS:
        raise ConfigError(f"kl_weight is '{kl_weight}'. Valid: {', '.join(KL_WEIGHTS)}.")
    divergence = _kl_matrix(query_probs, query_log_probs, key_log_probs).clamp(min=0.0)  # [N, S]; rounding can dip below 0
    if kl_weight == "exp":
        return 2.0 * torch.exp(-divergence)
    # z-scoring first changes nothing after min-max scaling (both are increasing affine maps per row); it is the
    # reference's order, and a row of equal divergences is the one case where both would divide by zero
    spread = divergence.amax(dim=1, keepdim=True) - divergence.amin(dim=1, keepdim=True)  # [N, 1]
    flat = spread <= 1e-12 * divergence.abs().amax(dim=1, keepdim=True).clamp(min=1.0)
    scaled = (divergence - divergence.amin(dim=1, keepdim=True)) / torch.where(flat, torch.ones_like(spread), spread)
    return torch.where(flat, torch.ones_like(scaled), 2.0 * (1.0 - scaled))


def build_unsupervised_cache(
    image_feats: Tensor,
    zero_shot_logits: Tensor,
    class_names: Sequence[str],
    logit_scale: float = 100.0,
    per_class: int | None = None,
) -> UnsupervisedCache:
    """Select ``s`` typical confident images per class from unlabelled images (TFUP's rule, module docstring).

    ``zero_shot_logits [N, C]`` are on ``logit_scale`` (``logit_scale · cos``); ``per_class`` overrides ``s``.
    """
    class_names = list(class_names)
    if not class_names or len(set(class_names)) != len(class_names):
        raise ConfigError("the class list is empty or names a class twice; give each class once.")
    _check_feats(image_feats, "image features")
    num_images = image_feats.shape[0]
    if num_images == 0:
        raise ConfigError("no images to build an unsupervised cache from; give at least one image.")
    _check_logits(zero_shot_logits, num_images, class_names, "zero-shot logits")
    if logit_scale <= 0:
        raise ConfigError(f"logit_scale is '{logit_scale}'; it must be positive (100 for CLIP).")
    if per_class is not None and per_class < 1:
        raise ConfigError(f"per_class is '{per_class}'; it must be at least 1, or None for TFUP's rule.")
    keep = cache_size_per_class(num_images, len(class_names)) if per_class is None else min(per_class, num_images)
    candidates_per_class = min(2 * keep, num_images)

    probs, log_probs = _selection_probs(zero_shot_logits, logit_scale)  # [N, C]
    ranked = torch.sort(probs.T, dim=1, descending=True, stable=True).indices[:, :candidates_per_class]  # [C, 2s]
    chosen: list[Tensor] = []
    for column in range(len(class_names)):
        candidates = ranked[column]  # [2s] images most confidently of this class
        divergence = _kl_matrix(probs[candidates], log_probs[candidates], log_probs[candidates])
        typicality = divergence.sum(dim=1)  # [2s] summed KL to the other candidates (the diagonal is 0)
        order = torch.sort(typicality, stable=True).indices[:keep]
        chosen.append(candidates[order])
    sources = torch.cat(chosen)  # [C·s] image index of each key
    labels = torch.arange(len(class_names), device=image_feats.device).repeat_interleave(keep)  # [C·s]
    values = torch.nn.functional.one_hot(labels, len(class_names)).to(image_feats)
    log.info("unsupervised cache: %d images per class, %d keys", keep, sources.numel())
    return UnsupervisedCache(
        keys=image_feats[sources],
        values=values,
        class_names=class_names,
        sources=sources.tolist(),
        key_log_probs=log_probs[sources],
        per_class=keep,
    )


def unsupervised_cache_logits(
    image_feats: Tensor,
    zero_shot_logits: Tensor,
    cache: UnsupervisedCache,
    logit_scale: float = 100.0,
    alpha: float = TFUP_ALPHA,
    beta: float = TFUP_BETA,
    kl_weight: str = "reference",
) -> CacheOutput:
    """``zero_shot_logits + α · exp(−β (1 − cos · w)) L`` with the KL weight ``w`` of the module docstring."""
    _check_feats(image_feats, "image features")
    _check_logits(zero_shot_logits, image_feats.shape[0], cache.class_names, "zero-shot logits")
    feats = image_feats.to(torch.float64)
    query_probs, query_log_probs = _selection_probs(zero_shot_logits, logit_scale)  # [N, C]
    cosine = feats @ cache.keys.to(torch.float64).T  # [N, S]
    weight = prediction_weights(query_probs, query_log_probs, cache.key_log_probs, kl_weight)  # [N, S] in [0, 2]
    affinity = torch.exp(-beta * (1.0 - cosine * weight))  # [N, S]
    return _output(affinity, zero_shot_logits.to(torch.float64), cache, alpha)
