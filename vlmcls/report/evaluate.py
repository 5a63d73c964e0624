"""Metrics on labelled images, and several methods compared on one shared set of image features.

``compute_metrics`` scores probabilities against true labels: top-1, top-k, mean per-class recall, per-class
precision/recall/support, the confusion matrix (true × predicted) and the worst confusions. ``evaluate`` encodes
the images of a labelled source once and runs every requested method on those features, recording LLM calls,
tokens and wall time per method; its :class:`EvalReport` is what ``vlmcls eval`` prints, saves and renders.

Decisions worth knowing:

- True labels are mapped to classes by name, never by position. A true label that is not among the classes is
  an error by default (a :class:`~vlmcls.errors.ConfigError` that lists them, raised before any image is
  encoded), because it nearly always means a typo or a class list that does not fit the data. With
  ``unknown_labels="keep"`` those images stay in: they are wrong unless a label-space method (Fréchet mean)
  predicts their label, never in the top-k, and get their own rows in the per-class table and confusion matrix.
- The top-1 answer is each prediction's label (a Fréchet-mean run may answer outside the classes); top-k comes
  from the probabilities over the classes.
- Images without a label (loose files in a folder's root) and images that failed to decode are left out of the
  metrics and counted; the failures are kept as error rows.
- Mean per-class recall averages over the labels that have at least one image; precision of a label that was
  never predicted is undefined (``None``), not 0.
- Methods are specs of the one grammar (:func:`vlmcls.methods.parse_spec`): ``templates+tip``, ``cbd+fudd+frechet``.
  With one shared :class:`MethodOptions`, each spec gets only the refiners it names (so ``templates`` stays the
  bare baseline beside ``templates+tip``); a mapping of options by spec is used as given.
- Expected squared distance (label-space runs, Loki): with a ``label_metric`` it is computed for every method
  from its top-1 labels, so methods are comparable; otherwise a run that used a label metric reports its own.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch

from ..output import write_json
from ..errors import ConfigError, VlmclsError
from ..methods import DEFAULT_METHOD, REFINER, MethodOptions, answers_beyond, get_record, parse_specs
from ..results import json_safe, prediction_row
from .metrics import (  # noqa: F401  (as callers import them)
    ClassScore,
    Confusion,
    Metrics,
    UNKNOWN_LABEL_POLICIES,
    _check_unknown_policy,
    _unknown_labels_message,
    compute_metrics,
)
from .multilabel import multi_label_metrics

if TYPE_CHECKING:
    from ..api import ClassificationResult, Classifier, Prediction
    from ..encode.images import ImageRecord

__all__ = [
    "RESULTS_FORMAT",
    "ClassScore",
    "Confusion",
    "Metrics",
    "MethodRun",
    "EvalReport",
    "compute_metrics",
    "parse_methods",
    "options_for_spec",
    "evaluate",
    "prediction_row",
    "json_safe",
]

log = logging.getLogger(__name__)

RESULTS_FORMAT = "vlmcls-eval/1"  # written into results JSON so a reader can tell what it holds
UNKNOWN_TRUTH = "(none of these)"  # the true label of an image from eval's unknown folder


# -- running several methods ----------------------------------------------------------------------------------


def parse_methods(spec: str | Sequence[str]) -> list[str]:
    """Method specs from 'name,templates,cbd+tip' or a list, each checked by the one spec grammar (order kept,
    repeats dropped)."""
    return [parsed.text for parsed in parse_specs(spec)]


def options_for_spec(spec: str, shared: MethodOptions) -> MethodOptions:
    """The shared options with only the refiners that ``spec`` names; a refiner without its input fails here."""
    named = [name for name in parse_specs(spec)[0].stages if get_record(name).kind == REFINER]
    for name in named:
        record = get_record(name)
        if record.requires and not record.implied_by(shared.config(name)):
            raise ConfigError(f"'{spec}' needs {record.requires}.")
    # a refiner's options given for another spec do not add it here (classify adds it; eval runs specs as written)
    return shared.without(n for n, r in ((n, get_record(n)) for n in shared.methods)
                          if r.kind == REFINER and n not in named and not r.decides)


@dataclass
class MethodRun:
    """One method's run on the shared features: its result, metrics and costs, or the error that stopped it."""

    method: str
    result: "ClassificationResult | None" = None
    metrics: Metrics | None = None
    llm_calls: int = 0
    llm_tokens: int = 0
    seconds: float = 0.0  # wall time of the method on the shared features (encoding excluded)
    expected_squared_distance: float | None = None
    error: str | None = None  # set when the method failed; the other methods still ran
    info: dict[str, Any] = field(default_factory=dict)  # what the method reported besides its costs
    ece: float | None = None  # expected calibration error of its probabilities (15 bins) on the in-list images
    reliability: list[dict] = field(default_factory=list)  # the reliability diagram's bins
    open_set: dict[str, Any] | None = None  # AUROC, FPR95, accuracy with/without rejection (with other images)
    multi_label: dict[str, Any] | None = None  # mAP, per-class F1, exact match (with a multi-label truth file)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self, include_predictions: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "status": "ok" if self.ok else "failed",
            "error": self.error,
            "llm_calls": self.llm_calls,
            "llm_tokens": self.llm_tokens,
            "seconds": round(self.seconds, 4),
            "expected_squared_distance": self.expected_squared_distance,
            "ece": self.ece,
            "reliability": self.reliability,
            "open_set": json_safe(self.open_set),
            "multi_label": json_safe(self.multi_label),
            "metrics": self.metrics.to_dict() if self.metrics is not None else None,
            "info": json_safe(self.info),
            "warnings": json_safe(self.result.warnings) if self.result is not None else [],
        }
        if include_predictions:
            out["predictions"] = [prediction_row(p) for p in self.result.ok] if self.result is not None else []
        return out


