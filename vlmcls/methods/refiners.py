"""The refiners after any head: Tip-Adapter (``tip``), the TFUP-style self-cache (``tfup``) and the Fréchet mean
(``frechet``, Loki), which may answer with labels that were never prompted.

Each is prepared once on the driver — the support cache from the support folder's features, the self-cache from a
gather over every image's features, the label metric from a file or the text side — and then applied per image.
The maths lives in :mod:`vlmcls.adapters`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..sources.classes import load_classes
from ..errors import ConfigError
from ..templates import wordify
from .pipeline import BatchScores, Pipeline, RunContext, RunReport, merge_notes
from .registry import METHODS, MethodRecord, REFINER, RETIRED_FLAGS, option, register, templates_head

if TYPE_CHECKING:  # torch and the adapters are imported when a stage is prepared or applied
    import torch

    from ..adapters import CacheModel, LabelMetric, UnsupervisedCache

__all__ = ["TipConfig", "TfupConfig", "FrechetConfig", "load_label_metric", "with_label_support"]

log = logging.getLogger(__name__)


# -- Tip-Adapter ----------------------------------------------------------------------------------------------


@dataclass
class TipConfig:
    support: Path | None = option(None, "A folder of labelled shots (class sub-folders); classify adds +tip when "
                                  "it is given.", file="dir", flag="--support")
    labels: Path | None = option(None, "A labels file ({\"path\", \"label\"} JSON lines; the .labels.jsonl `vlmcls "
                                 "review` writes): its labelled images are the support set, their features read "
                                 "from the store (encoded only when not cached); classify adds +tip when it is "
                                 "given.", file="file", flag="--labels")
    alpha: float | None = option(None, "Residual weight α (default 1).", minimum=0.0, was="--tip-alpha")
    beta: float | None = option(None, "Sharpness β (default 1).", minimum=0.0, was="--tip-beta")
    tune: bool = option(False, "Pick α and β by leave-one-out on the support set (never on the images classified).",
                        was="--tune")
    calibrate: bool = option(False, "Fit a temperature on the support set by leave-one-out (each support image scored "
                             "by a cache without itself; never on the images classified) and divide the logits by it "
                             "before the softmax: the probabilities get calibrated, the labels stay the same.")


@dataclass
class TipStage:
    cache: CacheModel
    alpha: float
    beta: float
    support_ids: list[str]  # [S] for explanations
    calibration_temperature: float = 1.0  # T of softmax(logits / T) for the run's probabilities (tip.calibrate)

    def apply(self, feats: torch.Tensor, upstream: BatchScores, explain: bool) -> BatchScores:
        from ..adapters import cache_logits

        refined = cache_logits(feats.double(), upstream.logits.double(), self.cache, alpha=self.alpha, beta=self.beta)
        notes = upstream.notes
        if explain:
            own = []
            for n in range(feats.shape[0]):
                info = refined.explain(n)
                src = info.pop("nearest_cached_example")
                info["nearest_support_image"] = self.support_ids[src] if src is not None else None
                own.append(info)
            notes = merge_notes(upstream.notes, "tip", own)
        return BatchScores(refined.logits.float(), notes, upstream.labels)

    def summarize(self, counts: dict[str, float], images: int) -> dict[str, Any]:
        return {}


def _prepare_tip(context: RunContext, config: TipConfig, upstream: Pipeline, gather, report: RunReport) -> TipStage:
    from ..adapters import DEFAULT_ALPHA, DEFAULT_BETA, build_cache, tune_alpha_beta

    if config.support is None and config.labels is None:
        raise ConfigError(f"refiner 'tip' needs {METHODS['tip'].requires}.")
    if config.support is not None and config.labels is not None:
        raise ConfigError("give option tip.support or tip.labels, not both.")
    if context.encode_images is None:
        raise ConfigError("refiner 'tip' needs an image side to encode its support images.")
    support = context.encode_images(config.support if config.labels is None else _labelled_records(config.labels))
    if support.errors:
        report.warnings.extend({"support_image": r.id, "error": reason} for r, reason in support.errors)
    labels = [r.label for r in support.records]
    if any(label is None for label in labels):
        raise ConfigError(f"support folder '{config.support}' must hold class sub-folders (one per class).")
    if config.labels is not None:
        strays = sorted({label for label in labels if label not in context.class_names})
        if strays:
            raise ConfigError(f"option tip.labels: labels file '{config.labels}' labels images as "
                              f"{', '.join(repr(s) for s in strays[:10])}, not among the classes; fix those lines "
                              "or add the classes.")
    cache = build_cache(support.feats.double(), labels, context.class_names)
    alpha = config.alpha if config.alpha is not None else DEFAULT_ALPHA
    beta = config.beta if config.beta is not None else DEFAULT_BETA
    if config.tune:
        support_logits = upstream.apply(support.feats).logits  # the pipeline so far, on the support images
        tuned = tune_alpha_beta(cache, support_logits.double())
        alpha, beta = tuned.alpha, tuned.beta
        report.info.update(tip_loo_accuracy=round(tuned.loo_accuracy, 4),
                           tip_support_zero_shot=round(tuned.zero_shot_accuracy, 4))
    report.info.update(tip_alpha=round(float(alpha), 4), tip_beta=round(float(beta), 4), support_images=len(labels))
    temperature = 1.0
    if config.calibrate:
        temperature = _fit_support_temperature(context, cache, upstream, support.feats, float(alpha), float(beta))
        report.info["calibration_temperature"] = round(temperature, 4)
        if temperature <= 0.01:  # support images all right with room to spare: the fit runs to its bound
            report.warnings.append({"calibration": f"tip.calibrate: the support images are separated perfectly, so "
                                    f"the fitted temperature ({temperature:.3g}) only says 'be sure'; give more or "
                                    "harder support images, or leave tip.calibrate off."})
    return TipStage(cache, float(alpha), float(beta), [r.id for r in support.records], temperature)


def _fit_support_temperature(context: RunContext, cache: "CacheModel", upstream: Pipeline, support_feats: "torch.Tensor",
                             alpha: float, beta: float) -> float:
    """T fitted on the support images' leave-one-out logits (the cache without each image itself)."""
    from ..adapters.cache_model import loo_cache_logits
    from ..adapters.calibration import fit_temperature

    if context.text.score_rule != "softmax":
        raise ConfigError("option tip.calibrate fits a softmax temperature; this model scores each class with its "
                          "own sigmoid. Leave tip.calibrate off.")
    if cache.keys.shape[0] < 2:
        raise ConfigError("option tip.calibrate needs at least two support images.")
    loo = loo_cache_logits(cache, upstream.apply(support_feats).logits.double(), alpha, beta)  # [S, C]
    return fit_temperature(loo, cache.values.argmax(dim=1))


