"""Text weights, aggregation rules, logits, probabilities and top-k.

Both reference aggregation rules reduce to one matrix product with per-class weights:
``mean_similarity`` (CbD: S[n, c] = mean_j f_n · t_cj = f_n · mean_j t_cj, the mean NOT renormalised) and
``mean_embedding`` (CLIP's template ensemble: f_n · normalise(mean_j t_cj)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from .embeddings import l2_normalize
from .errors import ConfigError

__all__ = ["AGGREGATIONS", "ClassTexts", "class_text_weights", "compute_logits", "probabilities", "top_k"]

AGGREGATIONS = ("mean_similarity", "mean_embedding")


@dataclass
class ClassTexts:
    """The sentences that stand for each class, flattened with an owner index (ragged per class)."""

    class_names: list[str]  # C names, in the order of the logits' columns
    texts: list[str]  # T sentences
    owner: torch.Tensor  # [T] long: which class each sentence belongs to

    @classmethod
    def from_mapping(cls, per_class: Mapping[str, Sequence[str]]) -> "ClassTexts":
        names, texts, owner = [], [], []
        for c, (name, sentences) in enumerate(per_class.items()):
            if not sentences:
                raise ConfigError(f"class '{name}' has no sentences to score with")
            names.append(name)
            texts.extend(sentences)
            owner.extend([c] * len(sentences))
        if not names:
            raise ConfigError("no classes given")
        return cls(names, texts, torch.tensor(owner, dtype=torch.long))


def class_text_weights(text_feats: torch.Tensor, owner: torch.Tensor, num_classes: int, rule: str) -> torch.Tensor:
    """text_feats [T, D] (unit rows) grouped by owner [T] -> text_weights [C, D] by one aggregation rule."""
    if rule not in AGGREGATIONS:
        raise ConfigError(f"unknown aggregation '{rule}'. Valid: {', '.join(AGGREGATIONS)}.")
    dim = text_feats.shape[1]
    sums = torch.zeros(num_classes, dim, dtype=text_feats.dtype).index_add_(0, owner, text_feats)  # [C, D]
    counts = torch.bincount(owner, minlength=num_classes).clamp_min(1).to(text_feats.dtype)  # [C]
    mean = sums / counts[:, None]  # [C, D]
    return l2_normalize(mean) if rule == "mean_embedding" else mean


def compute_logits(image_feats: torch.Tensor, text_weights: torch.Tensor, scale: float, bias: float | None = None) -> torch.Tensor:
    """image_feats [N, D] × text_weights [C, D] -> logits [N, C] = scale · cos (+ bias for SigLIP)."""
    logits = scale * image_feats @ text_weights.T  # [N, C]
    return logits + bias if bias is not None else logits


def probabilities(logits: torch.Tensor, rule: str = "softmax") -> torch.Tensor:
    """softmax across classes (CLIP) or an independent sigmoid per class (SigLIP)."""
    if rule == "sigmoid":
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=-1)


def top_k(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best (values [N, k], indices [N, k]); k is clipped to the number of classes."""
    k = max(1, min(int(k), probs.shape[1]))
    return torch.topk(probs, k, dim=1)
