"""The result types every engine and writer shares: one result table (:class:`ResultTable`: columns from scoring
to writing), a lazy row view of it (:class:`Prediction`), a run's result (:class:`ClassificationResult`) and what a
method produced on a set of image features (:class:`MethodOutput`).

Every writer reads the table: JSONL (:func:`vlmcls.output.write_result`), CSV, JSON and Parquet, and the Ray engine's
shards have the same columns (:data:`ROW_COLUMNS`): ``path, label, top_k [{label, prob}], error, true_label``, then
``index`` (input position) in Parquet and shards, and ``explanation`` when asked for.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["Prediction", "ResultTable", "ClassificationResult", "MethodOutput", "json_safe", "prediction_row",
           "ROW_COLUMNS", "top_k_arrow_type"]

# the written row shape; unknown_score and labels (the open world's) when its refiner ran
ROW_COLUMNS = ("path", "label", "top_k", "error", "true_label", "index", "unknown_score", "labels", "explanation")


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


def top_k_arrow_type() -> Any:
    """The Arrow type of the ``top_k`` column (Parquet files and Ray shards)."""
    import pyarrow as pa

    return pa.list_(pa.struct([("label", pa.string()), ("prob", pa.float64())]))


def labels_arrow_type() -> Any:
    """The Arrow type of the open world's ``labels`` column (multi-label: every label with its score)."""
    import pyarrow as pa

    return pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))


@dataclass
class ResultTable:
    """A run's rows as columns, in input order, error rows included: what every writer reads."""

    class_names: list[str]
    ids: list[str]  # [N]
    paths: list[str | None]  # [N] None for dataset rows (written as their id)
    top_index: np.ndarray  # [N, k] class indices, best first; an error row's are -1
    top_prob: np.ndarray  # [N, k] probabilities (float32 values); an error row's are 0
    labels: list[str | None]  # [N] the answer (a label-space answer need not be a class); None for an error row
    errors: list[str | None]  # [N]
    true_labels: list[str | None]  # [N] from a class sub-folder or a dataset column, when known
    explanations: list[dict | None] | None = None  # [N] when asked for
    # the open world's columns (refiner unknown), None when it did not run:
    unknown_scores: list[float | None] | None = None  # [N] how sure each image shows one of the classes
    label_sets: list[list[tuple[str, float]] | None] | None = None  # [N] every (class, score) label (multi-label)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def k(self) -> int:
        return int(self.top_index.shape[1]) if self.top_index.ndim == 2 else 0

    def ok_mask(self) -> np.ndarray:
        """[N] True for the rows that were classified."""
        return np.fromiter((e is None for e in self.errors), bool, len(self.errors))

    def top_k(self, n: int) -> list[tuple[str, float]]:
        if self.errors[n] is not None:
            return []
        names = self.class_names
        return [(names[int(j)], float(p)) for j, p in zip(self.top_index[n], self.top_prob[n])]

    def prediction(self, n: int) -> Prediction:
        """Row ``n`` as a :class:`Prediction` (built on demand: the table holds no row objects)."""
        return Prediction(self.ids[n], self.paths[n], self.labels[n], self.top_k(n), self.errors[n],
                          self.true_labels[n], self.explanations[n] if self.explanations else None,
                          self.unknown_scores[n] if self.unknown_scores else None,
                          self.label_sets[n] if self.label_sets else None)

    def write_paths(self, start: int = 0, stop: int | None = None) -> list[str]:
        """The ``path`` column as written (rows ``start:stop``): a dataset row's id where it has no path."""
        return [p if p is not None else i for p, i in zip(self.paths[start:stop], self.ids[start:stop])]

    def arrow(self, explain: bool | None = None) -> Any:
        """The table in the written row shape (:data:`ROW_COLUMNS`) as a pyarrow Table; ``explanation`` (JSON text)
        when any row has one, or when ``explain`` says so."""
        import pyarrow as pa

        ok = self.ok_mask()
        names = np.asarray(self.class_names + [""], dtype=object)  # -1 (an error row's index) names ""
        k = self.k
        labels = names[self.top_index].reshape(len(self), k) if k else np.empty((len(self), 0), object)
        structs = pa.StructArray.from_arrays(
            [pa.array(labels.ravel().tolist(), pa.string()),
             pa.array(np.round(self.top_prob.ravel().astype(np.float64), 6))],  # as JSONL and the Ray shards
            fields=list(top_k_arrow_type().value_type))
        offsets = np.zeros(len(self) + 1, np.int32)
        offsets[1:] = np.cumsum(np.where(ok, k, 0))
        keep = np.repeat(ok, k)  # an error row has an empty top_k
        top = pa.ListArray.from_arrays(pa.array(offsets), structs.filter(pa.array(keep)), type=top_k_arrow_type())
        columns = {
            "path": pa.array(self.write_paths(), pa.string()),
            "label": pa.array(self.labels, pa.string()),
            "top_k": top,
            "error": pa.array(self.errors, pa.string()),
            "true_label": pa.array(self.true_labels, pa.string()),
            "index": pa.array(np.arange(len(self), dtype=np.int64)),
        }
        if self.unknown_scores is not None:
            columns["unknown_score"] = pa.array([None if v is None else round(v, 6) for v in self.unknown_scores],
                                                pa.float64())
        if self.label_sets is not None:
            columns["labels"] = pa.array([None if row is None else [{"label": c, "score": round(v, 6)} for c, v in row]
                                          for row in self.label_sets], labels_arrow_type())
        notes = self.explanations or [None] * len(self)
        if explain or (explain is None and any(n is not None for n in notes)):
            columns["explanation"] = pa.array([json.dumps(json_safe(n)) if n is not None else None for n in notes],
                                              pa.string())
        return pa.table(columns)

    @classmethod
    def from_predictions(cls, predictions: Sequence[Prediction], class_names: Sequence[str]) -> "ResultTable":
        """A table from row objects (the Ray engine's shards, tests, older callers)."""
        index = {name: j for j, name in enumerate(class_names)}
        k = max((len(p.top_k) for p in predictions if p.error is None), default=0)
        top_index = np.full((len(predictions), k), -1, np.int64)
        top_prob = np.zeros((len(predictions), k), np.float32)
        for n, p in enumerate(predictions):
            if p.error is None:
                for j, (name, prob) in enumerate(p.top_k):
                    top_index[n, j], top_prob[n, j] = index[name], prob
        notes = [p.explanation for p in predictions]
        unknown = [p.unknown_score for p in predictions]
        label_sets = [p.labels for p in predictions]
        return cls(list(class_names), [p.id for p in predictions], [p.path for p in predictions], top_index,
                   top_prob, [p.label for p in predictions], [p.error for p in predictions],
                   [p.true_label for p in predictions], notes if any(n is not None for n in notes) else None,
                   unknown if any(v is not None for v in unknown) else None,
                   label_sets if any(v is not None for v in label_sets) else None)


