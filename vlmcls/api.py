"""The Python API: build a :class:`Classifier` once, call it on images and classes."""

from __future__ import annotations

import glob
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from .cache import Store
from .embeddings import Encoder, ImageFeatures
from .errors import ConfigError
from .images import ImageRecord, choose_worker_type, list_images
from .lazy_model import LazyModel
from .models import ModelBackend
from .refine import apply_refiners
from .methods import MethodOptions, MethodOutput, run_method
from .scoring import ClassTexts, class_text_weights, compute_logits, probabilities, top_k

__all__ = ["Classifier", "ClassificationResult", "Prediction", "load_classes", "as_records"]

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]

_CLASSES_HOW = "Give a file with one class per line, or a comma-separated list such as 'cat,dog,bird'."


def load_classes(spec: str | Path | Sequence[str]) -> list[str]:
    """Class names (at least two) from a list, a UTF-8 file (one per line, '#' comments) or a comma-separated
    string."""
    if isinstance(spec, (list, tuple)):
        names = [str(n).strip() for n in spec]
    else:
        text = str(spec)
        path = Path(text).expanduser()
        if path.is_file():
            names = _read_class_file(path)
        elif "," in text or not (path.suffix or "/" in text):
            names = [n.strip() for n in text.split(",")]
        else:
            raise ConfigError(f"classes file '{text}' does not exist. {_CLASSES_HOW}")
    names = [n for n in names if n]
    if not names:
        raise ConfigError(f"no class names in '{spec}'. {_CLASSES_HOW}")
    if len(names) == 1:
        sibling = [p for p in Path(".").glob(f"{glob.escape(names[0])}.*") if p.is_file()] if isinstance(spec, str) else []
        guess = f" Did you mean the file '{sibling[0]}'?" if sibling else ""
        raise ConfigError(f"only one class ('{names[0]}'): an image cannot be classified against a single class. "
                          f"{_CLASSES_HOW}{guess}")
    seen: set[str] = set()
    dupes = sorted({n for n in names if n in seen or seen.add(n)})
    if dupes:
        raise ConfigError(f"duplicate class names: {', '.join(repr(d) for d in dupes)}. Each class must be named once.")
    return names


