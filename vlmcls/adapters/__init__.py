"""Training-free refiners on top of zero-shot logits.

- :func:`frechet_mean` (Loki): predict over a label space larger than the prompted classes, using a
  :class:`LabelMetric` from a hierarchy, a distance file, or the class text embeddings.
- :func:`build_cache` / :func:`cache_logits` / :func:`tune_alpha_beta` (Tip-Adapter): a few-shot cache model.
- :func:`build_unsupervised_cache` / :func:`unsupervised_cache_logits` (TFUP-style): a cache of the unlabelled
  images themselves.

All take L2-normalised features and logits on the model's scale; classes are matched by name.
"""

from .cache_model import (
    DEFAULT_ALPHA,
    DEFAULT_BETA,
    CacheModel,
    CacheOutput,
    TuneResult,
    build_cache,
    cache_logits,
    tune_alpha_beta,
)
from .frechet import FrechetResult, expected_squared_distance, frechet_mean, label_space_scores
from .metrics import EmbeddingMetric, LabelMetric, MatrixMetric, TreeMetric
from .unsupervised import (
    TFUP_ALPHA,
    TFUP_BETA,
    UnsupervisedCache,
    build_unsupervised_cache,
    cache_size_per_class,
    unsupervised_cache_logits,
)

__all__ = [
    "LabelMetric",
    "TreeMetric",
    "MatrixMetric",
    "EmbeddingMetric",
    "FrechetResult",
    "frechet_mean",
    "expected_squared_distance",
    "label_space_scores",
    "DEFAULT_ALPHA",
    "DEFAULT_BETA",
    "CacheModel",
    "CacheOutput",
    "TuneResult",
    "build_cache",
    "cache_logits",
    "tune_alpha_beta",
    "TFUP_ALPHA",
    "TFUP_BETA",
    "UnsupervisedCache",
    "build_unsupervised_cache",
    "cache_size_per_class",
    "unsupervised_cache_logits",
]