def with_label_support(method_options: dict, labels: str | Path, labelled: int) -> dict:
    """A run's options ({method: {key: value}}) changed to re-score with the images ``labels`` labels as
    Tip-Adapter's support set (α, β by leave-one-out when ``labelled`` ≥ 2): what "improve with my labels" runs."""
    options = {name: dict(values) for name, values in (method_options or {}).items()}
    tip = {key: value for key, value in options.get("tip", {}).items() if key != "support"}
    options["tip"] = {**tip, "labels": str(labels), "tune": "true" if labelled >= 2 else "false"}
    return options


def _labelled_records(path: Path) -> list:
    """The labels file's labelled images as image records (their class as the record's label)."""
    from ..encode.images import ImageRecord
    from ..review.labels import read_label_map

    labelled = read_label_map(path)
    if not labelled:
        raise ConfigError(f"option tip.labels: labels file '{path}' labels no image yet; label some images first.")
    return [ImageRecord(id=file, path=Path(file), label=label, source_index=i)
            for i, (file, label) in enumerate(labelled.items())]


register(MethodRecord(
    name="tip", kind=REFINER, summary="Tip-Adapter: a training-free cache of labelled support shots",
    text_source="-", config=TipConfig, prepare=_prepare_tip, cost="encodes the support folder once (cached)",
    head_when_alone=templates_head, order=10,
    implied_by=lambda config: config.support is not None or config.labels is not None,
    shown=("tip_alpha", "tip_beta"),
    requires="option tip.support (a folder of labelled shots, one sub-folder per class) or tip.labels (a labels file)",
))


