"""The result types every engine and writer shares: one row shape (:class:`Prediction`), a run's result
(:class:`ClassificationResult`) and what a method produced on a set of image features (:class:`MethodOutput`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import torch

__all__ = ["Prediction", "ClassificationResult", "MethodOutput", "json_safe", "prediction_row"]


@dataclass
class Prediction:
    """One row of output: an image, its top-k and the error that stopped it, if any."""

    id: str
    path: str | None
    label: str | None  # top-1 class, None for an error row
    top_k: list[tuple[str, float]] = field(default_factory=list)  # (class, probability), best first
    error: str | None = None
    true_label: str | None = None  # from a class sub-folder or dataset column, when known
    explanation: dict[str, Any] | None = None
    unknown_score: float | None = None  # how sure the image shows one of the classes (with --unknown/--multi-label)
    labels: list[tuple[str, float]] | None = None  # (class, score) of every label it got (--multi-label)

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "path": self.path if self.path is not None else self.id,
            "label": self.label,
            "top_k": [{"label": c, "prob": round(p, 6)} for c, p in self.top_k],
            "error": self.error,
        }
        if self.true_label is not None:
            row["true_label"] = self.true_label
        if self.unknown_score is not None:
            row["unknown_score"] = round(self.unknown_score, 6)
        if self.labels is not None:
            row["labels"] = [{"label": c, "score": round(p, 6)} for c, p in self.labels]
        if self.explanation is not None:
            row["explanation"] = self.explanation
        return row


@dataclass
class ClassificationResult:
    """Predictions for every input (error rows included) plus the matrices behind them."""

    predictions: list[Prediction]  # input order
    class_names: list[str]
    logits: torch.Tensor  # [N_ok, C], rows aligned with the non-error predictions
    probs: torch.Tensor  # [N_ok, C]
    stats: dict[str, Any] = field(default_factory=dict)
    warnings: list[dict] = field(default_factory=list)  # e.g. classes whose descriptors fell back to the name
    artifacts: dict[str, Any] = field(default_factory=dict)  # descriptors / pairs used, for export
    label_metric: Any = None  # the Fréchet-mean metric when a label-space refiner ran (for expected squared distance)

    @property
    def errors(self) -> list[Prediction]:
        return [p for p in self.predictions if p.error is not None]

    @property
    def ok(self) -> list[Prediction]:
        return [p for p in self.predictions if p.error is None]

    def rows(self) -> list[dict[str, Any]]:
        return [p.to_dict() for p in self.predictions]


@dataclass
class MethodOutput:
    """What a method spec produced for N images and C classes."""

    logits: torch.Tensor  # [N, C]
    probs: torch.Tensor  # [N, C]
    explanations: list[dict | None] | None = None  # per image, when asked for
    llm_calls: int = 0
    llm_tokens: int = 0
    seconds: float = 0.0
    warnings: list[dict] = field(default_factory=list)  # rows for things that went wrong but did not stop the run
    info: dict[str, Any] = field(default_factory=dict)  # small JSON-able facts for the run summary
    weights: torch.Tensor | None = None  # [C, D] the text head's class weights
    text_feats: torch.Tensor | None = None  # [T, D] the sentences behind the weights (for explanations)
    artifacts: dict[str, Any] = field(default_factory=dict)  # larger products to export (descriptors, pairs)
    labels: list[str] | None = None  # label-space answers (Fréchet mean), when they differ from the argmax
    label_metric: Any = None  # the Fréchet mean's metric, for expected squared distance
    unknown_scores: Any = None  # [N] per image, how sure it shows one of the classes (refiner unknown)
    label_sets: list[list[tuple[str, float]]] | None = None  # per image, its (class, score) labels (multi-label)


def prediction_row(pred: Prediction) -> dict[str, Any]:
    """A prediction as a JSON-ready dict, with its id (dataset rows have no path)."""
    return {"id": pred.id, **json_safe(pred.to_dict())}


def json_safe(value: Any, depth: int = 0) -> Any:
    """Plain JSON values only: tensors become lists, NaN becomes None, unknown objects become their repr."""
    if depth > 20:
        return repr(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # tensors, numpy arrays and scalars
        return json_safe(value.tolist(), depth + 1)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_safe(v, depth + 1) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return json_safe(vars(value), depth + 1)
    return repr(value)
