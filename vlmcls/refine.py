"""Glue between a method's logits and the training-free refiners of :mod:`vlmcls.adapters`.

Refiners run after any scoring method: Tip-Adapter (a labelled support folder), a TFUP-style cache built from
the images being classified, and the Fréchet-mean label-space adapter (Loki), which may predict labels that
were never prompted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from .adapters import (
    DEFAULT_ALPHA,
    DEFAULT_BETA,
    LabelMetric,
    build_cache,
    build_unsupervised_cache,
    cache_logits,
    frechet_mean,
    tune_alpha_beta,
    unsupervised_cache_logits,
)
from .errors import ConfigError
from .scoring import probabilities

if TYPE_CHECKING:
    from .api import Classifier
    from .methods import MethodOptions, MethodOutput

__all__ = ["RefinerOptions", "apply_refiners", "load_label_metric"]

log = logging.getLogger(__name__)


@dataclass
class RefinerOptions:
    """Which refiners run after the method, and their settings."""

    support: str | Path | None = None  # Tip-Adapter: a folder of labelled shots (class sub-folders)
    tip_alpha: float | None = None  # None = REFERENCE.md default (1.0), or the tuned value with tune=True
    tip_beta: float | None = None
    tune: bool = False  # pick α, β by leave-one-out on the support set (never on the images classified)
    self_cache: bool = False  # TFUP-style cache from the unlabelled images themselves
    self_cache_kl_weight: str = "reference"  # TFUP's row-scaled KL weight, or "exp": 2 · exp(−KL) (adapters.unsupervised)
    label_space: Sequence[str] | str | Path | None = None  # labels the Fréchet mean may predict (file or list)
    hierarchy: str | Path | None = None  # metric (a): parent/child edges
    distances: str | Path | None = None  # metric (b): a named distance matrix
    self_metric: bool = False  # metric (c): derived from the label names' text embeddings
    frechet_top_k: int | None = None  # keep each image's k most probable classes in the Fréchet sum
    frechet_scale: float | None = None  # P = softmax(scale · cos); None = the model's logit scale (100 for CLIP)

    @property
    def frechet(self) -> bool:
        return bool(self.hierarchy or self.distances or self.self_metric)


def load_label_metric(
    clf: "Classifier", options: RefinerOptions, class_names: list[str], descriptors: Any = None
) -> tuple[LabelMetric, list[str] | None]:
    """The label metric and label space from the options (exactly one metric source).

    The self-derived metric embeds each label by its CbD descriptor sentences when a descriptor set covers it
    (invented or rare names say little on their own), else by "a photo of a {label}.".
    """
    from .api import load_classes

    sources = [s for s in (options.hierarchy, options.distances, options.self_metric or None) if s]
    if len(sources) != 1:
        raise ConfigError("give exactly one label metric: --hierarchy FILE, --distances FILE or --self-metric.")
    space = load_classes(options.label_space) if options.label_space is not None else None
    if options.hierarchy:
        return LabelMetric.from_hierarchy_file(options.hierarchy), space
    if options.distances:
        return LabelMetric.from_distance_file(options.distances), space
    from .descriptors import DescriptorSet
    from .scoring import ClassTexts, class_text_weights
    from .templates import wordify

    names = list(dict.fromkeys([*class_names, *(space or [])]))
    dset = descriptors if isinstance(descriptors, DescriptorSet) else DescriptorSet.from_json(descriptors) if descriptors else None
    per_label = {n: dset.sentences(n) if dset is not None and n in dset else [f"a photo of a {wordify(n)}."] for n in names}
    texts = ClassTexts.from_mapping(per_label)
    weights = class_text_weights(clf.encoder.encode_texts(texts.texts), texts.owner, len(names), "mean_embedding")  # [Y, D]
    return LabelMetric.from_embeddings(names, weights.double()), space


def apply_refiners(
    clf: "Classifier",
    image_feats: torch.Tensor,
    class_names: list[str],
    out: "MethodOutput",
    options: "MethodOptions",
    base_method: str,
) -> tuple["MethodOutput", list[str] | None]:
    """Refine a method's logits in place; returns the output and Fréchet labels (None without that refiner)."""
    ref: RefinerOptions = options.refiners
    notes: list[dict[str, Any]] = [{} for _ in range(image_feats.shape[0])]
    rule = clf.model.score_rule
    if ref.support is not None:
        support = clf.encode_images(ref.support)
        if support.errors:
            out.warnings.extend({"support_image": r.id, "error": reason} for r, reason in support.errors)
        labels = [r.label for r in support.records]
        if any(label is None for label in labels):
            raise ConfigError(f"support folder '{ref.support}' must hold class sub-folders (one per class).")
        cache = build_cache(support.feats.double(), labels, class_names)
        alpha = ref.tip_alpha if ref.tip_alpha is not None else DEFAULT_ALPHA
        beta = ref.tip_beta if ref.tip_beta is not None else DEFAULT_BETA
        if ref.tune:
            from .methods import run_method

            support_logits = run_method(base_method, clf, support.feats, class_names, options).logits
            tuned = tune_alpha_beta(cache, support_logits.double())
            alpha, beta = tuned.alpha, tuned.beta
            out.info.update(tip_loo_accuracy=round(tuned.loo_accuracy, 4), tip_support_zero_shot=round(tuned.zero_shot_accuracy, 4))
        refined = cache_logits(image_feats.double(), out.logits.double(), cache, alpha=alpha, beta=beta)
        out.logits = refined.logits.float()
        out.info.update(tip_alpha=round(float(alpha), 4), tip_beta=round(float(beta), 4), support_images=len(labels))
        for n in range(len(notes)):
            info = refined.explain(n)
            src = info.pop("nearest_cached_example")
            info["nearest_support_image"] = support.records[src].id if src is not None else None
            notes[n]["tip"] = info
    if ref.self_cache:
        ucache = build_unsupervised_cache(image_feats.double(), out.logits.double(), class_names, clf.model.logit_scale)
        refined = unsupervised_cache_logits(image_feats.double(), out.logits.double(), ucache, clf.model.logit_scale,
                                            kl_weight=ref.self_cache_kl_weight)
        out.logits = refined.logits.float()
        out.info.update(self_cache_per_class=ucache.per_class)
        for n in range(len(notes)):
            notes[n]["self_cache"] = refined.explain(n)
    out.probs = probabilities(out.logits, rule)
    frechet_labels = None
    if ref.frechet:
        metric, space = load_label_metric(clf, ref, class_names, options.descriptors)
        # Loki's P is softmax(scale · cos): rescale the method's logits when another sharpness is asked for.
        factor = ref.frechet_scale / clf.model.logit_scale if ref.frechet_scale else 1.0
        result = frechet_mean(out.logits.double() * factor, class_names, metric, label_space=space, top_k=ref.frechet_top_k)
        frechet_labels = result.labels
        out.info.update(label_space_size=len(result.label_space), frechet_kept_mass=round(float(result.kept_mass.mean()), 4))
        out.info["label_metric"] = metric
        for n in range(len(notes)):
            notes[n]["frechet"] = {"label": result.labels[n], "zero_shot_label": result.zero_shot_labels[n],
                                   "pulled_by": result.contributions[n] if result.contributions else []}
    if options.explain and any(notes):
        base = out.explanations or [None] * len(notes)
        out.explanations = [{**(b or {}), **note} if note else b for b, note in zip(base, notes)]
    return out, frechet_labels
