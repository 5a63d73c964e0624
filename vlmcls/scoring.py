"""Text weights, aggregation rules, logits, probabilities and top-k.

Both reference aggregation rules reduce to one matrix product with per-class weights:
``mean_similarity`` (CbD: S[n, c] = mean_j f_n · t_cj = f_n · mean_j t_cj, the mean NOT renormalised) and
``mean_embedding`` (CLIP's template ensemble: f_n · normalise(mean_j t_cj)).

Every function takes numpy arrays or torch tensors and answers in kind: a run whose features all come from the
store scores in numpy and never imports torch (the CLI's re-run), and the same operations in the same order give
the same numbers to float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from .encode.embeddings import l2_normalize
from .errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["AGGREGATIONS", "ClassTexts", "class_text_weights", "compute_logits", "probabilities", "top_k"]

AGGREGATIONS = ("mean_similarity", "mean_embedding")


@dataclass
class ClassTexts:
    """The sentences that stand for each class, flattened with an owner index (ragged per class)."""

    class_names: list[str]  # C names, in the order of the logits' columns
    texts: list[str]  # T sentences
    owner: np.ndarray  # [T] int64: which class each sentence belongs to

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
        return cls(names, texts, np.asarray(owner, dtype=np.int64))


def class_text_weights(text_feats: torch.Tensor, owner: Any, num_classes: int, rule: str) -> torch.Tensor:
    """text_feats [T, D] (unit rows) grouped by owner [T] -> text_weights [C, D] by one aggregation rule."""
    if rule not in AGGREGATIONS:
        raise ConfigError(f"unknown aggregation '{rule}'. Valid: {', '.join(AGGREGATIONS)}.")
    if isinstance(text_feats, np.ndarray):
        owner = np.asarray(owner, dtype=np.int64)
        sums = np.zeros((num_classes, text_feats.shape[1]), dtype=text_feats.dtype)  # [C, D]
        np.add.at(sums, owner, text_feats)
        counts = np.maximum(np.bincount(owner, minlength=num_classes), 1).astype(text_feats.dtype)  # [C]
        mean = sums / counts[:, None]  # [C, D]
        if rule == "mean_embedding":
            return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
        return mean
    import torch

    owner = torch.as_tensor(np.asarray(owner), dtype=torch.long)
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
    if isinstance(logits, np.ndarray):
        if rule == "sigmoid":
            return np.exp(-np.logaddexp(0, -logits)).astype(logits.dtype)  # 1 / (1 + e^-x), without overflow
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    import torch

    if rule == "sigmoid":
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=-1)


def top_k(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best (values [N, k], indices [N, k]); k is clipped to the number of classes."""
    k = max(1, min(int(k), probs.shape[1]))
    if isinstance(probs, np.ndarray):
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # ties: the lower class index first
        return np.take_along_axis(probs, order, axis=1), order
    import torch

    return torch.topk(probs, k, dim=1)