@dataclass
class EvalReport:
    """Every method's run on one labelled image source, plus what they shared."""

    data: str
    model: str | None
    class_names: list[str]
    top_k: int
    runs: list[MethodRun]
    images: dict[str, Any]  # total, classified, errors, labelled, unlabelled, encoded, cached, encode_seconds
    error_rows: list["Prediction"]  # images that could not be read (same for every method)
    records: list["ImageRecord"] = field(default_factory=list, repr=False)  # for thumbnails; not saved
    thumbnails: dict[str, bytes] = field(default_factory=dict, repr=False)  # id -> JPEG made while decoding; not saved

    @property
    def best(self) -> MethodRun | None:
        """The run with the highest top-1 (first one on a tie), or None when every method failed."""
        scored = [run for run in self.runs if run.ok and run.metrics is not None]
        return max(scored, key=lambda run: run.metrics.top1) if scored else None

    def run(self, method: str) -> MethodRun:
        for run in self.runs:
            if run.method == method:
                return run
        raise ConfigError(f"no run of method '{method}' in this report. Runs: {', '.join(r.method for r in self.runs)}.")

    def to_dict(self, include_predictions: bool = True) -> dict[str, Any]:
        best = self.best
        return {
            "format": RESULTS_FORMAT,
            "data": self.data,
            "model": self.model,
            "classes": list(self.class_names),
            "top_k": self.top_k,
            "images": dict(self.images),
            "best_method": best.method if best is not None else None,
            "methods": [run.to_dict(include_predictions) for run in self.runs],
            "errors": [prediction_row(p) for p in self.error_rows],
        }

    def save_json(self, path: str | os.PathLike, include_predictions: bool = True) -> Path:
        if Path(path).suffix.lower() != ".json":
            raise ConfigError(f"results file '{path}' must end in .json.")
        return write_json(path, self.to_dict(include_predictions))