# -- TFUP-style self-cache ------------------------------------------------------------------------------------


@dataclass
class TfupConfig:
    kl_weight: str = option("reference", "TFUP's row-scaled KL weight ('reference') or 2·exp(−KL) ('exp').",
                            choices=("reference", "exp"), was="--self-cache-kl-weight")


@dataclass
class TfupStage:
    cache: UnsupervisedCache
    logit_scale: float
    kl_weight: str  # adapters.unsupervised.KL_WEIGHTS

    def apply(self, feats: torch.Tensor, upstream: BatchScores, explain: bool) -> BatchScores:
        from ..adapters import unsupervised_cache_logits

        refined = unsupervised_cache_logits(feats.double(), upstream.logits.double(), self.cache, self.logit_scale,
                                            kl_weight=self.kl_weight)
        notes = upstream.notes
        if explain:
            notes = merge_notes(upstream.notes, "self_cache", [refined.explain(n) for n in range(feats.shape[0])])
        return BatchScores(refined.logits.float(), notes, upstream.labels)

    def summarize(self, counts: dict[str, float], images: int) -> dict[str, Any]:
        return {"self_cache_per_class": self.cache.per_class}


def _feats_and_logits(positions: torch.Tensor, feats: torch.Tensor, scores: BatchScores):
    return positions, feats, scores.logits


def _prepare_tfup(context: RunContext, config: TfupConfig, upstream: Pipeline, gather, report: RunReport) -> TfupStage:
    import torch

    from ..adapters import build_unsupervised_cache

    parts = gather(upstream, _feats_and_logits)  # a global pass: the cache is chosen among all the images
    positions = torch.cat([p for p, _, _ in parts])
    order = torch.argsort(positions)
    feats = torch.cat([f for _, f, _ in parts])[order]  # [N, D] in the run's order
    logits = torch.cat([l for _, _, l in parts])[order]  # [N, C]
    scale = context.text.logit_scale
    cache = build_unsupervised_cache(feats.double(), logits.double(), context.class_names, scale)
    return TfupStage(cache, scale, config.kl_weight)


register(MethodRecord(
    name="tfup", kind=REFINER, summary="TFUP-style cache of confident, typical images among those classified",
    text_source="-", config=TfupConfig, prepare=_prepare_tfup, cost="one pass over all image features",
    head_when_alone=templates_head, order=20,
))
RETIRED_FLAGS["--self-cache"] = "--method HEAD+tfup (e.g. cbd+tfup)"


# -- Fréchet mean (Loki) --------------------------------------------------------------------------------------


@dataclass
class FrechetConfig:
    label_space: str | list[str] | None = option(None, "Labels that may be predicted (file or comma list; default "
                                                 "all labels of the metric).", was="--label-space",
                                                 file="maybe")
    hierarchy: Path | None = option(None, "Label metric from parent/child edges (also E[d²] in eval).", file="file",
                                    was="--hierarchy")
    distances: Path | None = option(None, "Label metric from a named distance matrix (.csv, .npy).", file="file",
                                    was="--distances")
    self_metric: bool = option(False, "Label metric from the labels' text embeddings.", was="--self-metric")
    top_k: int | None = option(None, "Keep each image's k most probable classes in the Fréchet sum.", minimum=1,
                               was="--frechet-top-k")
    scale: float | None = option(None, "P = softmax(scale·cos) (default: the model's logit scale).", minimum=0.0,
                                 was="--frechet-scale")

    @property
    def has_metric(self) -> bool:
        return bool(self.hierarchy or self.distances or self.self_metric)


