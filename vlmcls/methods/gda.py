"""GDA (``gda``): a Gaussian classifier fitted on labelled support shots, added to the logits so far.

Prepared once on the driver from the support folder's features (cached like Tip-Adapter's); applied per image as
one ``[B, D] × [D, C]`` product, so it runs the same on every engine. The maths is :mod:`vlmcls.adapters.gda`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .pipeline import BatchScores, Pipeline, RunContext, RunReport, merge_notes
from .registry import METHODS, MethodRecord, REFINER, option, register, templates_head

if TYPE_CHECKING:
    import torch

    from ..adapters.gda import GdaModel

__all__ = ["GdaConfig"]


@dataclass
class GdaConfig:
    support: Path | None = option(None, "A folder of labelled shots (one sub-folder per class, every class).",
                                  file="dir")
    alpha: float | None = option(None, "Weight α of the Gaussian term (default: chosen from the reference's grid "
                                 "by held-out accuracy on the support shots).", minimum=0.0)


@dataclass
class GdaStage:
    model: GdaModel
    alpha: float
    class_names: list[str]

    def apply(self, feats: torch.Tensor, upstream: BatchScores, explain: bool) -> BatchScores:
        from ..adapters.gda import gda_logits

        refined = gda_logits(feats, upstream.logits, self.model, self.alpha)  # [B, C] float64
        notes = upstream.notes
        if explain:
            before, after = upstream.logits.argmax(dim=1), refined.argmax(dim=1)
            term = refined - upstream.logits.double()  # α (f Wᵀ + b); 6 significant digits: W can be large
            own = [{"class": self.class_names[int(a)], "zero_shot_class": self.class_names[int(b)],
                    "gda_term": float(f"{float(term[n, a]):.6g}")} for n, (a, b) in enumerate(zip(after, before))]
            notes = merge_notes(upstream.notes, "gda", own)
        return BatchScores(refined.float(), notes, upstream.labels)

    def summarize(self, counts: dict[str, float], images: int) -> dict[str, Any]:
        return {}


def _prepare_gda(context: RunContext, config: GdaConfig, upstream: Pipeline, gather, report: RunReport) -> GdaStage:
    from ..adapters.gda import choose_alpha, fit_gda, label_columns

    if config.support is None:
        raise ConfigError(f"refiner 'gda' needs {METHODS['gda'].requires}.")
    if context.encode_images is None:
        raise ConfigError("refiner 'gda' needs an image side to encode the support folder.")
    support = context.encode_images(config.support)
    if support.errors:
        report.warnings.extend({"support_image": r.id, "error": reason} for r, reason in support.errors)
    labels = [r.label for r in support.records]
    if not labels or any(label is None for label in labels):
        raise ConfigError(f"gda.support '{config.support}' must hold class sub-folders of images (one per class).")
    columns = label_columns(labels, context.class_names)
    num_classes = len(context.class_names)
    feats = support.feats.double()
    model = fit_gda(feats, columns, num_classes)
    if not model.spread:
        report.warnings.append({"method": "gda", "warning": "one shot per class: no spread to estimate a covariance "
                                "from, so GDA adds nothing (as the reference); give two or more shots per class"})
    alpha = config.alpha
    if alpha is None:
        choice = choose_alpha(feats, columns, num_classes, upstream.apply(support.feats).logits.double())
        alpha = choice.alpha
        if choice.accuracy is not None:
            report.info.update(gda_heldout_accuracy=round(choice.accuracy, 4), gda_folds=choice.folds)
    report.info.update(gda_alpha=float(alpha), gda_support_images=len(labels))
    return GdaStage(model, float(alpha), list(context.class_names))



register(MethodRecord(
    name="gda", kind=REFINER, summary="GDA: class means + one shared covariance from labelled shots, added to the logits",
    text_source="-", config=GdaConfig, prepare=_prepare_gda,
    cost="encodes the support folder once (cached); one D×D pseudo-inverse per fold",
    head_when_alone=templates_head, order=15, implied_by=lambda config: config.support is not None,
    requires="option gda.support: a folder of labelled shots (one sub-folder per class, every class)",
))