def evaluate(
    classifier: "Classifier",
    data: Any,
    classes: str | Path | Sequence[str],
    methods: str | Sequence[str] = (DEFAULT_METHOD,),
    options_per_method: MethodOptions | Mapping[str, MethodOptions] | None = None,
    top_k: int = 5,
    *,
    label_metric: Any = None,
    unknown_labels: str = "error",
    unknown_folder: str | Path | None = None,
    truth: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    **source_options: Any,
) -> EvalReport:
    """Encode the labelled images of ``data`` once, run every method on them, and score each one.

    ``methods`` are specs as in :func:`parse_methods`. ``options_per_method`` is one :class:`MethodOptions` shared
    by all (each spec gets only the refiners it names) or a mapping by spec used as given (missing ones get
    defaults). A method that fails with a vlmcls error is recorded as failed and the others go on; when every
    method fails, the first error is raised. ``label_metric`` (a LabelMetric) adds the expected squared distance
    of every method's predictions. ``truth`` is a multi-label truth file (path → labels, see
    :mod:`vlmcls.report.multilabel`): its images are scored for mAP and per-class F1, and their top-1 counts as
    right when it is any of their labels.
    """
    from ..api import as_records, load_classes

    class_names = load_classes(classes)
    specs = parse_methods(methods)
    options_by_spec = {spec: _options_for(options_per_method, spec) for spec in specs}
    _check_unknown_policy(unknown_labels)
    if top_k < 1:
        raise ConfigError(f"top_k is '{top_k}'; it must be at least 1.")
    truth_sets = None
    if truth is not None:  # read and checked against the classes before any image is encoded
        from .multilabel import read_truth_file

        truth_sets = read_truth_file(truth, class_names)
    records = as_records(data, **source_options)
    if truth_sets is not None:
        records = _with_truth(records, truth_sets, truth, data)
    if unknown_folder is not None:  # images known to be none of the classes: scored as the open set
        from dataclasses import replace as _replace

        others = as_records(unknown_folder)
        if not others:
            raise ConfigError(f"unknown folder '{unknown_folder}' holds no images.")
        start = len(records)
        records = records + [_replace(r, label=UNKNOWN_TRUTH, source_index=start + i) for i, r in enumerate(others)]
    labels = [rec.label for rec in records if rec.label is not None]
    if not labels:
        raise ConfigError(
            f"no labelled images in '{data}': put the images in one sub-folder per class, or name the dataset's "
            "label column with --dataset label_column=NAME. To classify unlabelled images use `vlmcls classify`."
        )
    known = set(class_names)
    for options in options_by_spec.values():  # a Fréchet label space may hold labels that are not classes
        known.update(answers_beyond(options))
    unknown = Counter(label for label in labels if label not in known and label != UNKNOWN_TRUTH)
    if unknown and unknown_labels == "error":  # fail before spending any time on encoding
        raise ConfigError(_unknown_labels_message(unknown, class_names))

    from ..engines import LocalEngine, RunRequest

    engine = LocalEngine(classifier)
    request = RunRequest(records, class_names, top_k=top_k)
    started = time.perf_counter()
    feats = engine.encode(request, progress)
    encode_seconds = time.perf_counter() - started
    log.info("encoded %d images (%d from the store) in %.2f s", feats.encoded, len(feats.records) - feats.encoded,
             encode_seconds)

    runs: list[MethodRun] = []
    first_error: VlmclsError | None = None
    for spec in specs:
        run_started = time.perf_counter()
        try:
            result = engine.score(request.but(method=spec, options=options_by_spec[spec]), feats)
        except VlmclsError as exc:
            log.warning("method '%s' failed: %s", spec, exc)
            first_error = first_error or exc
            runs.append(MethodRun(spec, error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - run_started))
            continue
        # Unknown labels passed the policy check above (or are in a label space): keep them from here on.
        runs.append(_score_run(spec, result, time.perf_counter() - run_started, top_k, label_metric, truth_sets))
    if first_error is not None and not any(run.ok for run in runs):
        raise first_error

    labelled_ok = sum(1 for rec in feats.records if rec.label is not None)
    error_rows = next(run.result for run in runs if run.ok).errors  # the same rows in every method's result
    images = {
        "total": len(records),
        "classified": len(feats.records),
        "errors": len(feats.errors),
        "labelled": labelled_ok,
        "unlabelled": len(feats.records) - labelled_ok,
        "encoded": feats.encoded,
        "cached": len(feats.records) - feats.encoded,
        "encode_seconds": round(encode_seconds, 4),
    }
    model_id = getattr(classifier.model, "model_id", None)
    return EvalReport(str(data), str(model_id) if model_id else None, class_names, top_k, runs, images,
                      error_rows, records, feats.thumbnails)


def _options_for(options: MethodOptions | Mapping[str, MethodOptions] | None, spec: str) -> MethodOptions:
    if options is None or isinstance(options, MethodOptions):
        return options_for_spec(spec, options or MethodOptions())
    return options.get(spec) or MethodOptions()


def _with_truth(records: list, truth_sets: dict[Path, list[str]], truth: Any, data: Any) -> list:
    """The records with their first true label from the truth file (the single-label metrics re-read it per run)."""
    from dataclasses import replace as _replace

    out, matched = [], 0
    for rec in records:
        labels = truth_sets.get(Path(rec.path).resolve()) if rec.path is not None else None
        if labels:
            matched += 1
            rec = _replace(rec, label=labels[0])
        out.append(rec)
    if not matched:
        raise ConfigError(f"truth file '{truth}' names none of the images in '{data}'; its paths are read from the "
                          "truth file's folder (or are absolute).")
    if matched < len(truth_sets):
        log.warning("truth file '%s': %d of its %d images are not in '%s'", truth, len(truth_sets) - matched,
                    len(truth_sets), data)
    return out