def load_label_metric(context: RunContext, config: FrechetConfig, descriptors: Any = None
                      ) -> tuple[LabelMetric, list[str] | None]:
    """The label metric and label space from the settings (exactly one metric source).

    The self-derived metric embeds each label by its CbD descriptor sentences when a descriptor set covers it
    (invented or rare names say little on their own), else by "a photo of a {label}.".
    """
    from ..adapters import LabelMetric
    from ..scoring import ClassTexts, class_text_weights

    sources = [s for s in (config.hierarchy, config.distances, config.self_metric or None) if s]
    if len(sources) != 1:
        raise ConfigError("give exactly one label metric: option frechet.hierarchy, frechet.distances or frechet.self_metric.")
    space = load_classes(config.label_space) if config.label_space is not None else None
    if config.hierarchy:
        return LabelMetric.from_hierarchy_file(config.hierarchy), space
    if config.distances:
        return LabelMetric.from_distance_file(config.distances), space
    from ..llm.descriptors import DescriptorSet

    names = list(dict.fromkeys([*context.class_names, *(space or [])]))
    dset = descriptors if isinstance(descriptors, DescriptorSet) else DescriptorSet.from_json(descriptors) if descriptors else None
    per_label = {n: dset.sentences(n) if dset is not None and n in dset else [f"a photo of a {wordify(n)}."] for n in names}
    texts = ClassTexts.from_mapping(per_label)
    weights = class_text_weights(context.text.encode_texts(texts.texts), texts.owner, len(names), "mean_embedding")  # [Y, D]
    return LabelMetric.from_embeddings(names, weights.double()), space


@dataclass
class FrechetStage:
    metric: LabelMetric
    label_space: list[str] | None
    factor: float  # Loki's P is softmax(scale · cos): the method's logits rescaled to the asked sharpness
    top_k: int | None
    class_names: list[str]

    def apply(self, feats: torch.Tensor, upstream: BatchScores, explain: bool) -> BatchScores:
        from ..adapters import frechet_mean

        result = frechet_mean(upstream.logits.double() * self.factor, self.class_names, self.metric,
                              label_space=self.label_space, top_k=self.top_k)
        notes = upstream.notes
        if explain:
            own = [{"label": result.labels[n], "zero_shot_label": result.zero_shot_labels[n],
                    "pulled_by": result.contributions[n] if result.contributions else []} for n in range(feats.shape[0])]
            notes = merge_notes(upstream.notes, "frechet", own)
        return BatchScores(upstream.logits, notes, list(result.labels),
                           counts={"frechet_kept_mass_sum": float(result.kept_mass.sum())})

    def summarize(self, counts: dict[str, float], images: int) -> dict[str, Any]:
        size = len(self.label_space) if self.label_space is not None else len(self.metric.names)
        kept = counts.get("frechet_kept_mass_sum", 0.0) / images if images else 0.0
        return {"label_space_size": size, "frechet_kept_mass": round(kept, 4)}


def _prepare_frechet(context: RunContext, config: FrechetConfig, upstream, gather, report: RunReport) -> FrechetStage:
    if not config.has_metric:
        raise ConfigError(f"refiner 'frechet' needs {METHODS['frechet'].requires}.")
    options = context.options
    metric, space = load_label_metric(context, config, options.descriptors or options.config("cbd").descriptors)
    report.label_metric = metric
    factor = config.scale / context.text.logit_scale if config.scale else 1.0
    return FrechetStage(metric, space, factor, config.top_k, list(context.class_names))


register(MethodRecord(
    name="frechet", kind=REFINER, summary="Fréchet mean (Loki): answers over a label space, by a label metric",
    text_source="-", config=FrechetConfig, prepare=_prepare_frechet, cost="per image, one [C] × [C, Y] product",
    head_when_alone=templates_head, order=90, implied_by=lambda config: config.has_metric,
    shown=("label_space_size",),
    answers_beyond=lambda config: load_classes(config.label_space) if config.has_metric and config.label_space else None,
    requires="a label metric: option frechet.hierarchy, frechet.distances or frechet.self_metric",
))
