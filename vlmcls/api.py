"""The Python API: build a :class:`Classifier` once, call it on images and classes."""

from __future__ import annotations

import itertools
import logging
import operator
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .encode.backend import ModelBackend
from .encode.store import Store
from .sources.classes import load_classes
from .encode.embeddings import Encoder, ImageFeatures, to_numpy, to_torch
from .encode.images import ImageRecord, choose_worker_type, list_images
from .methods import (DEFAULT_METHOD, MethodOptions, MethodOutput, as_options, RunContext, TextSide, parse_spec, run_spec,
                      runs_on_numpy)
from .encode.lazy_model import LazyModel
from .results import ClassificationResult, Prediction, ResultTable
from .scoring import ClassTexts, class_text_weights, compute_logits, probabilities, top_k

if TYPE_CHECKING:  # imported when a model is built or a stage needs it: a cached linear-head run imports no torch
    import torch

__all__ = ["Classifier", "ClassificationResult", "Prediction", "load_classes", "as_records"]

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


def as_records(images: str | Path | Iterable[str | Path | ImageRecord], **source_options: Any) -> list[ImageRecord]:
    """Image records from a source (folder, list file, image file, dataset) or an iterable of paths/records."""
    if isinstance(images, (str, Path)) or _is_dataset(images):
        return list_images(images, **source_options)
    if isinstance(images, list) and all(map(isinstance, images, itertools.repeat(ImageRecord))):
        return list(images)  # records already (the CLI lists the source itself)
    records = []
    for i, item in enumerate(images):
        if isinstance(item, ImageRecord):
            records.append(item)
        else:
            records.append(ImageRecord(id=str(item), path=Path(item), label=None, source_index=i))
    return records


def _is_dataset(obj: Any) -> bool:
    """An in-memory HF ``Dataset``/``DatasetDict`` (listed by list_images, not iterated as paths)."""
    return type(obj).__module__.startswith("datasets.")


