"""TDA (Karmanov et al., CVPR 2024): a positive and a negative cache filled from the stream of test images.

The rules of the released code (kdiAAA/TDA ``tda_runner.py``, one view per image), for each image t in order:

1. ``p = softmax(logits_t)``, ``loss = −Σ p ln p`` (natural log), ``h = loss / log2(C)`` (the reference mixes the
   bases; kept), ``pred = argmax logits_t``.
2. Positive cache (capacity 3 per class): put ``(f_t, loss)`` in class ``pred``'s list: appended while the list
   is short, else it replaces the list's last (highest-loss) item when its loss is strictly lower; the list is then
   sorted by loss (stable).
3. Negative cache (capacity 2), the same rule, only when ``0.2 < h < 0.5``; its items also keep ``p``.
4. ``logits_t + α⁺ Σ_pos exp(−β⁺ (1 − f_t·k)) onehot(class) − α⁻ Σ_neg exp(−β⁻ (1 − f_t·k)) [0.03 < p_k < 1]``
   over the items in the caches *after* step 2–3, so an image meets itself when it was cached.

Defaults are the reference's ImageNet settings (α⁺ 2, β⁺ 5; α⁻ 0.117, β⁻ 1). Replaying the stream needs no
features: :func:`replay_stream` records when each image enters and leaves a cache (``born ≤ t < died``), and
:func:`tda_logits` scores any batch of the run's images from that log, so the stream runs once on the driver and
the per-image scoring runs batch by batch anywhere, with the same result as the sequential loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from .cache_model import _check_feats

__all__ = ["TdaSettings", "TdaCache", "TdaLog", "replay_stream", "tda_logits"]


@dataclass(frozen=True)
class TdaSettings:
    positive_capacity: int = 3
    positive_alpha: float = 2.0
    positive_beta: float = 5.0
    negative_capacity: int = 2
    negative_alpha: float = 0.117
    negative_beta: float = 1.0
    entropy_lower: float = 0.2  # normalised entropy window of the images the negative cache takes (exclusive)
    entropy_upper: float = 0.5
    mask_lower: float = 0.03  # classes whose probability lies in (lower, upper) are pushed down by a negative item
    mask_upper: float = 1.0


@dataclass
class TdaCache:
    """Every item that was ever in one cache, with the stream positions it was alive at: ``born ≤ t < died``."""

    images: Tensor  # [E] position of the image each item holds
    values: Tensor  # [E, C] one-hot class (positive) or the 0/1 mask of its probabilities (negative)
    born: Tensor  # [E]
    died: Tensor  # [E] (the stream's length when it never left)
    keys: Tensor  # [E, D] the items' features


@dataclass
class TdaLog:
    positive: TdaCache
    negative: TdaCache
    settings: TdaSettings


def _insert(lists: dict[int, list[int]], pred: int, item: int, loss: Tensor, capacity: int, died: dict[int, int],
            t: int) -> bool:
    """The reference's ``update_cache`` on item ids; returns whether ``item`` went in."""
    items = lists.get(pred)
    if items is None:
        lists[pred] = [item]
        return True
    if len(items) < capacity:
        items.append(item)
    elif loss[item] < loss[items[-1]]:
        died[items[-1]] = t
        items[-1] = item
    else:
        return False
    items.sort(key=lambda i: float(loss[i]))  # stable, like sorted(..., key=itemgetter(1))
    return True


def replay_stream(image_feats: Tensor, logits: Tensor, settings: TdaSettings = TdaSettings()) -> TdaLog:
    """Run the stream in row order and log every cache item's life (module docstring)."""
    _check_feats(image_feats, "image features")
    count, classes = logits.shape
    if image_feats.shape[0] != count:
        raise ConfigError(f"{image_feats.shape[0]} image features but {count} rows of logits.")
    log_probs = torch.log_softmax(logits.to(torch.float64), dim=1)  # [N, C]
    probs = log_probs.exp()
    loss = -(probs * log_probs).nan_to_num().sum(dim=1)  # [N] entropy in nats
    normalised = loss / math.log2(classes) if classes > 1 else torch.zeros_like(loss)
    preds = logits.argmax(dim=1).tolist()
    positive: dict[int, list[int]] = {}
    negative: dict[int, list[int]] = {}
    pos_born: dict[int, int] = {}
    neg_born: dict[int, int] = {}
    pos_died: dict[int, int] = {}
    neg_died: dict[int, int] = {}
    window = (normalised > settings.entropy_lower) & (normalised < settings.entropy_upper)
    for t, pred in enumerate(preds):
        if _insert(positive, pred, t, loss, settings.positive_capacity, pos_died, t):
            pos_born[t] = t
        if bool(window[t]) and _insert(negative, pred, t, loss, settings.negative_capacity, neg_died, t):
            neg_born[t] = t
    feats = image_feats.to(torch.float64)
    onehot = torch.nn.functional.one_hot(torch.tensor(preds, dtype=torch.long), classes).to(torch.float64)
    mask = ((probs > settings.mask_lower) & (probs < settings.mask_upper)).to(torch.float64)
    return TdaLog(_cache(pos_born, pos_died, feats, onehot, count), _cache(neg_born, neg_died, feats, mask, count),
                  settings)


def _cache(born: dict[int, int], died: dict[int, int], feats: Tensor, values: Tensor, count: int) -> TdaCache:
    images = torch.tensor(sorted(born), dtype=torch.long)
    return TdaCache(images, values[images], images.clone(),
                    torch.tensor([died.get(int(i), count) for i in images], dtype=torch.long), feats[images])


def _cache_term(feats: Tensor, positions: Tensor, cache: TdaCache, beta: float) -> Tensor:
    if cache.images.numel() == 0:
        return torch.zeros(feats.shape[0], cache.values.shape[1], dtype=torch.float64)
    alive = (cache.born[None, :] <= positions[:, None]) & (positions[:, None] < cache.died[None, :])  # [B, E]
    affinity = torch.exp(-beta * (1.0 - feats @ cache.keys.T)) * alive  # [B, E]
    return affinity @ cache.values  # [B, C]


def tda_logits(image_feats: Tensor, logits: Tensor, positions: Tensor, stream: TdaLog) -> tuple[Tensor, Tensor, Tensor]:
    """The logits of the run's images at ``positions`` [B]: (refined [B, C], positive term, negative term), float64."""
    feats = image_feats.to(torch.float64)
    positions = torch.as_tensor(positions, dtype=torch.long)
    s = stream.settings
    positive = s.positive_alpha * _cache_term(feats, positions, stream.positive, s.positive_beta)
    negative = s.negative_alpha * _cache_term(feats, positions, stream.negative, s.negative_beta)
    return logits.to(torch.float64) + positive - negative, positive, negative
