"""Metrics of one method's answers on labelled images: top-1, top-k, per-class recall and precision, the worst
confusions."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

from ..errors import ConfigError

log = logging.getLogger(__name__)

UNKNOWN_LABEL_POLICIES = ("error", "keep")

@dataclass
class ClassScore:
    """One row of the per-class table."""

    name: str
    precision: float | None  # None when the class was never predicted
    recall: float | None  # None when no image of the class was scored
    support: int  # labelled images of this class
    predicted: int  # images predicted as this class


@dataclass
class Confusion:
    """An off-diagonal cell of the confusion matrix: ``count`` images of ``true`` predicted as ``predicted``."""

    true: str
    predicted: str
    count: int


@dataclass
class Metrics:
    """Accuracy figures of one method on the labelled images."""

    class_names: list[str]  # the classes, then any other label that was a true or predicted label
    count: int  # images scored (labelled, decoded)
    top1: float
    top_k: float  # accuracy of the true class being among the k best
    k: int  # the k used, clipped to the number of classes
    mean_recall: float | None  # mean over the classes with support
    per_class: list[ClassScore]
    confusion: list[list[int]]  # [L, L] rows = true label, columns = predicted label, in class_names order
    worst_confusions: list[Confusion]  # most frequent first
    unknown_labels: dict[str, int] = field(default_factory=dict)  # true labels outside the classes, kept

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["labels"] = out.pop("class_names")
        return out


def compute_metrics(
    true_labels: Sequence[str],
    probs: torch.Tensor,
    class_names: Sequence[str],
    *,
    predicted_labels: Sequence[str] | None = None,
    k: int = 5,
    unknown_labels: str = "error",
) -> Metrics:
    """Score ``probs [N, C]`` (columns = ``class_names``) against one true label name per row.

    ``predicted_labels`` overrides the argmax of ``probs`` as the top-1 answer (a label-space method may
    predict labels outside the classes); top-k still comes from ``probs``, and a right top-1 counts as a top-k hit.
    """
    class_names = list(class_names)
    if probs.ndim != 2 or probs.shape != (len(true_labels), len(class_names)):
        raise ConfigError(
            f"probabilities have shape {tuple(probs.shape)}; expected [{len(true_labels)}, {len(class_names)}] "
            "(one row per true label, one column per class)."
        )
    column = {name: c for c, name in enumerate(class_names)}
    _check_unknown_policy(unknown_labels)
    unknown = Counter(label for label in true_labels if label not in column)
    if unknown and unknown_labels == "error":
        raise ConfigError(_unknown_labels_message(unknown, class_names))
    if unknown:
        log.warning("%d images have labels that are not among the classes: %s", sum(unknown.values()),
                    ", ".join(f"'{u}'" for u in unknown))
    k = max(1, min(int(k), len(class_names)))
    if predicted_labels is None:
        predicted_labels = [class_names[c] for c in probs.argmax(dim=1).tolist()] if len(true_labels) else []
    if len(predicted_labels) != len(true_labels):
        raise ConfigError(f"{len(predicted_labels)} predicted labels for {len(true_labels)} true labels; give one per image.")
    # Labels outside the classes (label-space predictions, kept unknown true labels) get their own rows and columns.
    extra = sorted({*unknown, *(p for p in predicted_labels if p not in column)})
    names = class_names + extra
    index = {name: i for i, name in enumerate(names)}
    true_index = torch.tensor([index[t] for t in true_labels], dtype=torch.long)  # [N]
    predicted_index = torch.tensor([index[p] for p in predicted_labels], dtype=torch.long)  # [N]
    confusion = torch.zeros(len(names), len(names), dtype=torch.long)  # [L, L] true × predicted
    confusion.index_put_((true_index, predicted_index), torch.ones_like(true_index), accumulate=True)
    right = true_index == predicted_index  # [N]
    in_top_k = right.clone()
    known = [n for n, t in enumerate(true_labels) if t in column]
    if known:
        top_columns = probs[known].float().topk(k, dim=1).indices  # [N_known, k]
        in_top_k[known] |= (top_columns == true_index[known][:, None]).any(dim=1)

    support, predicted_count, hits = confusion.sum(dim=1), confusion.sum(dim=0), confusion.diagonal()  # [L] each
    per_class = [
        ClassScore(name, _ratio(int(hits[i]), int(predicted_count[i])), _ratio(int(hits[i]), int(support[i])),
                   int(support[i]), int(predicted_count[i]))
        for i, name in enumerate(names)
    ]
    recalls = [score.recall for score in per_class if score.recall is not None]
    total = len(true_labels)
    return Metrics(
        class_names=names,
        count=total,
        top1=float(right.sum()) / total if total else 0.0,
        top_k=float(in_top_k.sum()) / total if total else 0.0,
        k=k,
        mean_recall=sum(recalls) / len(recalls) if recalls else None,
        per_class=per_class,
        confusion=confusion.tolist(),
        worst_confusions=_worst_confusions(confusion, names),
        unknown_labels=dict(unknown),
    )


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _worst_confusions(confusion: torch.Tensor, class_names: list[str]) -> list[Confusion]:
    off_diagonal = confusion.clone()
    off_diagonal.fill_diagonal_(0)
    pairs = [
        Confusion(class_names[t], class_names[p], int(off_diagonal[t, p]))
        for t, p in off_diagonal.nonzero().tolist()
    ]
    pairs.sort(key=lambda pair: (-pair.count, pair.true, pair.predicted))
    return pairs


def _check_unknown_policy(policy: str) -> None:
    if policy not in UNKNOWN_LABEL_POLICIES:
        raise ConfigError(f"unknown_labels is '{policy}'; use one of {', '.join(UNKNOWN_LABEL_POLICIES)}.")


def _unknown_labels_message(unknown: Counter, class_names: list[str]) -> str:
    shown = ", ".join(f"'{label}' ({count})" for label, count in unknown.most_common(10))
    more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
    hint = ""
    if all(str(label).lstrip("-").isdigit() for label in unknown):
        hint = " The labels are numbers: give the dataset's class names, or a label column with names."
    return (
        f"true labels not among the {len(class_names)} classes: {shown}{more}. Labels are matched to classes by "
        "name; add these to --classes, fix their spelling, or keep those images with --unknown-labels keep "
        f"(scored as wrong unless a label-space method predicts them).{hint}"
    )