def _read_class_file(path: Path) -> list[str]:
    """One class per line; UTF-8 with or without a byte-order mark. Anything else is refused with its name."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        raise ConfigError(f"classes file '{path}' is binary, not text. {_CLASSES_HOW}")
    try:
        text = data.decode("utf-8-sig")  # a BOM (Windows editors) must not become part of the first class name
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"classes file '{path}' is not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}; Latin-1 or "
            "another legacy encoding?). Save it as UTF-8, e.g. `iconv -f latin1 -t utf-8`."
        ) from None
    lines = (ln.strip() for ln in text.splitlines())
    return [ln for ln in lines if ln and not ln.startswith("#")]


def as_records(images: str | Path | Iterable[str | Path | ImageRecord], **source_options: Any) -> list[ImageRecord]:
    """Image records from a source (folder, list file, image file, dataset) or an iterable of paths/records."""
    if isinstance(images, (str, Path)) or _is_dataset(images):
        return list_images(images, **source_options)
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

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "path": self.path if self.path is not None else self.id,
            "label": self.label,
            "top_k": [{"label": c, "prob": round(p, 6)} for c, p in self.top_k],
            "error": self.error,
        }
        if self.true_label is not None:
            row["true_label"] = self.true_label
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
    ):
        choose_worker_type(worker_type, [])  # a bad worker type fails here, before the model loads
        self.store = Store(cache_dir) if use_cache else None
        # Lazy: a run whose features are all in the store never builds (nor imports) the model.
        self.model = (LazyModel(model, device=device, precision=precision, store=self.store)
                      if isinstance(model, str) else model)
        self.encoder = Encoder(self.model, self.store)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.worker_type = worker_type

    # -- building blocks ----------------------------------------------------------------------------
    def encode_images(self, images, progress: ProgressFn | None = None, **source_options: Any) -> ImageFeatures:
        records = as_records(images, **source_options)
        return self.encoder.encode_images(records, self.batch_size, self.num_workers, progress, self.worker_type)

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
        method: str = "templates",
        options: MethodOptions | None = None,
        templates: str | Sequence[str] | None = None,
        sentences: Mapping[str, Sequence[str]] | None = None,
        aggregation: str | None = None,
        top_k: int = 5,
        progress: ProgressFn | None = None,
        **source_options: Any,
    ) -> ClassificationResult:
        """Classify images (a folder, list file, dataset, or paths) into classes; errors become rows.

        ``method`` is one of :func:`vlmcls.methods.method_names`; ``options`` carries its settings
        (``templates``, ``sentences`` and ``aggregation`` are shortcuts for the common ones).
        """
        started = time.perf_counter()
        class_names = load_classes(classes)
        if options is None:
            options = MethodOptions(
                templates=list(templates) if isinstance(templates, (list, tuple)) else templates,
                aggregation=aggregation,
                sentences={k: list(v) for k, v in sentences.items()} if sentences is not None else None,
            )
        feats = self.encode_images(images, progress=progress, **source_options)
        result = self.predict(feats, class_names, method, options, top_k)
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

    def predict(
        self, feats: ImageFeatures, class_names: list[str], method: str = "templates",
        options: MethodOptions | None = None, k: int = 5,
    ) -> ClassificationResult:
        """Predictions from image features already computed (eval shares them across methods)."""
        options = options or MethodOptions()
        feats = _finite_only(feats)
        frechet_labels = None
        if feats.records:
            out = run_method(method, self, feats.feats, class_names, options)
            ref = options.refiners
            if method not in ("tip", "tfup") and (ref.support is not None or ref.self_cache or ref.frechet):
                out, frechet_labels = apply_refiners(self, feats.feats, class_names, out, options, method)
        else:  # nothing decoded: every input is an error row
            out = MethodOutput(torch.empty(0, len(class_names)), torch.empty(0, len(class_names)))
        values, indices = top_k(out.probs, k) if len(feats.records) else (torch.empty(0, 0), torch.empty(0, 0))
        rows: list[tuple[int, Prediction]] = []
        top_values, top_indices = values.tolist(), indices.tolist()  # one conversion, not two tensor ops per cell
        for n, rec in enumerate(feats.records):
            ranked = [(class_names[int(j)], float(v)) for v, j in zip(top_values[n], top_indices[n])]
            explanation = out.explanations[n] if out.explanations else None
            label = frechet_labels[n] if frechet_labels is not None else ranked[0][0]
            rows.append((rec.source_index, Prediction(rec.id, _path(rec), label, ranked, None, rec.label, explanation)))
        for rec, reason in feats.errors:
            rows.append((rec.source_index, Prediction(rec.id, _path(rec), None, [], reason, rec.label)))
        rows.sort(key=lambda r: r[0])
        metric = out.info.pop("label_metric", None)
        stats = {"method": method, "llm_calls": out.llm_calls, "llm_tokens": out.llm_tokens,
                 "method_seconds": round(out.seconds, 4), **out.info}
        return ClassificationResult([p for _, p in rows], class_names, out.logits, out.probs, stats, out.warnings,
                                    out.artifacts, metric)


NON_FINITE_FEATURE = ("the model returned NaN or infinite features for this image (in half precision this is "
                      "an overflow: try --precision fp32)")


def _finite_only(feats: ImageFeatures) -> ImageFeatures:
    """The features with every image whose feature holds NaN or infinity moved to the error rows (a NaN would
    otherwise come out as a prediction with probability NaN)."""
    if not feats.records:
        return feats
    finite = torch.isfinite(feats.feats).all(dim=1)  # [N]
    if bool(finite.all()):
        return feats
    keep = finite.nonzero().flatten().tolist()
    bad = [(feats.records[i], NON_FINITE_FEATURE) for i in (~finite).nonzero().flatten().tolist()]
    log.warning("%d images got NaN or infinite features; they are error rows", len(bad))
    return replace(feats, records=[feats.records[i] for i in keep], feats=feats.feats[keep],
                   errors=feats.errors + bad)


def _path(rec: ImageRecord) -> str | None:
    return str(rec.path) if rec.path is not None else None