def _score_run(spec: str, result: "ClassificationResult", seconds: float, top_k: int, label_metric: Any,
               truth_sets: dict[Path, list[str]] | None = None) -> MethodRun:
    """Metrics over the labelled, decoded images of one method's result (unlabelled ones left out)."""
    ok = result.ok  # aligned with the rows of result.probs
    # the unknown folder's images are scored by the open-set metrics only
    keep = [n for n, pred in enumerate(ok) if pred.true_label is not None and pred.true_label != UNKNOWN_TRUTH]
    true_labels = [_true_label(ok[n], truth_sets) for n in keep]
    predicted = [ok[n].label for n in keep]
    probs = result.probs[keep] if keep else torch.empty(0, len(result.class_names))  # [N_labelled, C]
    metrics = compute_metrics(true_labels, probs, result.class_names, predicted_labels=predicted, k=top_k,
                              unknown_labels="keep")
    info = {k: v for k, v in result.stats.items() if k not in ("method", "llm_calls", "llm_tokens")}
    ece, bins = _calibration(result, keep, true_labels)
    metric = label_metric if label_metric is not None else result.label_metric  # one for all keeps runs comparable
    squared = None
    if metric is not None and keep:
        squared = _expected_squared_distance(predicted, true_labels, metric)
    return MethodRun(
        method=spec,
        result=result,
        metrics=metrics,
        llm_calls=int(result.stats.get("llm_calls") or 0),
        llm_tokens=int(result.stats.get("llm_tokens") or 0),
        seconds=seconds,
        expected_squared_distance=float(squared) if squared is not None else None,
        info=info,
        ece=ece,
        reliability=bins,
        open_set=_open_set_metrics(result),
        multi_label=multi_label_metrics(result, truth_sets) if truth_sets is not None else None,
    )


def _true_label(pred: "Prediction", truth_sets: dict[Path, list[str]] | None) -> str:
    """The one true label the single-label metrics use: with several, the answer when it is one of them."""
    labels = truth_sets.get(Path(pred.path).resolve()) if truth_sets and pred.path is not None else None
    if labels and pred.label in labels:
        return pred.label
    return labels[0] if labels else pred.true_label


def _calibration(result: "ClassificationResult", keep: list[int], true_labels: list[str]) -> tuple[float | None, list]:
    """ECE and reliability bins of the probabilities over the images whose true label is a class."""
    from ..adapters.metrics import expected_calibration_error, reliability_bins

    column = {name: c for c, name in enumerate(result.class_names)}
    rows = [(n, column[t]) for n, t in zip(keep, true_labels) if t in column]
    if not rows:
        return None, []
    probs = result.probs[[n for n, _ in rows]]
    labels = [c for _, c in rows]
    return round(expected_calibration_error(probs, labels), 6), reliability_bins(probs, labels)


def _open_set_metrics(result: "ClassificationResult") -> dict[str, Any] | None:
    """With images that are none of the classes (an unknown folder, or labels not in the class list): how well the
    run's unknown score (else its top probability) separates them, and in-list accuracy with and without rejection."""
    from ..adapters.open_set import auroc, fpr_at_tpr

    known = set(result.class_names)
    ok = [p for p in result.ok if p.true_label is not None]
    inside = [p for p in ok if p.true_label in known]
    others = [p for p in ok if p.true_label not in known]
    if not inside or not others:
        return None

    def score(p: "Prediction") -> float:
        return p.unknown_score if p.unknown_score is not None else max(pr for _, pr in p.top_k)

    pos, neg = [score(p) for p in inside], [score(p) for p in others]
    kept_in = [p.label in known for p in inside]
    return {
        "score": "unknown_score" if inside[0].unknown_score is not None else "top-1 probability",
        "in_list": len(inside), "others": len(others),
        "auroc": auroc(pos, neg), "fpr_at_95_tpr": fpr_at_tpr(pos, neg),
        "in_list_top1_without_rejection": sum(p.top_k[0][0] == p.true_label for p in inside) / len(inside),
        "in_list_top1_with_rejection": sum(p.label == p.true_label for p in inside) / len(inside),
        "achieved_in_list_recall": sum(kept_in) / len(inside),
        "others_rejected": sum(p.label not in known for p in others) / len(others),
    }


def _expected_squared_distance(predicted: list[str], true_labels: list[str], metric: Any) -> float | None:
    """E[d(ŷ, y)^2] over the images whose labels the metric knows (others are logged and skipped)."""
    from ..adapters.frechet import expected_squared_distance

    known = getattr(metric, "index", {})
    pairs = [(p, t) for p, t in zip(predicted, true_labels) if p in known and t in known]
    if len(pairs) < len(predicted):
        log.warning("expected squared distance: %d of %d images have labels the label metric does not know; "
                    "they are left out", len(predicted) - len(pairs), len(predicted))
    if not pairs:
        return None
    return expected_squared_distance([p for p, _ in pairs], [t for _, t in pairs], metric)