class ClassificationResult:
    """Every input's row (error rows included) as one :class:`ResultTable`, plus the matrices behind them.

    ``predictions`` is the table's rows as :class:`Prediction` objects, made on first use (the writers, the report
    and the summary read the columns)."""

    def __init__(self, table: ResultTable | Sequence[Prediction], class_names: list[str], logits: Any, probs: Any,
                 stats: dict[str, Any] | None = None, warnings: list[dict] | None = None,
                 artifacts: dict[str, Any] | None = None, label_metric: Any = None) -> None:
        if not isinstance(table, ResultTable):
            table = ResultTable.from_predictions(list(table), class_names)
        self.table = table
        self.class_names = class_names
        self.logits = logits  # [N_ok, C], rows aligned with the classified rows
        self.probs = probs  # [N_ok, C]
        self.stats = stats if stats is not None else {}
        self.warnings = warnings if warnings is not None else []  # e.g. classes whose descriptors fell back
        self.artifacts = artifacts if artifacts is not None else {}  # descriptors / pairs used, for export
        self.label_metric = label_metric  # the Fréchet mean's metric when it ran (for expected squared distance)
        self._predictions: list[Prediction] | None = None

    @property
    def predictions(self) -> list[Prediction]:  # input order
        if self._predictions is None:
            self._predictions = [self.table.prediction(n) for n in range(len(self.table))]
        return self._predictions

    @property
    def errors(self) -> list[Prediction]:
        return [self.table.prediction(n) for n, e in enumerate(self.table.errors) if e is not None]

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