class Classifier:
    """Zero-shot classifier: one model, one embedding store, any images and classes.

    >>> clf = Classifier("local-dir:vlmcls/data/demo_model")        # doctest: +SKIP
    >>> result = clf.classify("photos/", ["cat", "dog"], top_k=2)   # doctest: +SKIP
    """

    def __init__(
        self,
        model: str | ModelBackend,
        *,
        device: str = "auto",
        precision: str = "fp32",
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        batch_size: int = 32,
        num_workers: int | None = None,
        worker_type: str = "auto",
        heic_thumbnails: bool = False,
    ):
        choose_worker_type(worker_type, [])  # a bad worker type fails here, before the model loads
        self.store = Store(cache_dir) if use_cache else None
        # Lazy: a run whose features are all in the store never builds (nor imports) the model.
        self.model = (LazyModel(model, device=device, precision=precision, store=self.store)
                      if isinstance(model, str) else model)
        self.encoder = Encoder(self.model, self.store, heic_thumbnails=heic_thumbnails)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.worker_type = worker_type

    # -- building blocks ----------------------------------------------------------------------------
    def encode_images(self, images, progress: ProgressFn | None = None, as_numpy: bool = False,
                      **source_options: Any) -> ImageFeatures:
        records = as_records(images, **source_options)
        return self.encoder.encode_images(records, self.batch_size, self.num_workers, progress, self.worker_type,
                                          as_numpy=as_numpy)

    def text_weights(self, class_texts: ClassTexts, aggregation: str) -> torch.Tensor:
        text_feats = self.encoder.encode_texts(class_texts.texts)  # [T, D]
        return class_text_weights(text_feats, class_texts.owner, len(class_texts.class_names), aggregation)  # [C, D]

    def score(self, image_feats: torch.Tensor, text_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image_feats [N, D], text_weights [C, D] -> (logits [N, C], probs [N, C]) with the model's scale."""
        logits = compute_logits(image_feats, text_weights, self.model.logit_scale, self.model.logit_bias)
        return logits, probabilities(logits, self.model.score_rule)

    # -- the main job -------------------------------------------------------------------------------
    def classify(
        self,
        images,
        classes: str | Path | Sequence[str],
        *,
        method: str = DEFAULT_METHOD,
        options: MethodOptions | Mapping[str, Any] | None = None,
        templates: str | Sequence[str] | None = None,
        sentences: Mapping[str, Sequence[str]] | None = None,
        aggregation: str | None = None,
        top_k: int = 5,
        progress: ProgressFn | None = None,
        as_numpy: bool = False,
        **source_options: Any,
    ) -> ClassificationResult:
        """Classify images (a folder, list file, dataset, or paths) into classes; errors become rows.

        ``method`` is a spec such as ``cbd+fudd+tip`` (:func:`vlmcls.methods.parse_spec`); ``options`` carries each
        method's options, ``{"fudd": {"k": 5}}`` or ``{"fudd": FuddConfig(k=5)}`` or a :class:`MethodOptions`
        (``templates`` and ``sentences`` are shortcuts for the template head's text; ``aggregation`` sets the
        head's rule).
        ``as_numpy``: the result's logits and probs as numpy arrays instead of tensors; then a run of a linear head
        (name, templates, cbd, waffle, cupl) whose features are all in the store imports neither torch nor a model.
        """
        started = time.perf_counter()
        class_names = load_classes(classes)
        options = as_options(options)  # checked before any image is decoded
        if templates is not None or sentences is not None:
            options = replace(
                options, templates=list(templates) if isinstance(templates, (list, tuple)) else templates,
                sentences={k: list(v) for k, v in sentences.items()} if sentences is not None else None)
        if aggregation is not None:
            options = options.with_head_aggregation(method, aggregation)
        # numpy from the store as it is; predict makes tensors of it only for stages that need them
        feats = self.encode_images(images, progress=progress, as_numpy=True, **source_options)
        result = self.predict(feats, class_names, method, options, top_k, as_numpy=as_numpy)
        if feats.thumbnails:  # made while decoding (Encoder.thumbnail_size), for a report
            result.artifacts["thumbnails"] = feats.thumbnails
        result.stats.update(
            images=len(feats.records) + len(feats.errors),
            encoded=feats.encoded,
            cached=len(feats.records) - feats.encoded,
            errors=len(result.errors),
            seconds=round(time.perf_counter() - started, 3),
        )
        return result

    def text_side(self, as_numpy: bool = False) -> TextSide:
        """What methods see of the model: text encoding (through the store) and the scoring constants.
        ``as_numpy``: texts come back as numpy arrays (for stages that score numpy, see ``MethodRecord.numpy``)."""
        model = self.model
        encode = self.encoder.text_array if as_numpy else self.encoder.encode_texts
        return TextSide(encode, model.logit_scale, model.logit_bias, model.score_rule)

    def run_context(self, class_names: list[str], options: MethodOptions, as_numpy: bool = False) -> RunContext:
        return RunContext(self.text_side(as_numpy), class_names, options, encode_images=self.encode_images)

    def predict(
        self, feats: ImageFeatures, class_names: list[str], method: str = DEFAULT_METHOD,
        options: MethodOptions | Mapping[str, Any] | None = None, k: int = 5, as_numpy: bool = False,
    ) -> ClassificationResult:
        """Predictions from image features already computed (eval shares them across methods).

        ``method`` is a spec (``cbd+fudd+tip``, see :func:`vlmcls.methods.parse_spec`); refiners whose input the
        options give (``tip.support``, a ``frechet`` label metric) are added to it. Specs made of stages that
        score numpy arrays (the linear heads) run in numpy whatever ``feats`` holds, so every caller gets the same
        numbers; ``as_numpy`` says what the result holds."""
        options = as_options(options)
        spec = parse_spec(method).with_implied(options)
        resolved = spec.resolve(options)
        numpy_run = runs_on_numpy((resolved.head, *resolved.stages))  # only stages that declare it
        feats = _finite_only(feats.as_numpy() if numpy_run else feats.as_torch())
        if feats.records:
            out = run_spec(spec, self.run_context(class_names, options, numpy_run), feats.feats)
        else:  # nothing decoded: every input is an error row
            out = MethodOutput(np.zeros((0, len(class_names)), np.float32), np.zeros((0, len(class_names)), np.float32))
        result = result_from_output(out, feats, class_names, method, k)
        convert = to_numpy if as_numpy else to_torch
        result.logits, result.probs = convert(result.logits), convert(result.probs)
        return result


def result_from_output(out: MethodOutput, feats: ImageFeatures, class_names: list[str], method: str,
                       k: int) -> ClassificationResult:
    """The run's result table, error rows included, in input order; the one place a MethodOutput becomes rows.
    Columns from the matrices (no object per row), so large runs need no pause of the garbage collector."""
    records = feats.records
    n_ok, n_err = len(records), len(feats.errors)
    values, indices = top_k(out.probs, k) if n_ok else (np.zeros((0, 0)), np.zeros((0, 0), np.int64))
    values, indices = to_numpy(values), to_numpy(indices).astype(np.int64, copy=False)
    width = indices.shape[1] if indices.ndim == 2 else 0
    top_index = np.concatenate([indices.reshape(n_ok, width), np.full((n_err, width), -1, np.int64)])  # [N, k]
    top_prob = np.concatenate([values.reshape(n_ok, width).astype(np.float32, copy=False),
                               np.zeros((n_err, width), np.float32)])
    if out.labels is not None:
        labels = list(out.labels)
    else:
        names = np.empty(len(class_names), dtype=object)
        names[:] = class_names
        labels = names[indices[:, 0]].tolist() if width else [None] * n_ok
    error_records = [rec for rec, _ in feats.errors]
    every = [*records, *error_records]
    notes = list(out.explanations) + [None] * n_err if out.explanations else None
    unknown = to_numpy(out.unknown_scores).tolist() + [None] * n_err if out.unknown_scores is not None else None
    label_sets = list(out.label_sets) + [None] * n_err if out.label_sets is not None else None
    table = ResultTable(
        list(class_names), list(map(_ID, every)), list(map(_PATH, every)), top_index, top_prob,
        labels + [None] * n_err, [None] * n_ok + [reason for _, reason in feats.errors], list(map(_LABEL, every)),
        notes, unknown, label_sets)
    order = list(map(_SOURCE_INDEX, every))
    if not all(map(operator.le, order, itertools.islice(order, 1, None))):  # input order, as the sources number it
        table = _reordered(table, sorted(range(len(order)), key=order.__getitem__))
    stats = {"method": method, "llm_calls": out.llm_calls, "llm_tokens": out.llm_tokens,
             "method_seconds": round(out.seconds, 4), **out.info}
    return ClassificationResult(table, class_names, out.logits, out.probs, stats, out.warnings,
                                out.artifacts, out.label_metric)


def _reordered(table: ResultTable, order: list[int]) -> ResultTable:
    """The table's rows in ``order``."""
    pick = operator.itemgetter(*order) if len(order) > 1 else (lambda column: [column[i] for i in order])

    def rows(column):
        return list(pick(column)) if len(order) > 1 else pick(column)

    at = np.asarray(order, np.int64)
    return ResultTable(table.class_names, rows(table.ids), rows(table.paths), table.top_index[at], table.top_prob[at],
                       rows(table.labels), rows(table.errors), rows(table.true_labels),
                       rows(table.explanations) if table.explanations else None,
                       rows(table.unknown_scores) if table.unknown_scores else None,
                       rows(table.label_sets) if table.label_sets else None)


NON_FINITE_FEATURE = ("the model returned NaN or infinite features for this image (in half precision this is "
                      "an overflow: try --precision fp32)")


def _finite_only(feats: ImageFeatures) -> ImageFeatures:
    """The features with every image whose feature holds NaN or infinity moved to the error rows (a NaN would
    otherwise come out as a prediction with probability NaN)."""
    if not feats.records:
        return feats
    finite = np.isfinite(np.asarray(feats.feats)).all(axis=1)  # [N]
    if bool(finite.all()):
        return feats
    keep = np.flatnonzero(finite).tolist()
    bad = [(feats.records[i], NON_FINITE_FEATURE) for i in np.flatnonzero(~finite).tolist()]
    log.warning("%d images got NaN or infinite features; they are error rows", len(bad))
    return replace(feats, records=[feats.records[i] for i in keep], feats=feats.feats[keep],
                   errors=feats.errors + bad)


_ID, _PATH, _LABEL, _SOURCE_INDEX = map(operator.attrgetter, ("id", "path_text", "label", "source_index"))
