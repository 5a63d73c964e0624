"""Classify on a Ray cluster: decode in CPU tasks, encode in model-holding actors, write sharded outputs.

The driver lists the images and runs the method once to get one text weight per class, ``text_weights [C, D]``;
every LLM call and every text encoding happens there. Ray Data then carries the work::

    from_items(index, path) ─▶ map_batches(decode)   CPU tasks; a bad file becomes an error row
                            ─▶ map_batches(actor)    loads the model once, holds text_weights, scores
                            ─▶ driver (ClassificationResult) and/or parquet | JSONL shards in output_dir

Only methods that score with one fixed linear head, ``logits = scale · f Wᵀ (+ bias)``, are exact this way
(:data:`LINEAR_METHODS`); the others re-rank per image and are refused with a pointer to the single-process engine.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .api import NON_FINITE_FEATURE, Classifier, ClassificationResult, Prediction, as_records, load_classes
from .embeddings import _content_key_or_error, _reason, l2_normalize
from .errors import ConfigError, MissingExtraError, ModelLoadError
from .images import DEFAULT_MAX_PIXELS, ImageRecord
from .methods import MethodOptions, MethodOutput, run_method
from .scoring import compute_logits, probabilities, top_k

__all__ = ["LINEAR_METHODS", "OUTPUT_FORMATS", "classify_with_ray"]

log = logging.getLogger(__name__)

# Methods whose logits are one linear head over the image features, so the actors can apply it exactly.
LINEAR_METHODS = ("name", "templates", "cbd", "waffle")
OUTPUT_FORMATS = ("parquet", "jsonl")

_INSTALL_HINT = "pip install 'vlmcls[ray]'"
_DECODE_WORKER_BYTES = 768 * 2**20  # a Python worker with torch and torchvision imported, measured ~0.5 GiB
_COLLECT_ONLY = ("logits", "done_at")  # columns the driver needs, not the written rows
_PROBE_ROWS = 8  # random unit image features the method is run on, to check it really is one linear head


def classify_with_ray(
    model_id: str,
    images: str | Path | Iterable[str | Path | ImageRecord],
    classes: str | Path | Sequence[str],
    *,
    method: str = "templates",
    options: MethodOptions | None = None,
    top_k: int = 5,
    batch_size: int = 32,
    device: str = "cpu",
    precision: str = "fp32",
    num_workers: int | None = None,
    ray_address: str | None = None,
    output_dir: str | Path | None = None,
    output_format: str = "parquet",
    collect: bool = True,
    cache_dir: str | Path | None = None,
    **source_options: Any,
) -> ClassificationResult:
    """Classify images on Ray Data; same rows, in the same order, as :meth:`Classifier.classify`.

    ``num_workers`` encoder actors (default: one per GPU, else 7 in 8 of the cluster's CPUs) each load the model
    once. With ``output_dir`` the rows (``Prediction.to_dict`` columns + ``index``) are written there as
    sharded parquet or JSONL; ``collect=False`` then skips bringing predictions back to the driver (the result
    holds no predictions, only stats). The model id must load on every worker node (a shared path for
    ``local-dir:``). Ray starts locally unless ``ray_address`` is given or Ray is already initialised.
    """
    ray = _import_ray()
    started = time.perf_counter()
    options = options or MethodOptions()
    _check_settings(method, options, top_k, batch_size, num_workers, output_dir, output_format, collect)
    class_names = load_classes(classes)
    # in source order, as the single-process engine returns them
    records = sorted(as_records(images, **source_options), key=lambda r: r.source_index)
    if not records:
        raise ConfigError("no images to classify: the image source is empty.")
    hosted = [r.id for r in records if r.path is None or r.fetch is not None]
    if hosted:
        raise ConfigError(
            f"the Ray engine reads image files only, but '{hosted[0]}' is a dataset row. "
            "Use the single-process engine for datasets, or export the images to a folder."
        )

    clf = _driver_classifier(model_id, device, precision, cache_dir)
    if clf.model.weights_fingerprint.startswith("random-"):
        raise ConfigError(
            f"model '{model_id}' has random weights, and every Ray worker would draw other ones. Give a pretrained "
            "tag (e.g. 'ViT-B-32:openai'), or save seeded weights to a local-dir: folder (see bench/bench_ray.py)."
        )
    pixel_shape, dim = _probe_model(clf, class_names[0])
    head, method_out = _text_head(clf, method, class_names, options, dim)

    _connect(ray, ray_address)
    actor_device, gpus_per_worker, workers = _placement(ray, device, num_workers)
    log.info("ray: %d images, %d encoder actor(s) on %s", len(records), workers, actor_device)
    items = [{"index": i, "path": str(r.path), "true_label": r.label or ""} for i, r in enumerate(records)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / batch_size)))
    # A decode task asks for the memory it takes (torch for the transforms, plus its batch of pixels). Remote
    # arguments that differ from the actors' also keep Ray from fusing decoding into the encoder actors, so
    # decoding runs on the CPUs the actors leave free, alongside encoding.
    decode_bytes = _DECODE_WORKER_BYTES + 2 * batch_size * 4 * math.prod(pixel_shape)
    ds = ds.map_batches(
        _decode_batch, batch_size=batch_size, batch_format="numpy", memory=decode_bytes,
        fn_kwargs={"preprocess": _portable_preprocess(clf.model), "pixel_shape": pixel_shape},
    )
    ds = ds.map_batches(
        _EncoderActor, batch_size=batch_size, batch_format="numpy", num_gpus=gpus_per_worker,
        compute=ray.data.ActorPoolStrategy(size=workers),
        fn_constructor_kwargs={
            "model_id": model_id, "device": actor_device, "precision": precision,
            "weights_fingerprint": clf.model.weights_fingerprint, "head": head, "k": top_k, "collect": collect,
        },
    )

    stats: dict[str, Any] = {"engine": "ray", "workers": workers, "method": method, "llm_calls": method_out.llm_calls,
                             "llm_tokens": method_out.llm_tokens, "method_seconds": round(method_out.seconds, 4),
                             **method_out.info}
    with _worker_start_failures(ray):
        if collect and output_dir is not None:
            ds = ds.materialize()  # computed once, then both written and collected
        if output_dir is not None:
            written = ds.drop_columns(list(_COLLECT_ONLY)) if collect else ds
            stats["output_files"] = _write(written, output_dir, output_format)
        if collect:
            table = _collect(ds)
            result = _to_result(table, records, head, top_k)
            stats["steady_images_per_second"] = _steady_rate(table)
        else:
            errors = _count_written_errors(ray, output_dir, output_format)
            empty = torch.empty(0, len(class_names))
            result = ClassificationResult([], class_names, empty, empty)
            stats.update(errors=errors)
    stats.setdefault("errors", len(result.errors))
    stats.update(images=len(records), encoded=len(records) - stats["errors"], cached=0,
                 seconds=round(time.perf_counter() - started, 3))
    result.stats.update(stats)
    result.warnings = list(method_out.warnings)
    result.artifacts = dict(getattr(method_out, "artifacts", {}))
    return result


# -- driver side ----------------------------------------------------------------------------------------


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the Data library is a separate extra of ray)
    except ImportError as exc:
        raise MissingExtraError(f"the Ray engine needs Ray Data, which is not installed: {_INSTALL_HINT}") from exc
    return ray


def _check_settings(method, options, k, batch_size, num_workers, output_dir, output_format, collect) -> None:
    if method not in LINEAR_METHODS:
        raise ConfigError(
            f"method '{method}' cannot run on the Ray engine: it is not one fixed linear head over the image "
            f"features. Ray supports: {', '.join(LINEAR_METHODS)}. Use the single-process engine for '{method}'."
        )
    refiners = options.refiners
    if refiners.support is not None or refiners.self_cache or refiners.frechet:
        raise ConfigError("refiners (Tip-Adapter, self-cache, Fréchet mean) run on the single-process engine only.")
    if options.explain:
        raise ConfigError("explanations are made by the single-process engine only: drop explain or the Ray engine.")
    if k < 1 or batch_size < 1:
        raise ConfigError(f"top_k and batch_size must be at least 1, got '{k}' and '{batch_size}'.")
    if num_workers is not None and num_workers < 1:
        raise ConfigError(f"num_workers must be at least 1 (encoder actors), got '{num_workers}'.")
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"unknown output format '{output_format}'. Valid: {', '.join(OUTPUT_FORMATS)}.")
    if not collect and output_dir is None:
        raise ConfigError("collect=False keeps nothing: give an output_dir for the sharded rows.")
    if output_dir is not None and "://" not in str(output_dir):
        folder = Path(output_dir).expanduser()
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise ConfigError(f"output folder '{output_dir}' exists and is not empty. Give a new or empty folder.")


def _driver_classifier(model_id: str, device: str, precision: str, cache_dir) -> Classifier:
    """The Classifier for text features on the driver: on ``device`` when this machine has it, else on the CPU."""
    try:
        return Classifier(model_id, device=device, precision=precision, cache_dir=cache_dir)
    except ConfigError:  # e.g. device="cuda" for the workers while the driver is a CPU-only head node
        log.info("device '%s' is not available on the driver: text features are computed on the CPU", device)
        return Classifier(model_id, device="cpu", precision=precision, cache_dir=cache_dir)


def _probe_model(clf: Classifier, text: str) -> tuple[tuple[int, ...], int]:
    """The preprocessed pixel shape (for error rows' placeholders) and the feature dimension D (from one class
    text, which the method encodes anyway: it lands in the store)."""
    from PIL import Image

    pixels = clf.model.preprocess(Image.new("RGB", (64, 64), (128, 128, 128)))  # [3, H, W]
    return tuple(pixels.shape), int(clf.encoder.encode_texts([text]).shape[-1])


@dataclass
class _TextHead:
    """What the actors need to score: per-class weights and the model's scoring constants."""

    class_names: list[str]
    weights: np.ndarray  # [C, D] float32
    logit_scale: float
    logit_bias: float | None
    score_rule: str


def _text_head(clf: Classifier, method: str, class_names: list[str], options: MethodOptions,
               dim: int) -> tuple[_TextHead, MethodOutput]:
    """Run the method once on the driver (LLM, text encoding); its text weights [C, D] and its output's extras."""
    generator = torch.Generator().manual_seed(0)
    probe = l2_normalize(torch.randn(_PROBE_ROWS, dim, generator=generator))  # [P, D]
    out = run_method(method, clf, probe, class_names, options)
    model = clf.model
    if out.weights is not None:  # the [C, D] text weights the method scored with, if it scored with one set
        weights = out.weights.detach().float().cpu()
        expected = compute_logits(probe, weights, model.logit_scale, model.logit_bias)  # [P, C]
        linear = out.logits.shape == expected.shape and torch.allclose(out.logits.float(), expected, atol=1e-4)
    else:
        linear = False
    if not linear:
        raise ConfigError(
            f"method '{method}' did not score with one fixed set of text weights, so the Ray engine cannot "
            f"reproduce it. Use the single-process engine for '{method}'."
        )
    return _TextHead(class_names, weights.numpy(), model.logit_scale, model.logit_bias, model.score_rule), out


def _portable_preprocess(backend):
    """The backend's preprocess, shipped to decode tasks without the model's weights."""
    import copy
    import types

    backend = getattr(backend, "backend", backend)  # a LazyModel: the real backend it built
    preprocess = backend.preprocess
    if getattr(preprocess, "__self__", None) is backend:  # a bound method (HF): bind it to a light copy
        light = copy.copy(backend)
        for heavy in ("model", "processor", "tokenizer", "preprocess"):  # weights, vocabularies, the bound original
            if hasattr(light, heavy):
                setattr(light, heavy, None)
        return types.MethodType(preprocess.__func__, light)
    return preprocess


def _connect(ray, address: str | None) -> None:
    if ray.is_initialized():
        if address is not None:
            log.warning("Ray is already initialised in this process: ignoring ray_address '%s'", address)
        return
    try:
        ray.init(address=address)
    except Exception as exc:  # ray raises ConnectionError, RuntimeError, ValueError… for a bad address
        where = f"the Ray cluster at '{address}'" if address else "a local Ray instance"
        raise ConfigError(
            f"could not connect to {where}: {exc}. Check the address (e.g. 'ray://HEAD:10001' or 'auto') "
            "and that `ray start --head` runs there."
        ) from exc


@contextmanager
def _worker_start_failures(ray):
    """An encoder actor that cannot start (model not loadable there, other weights) becomes a ModelLoadError."""
    try:
        yield
    except ray.exceptions.ActorDiedError as exc:
        if not getattr(exc, "actor_init_failed", False):
            raise
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ModelLoadError(
            f"an encoder actor could not start on a Ray worker: {lines[-1].rstrip('.') if lines else exc}. Check that every node "
            "has vlmcls installed and can load the model id."
        ) from exc


def _placement(ray, device: str, num_workers: int | None) -> tuple[str, float | None, int]:
    """(device inside each actor, GPUs per actor, number of actors) for this cluster."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    wants_gpu = device.startswith("cuda") or (device == "auto" and gpus > 0)
    if wants_gpu:
        if gpus == 0:
            raise ConfigError(f"device '{device}' asked for, but the Ray cluster has no GPUs. Use device 'cpu'.")
        # each actor sees only its own GPU, as cuda:0
        return "cuda", 1.0, num_workers or gpus
    # Decoding a photo takes a few ms, a ViT-B/32 forward pass ~100 ms on one core: one CPU in eight (at least
    # one) is left to the decode tasks, the rest encode.
    return ("cpu" if device == "auto" else device), None, num_workers or max(1, cpus - max(1, cpus // 8))


# -- worker side ----------------------------------------------------------------------------------------


def _decode_batch(batch: dict[str, np.ndarray], *, preprocess, pixel_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Decode and preprocess a batch of files; a file that fails keeps zeros and its reason in 'error'."""
    from .images import decode_and_preprocess  # the one decoding routine, shared with the single engine

    paths = batch["path"]
    pixels = np.zeros((len(paths), *pixel_shape), dtype=np.float32)  # [B, 3, H, W]
    errors = []
    for row, path in enumerate(paths):
        record = ImageRecord(id=str(path), path=Path(str(path)), label=None, source_index=row)
        outcome = decode_and_preprocess(record, preprocess=preprocess, max_pixels=DEFAULT_MAX_PIXELS)
        if isinstance(outcome, str):
            errors.append(_single_engine_reason(record, outcome))
        else:
            pixels[row] = outcome.numpy()
            errors.append("")
    return {"index": batch["index"], "path": paths, "true_label": batch["true_label"],
            "error": np.array(errors, dtype=object), "pixels": pixels}


def _single_engine_reason(record: ImageRecord, decode_reason: str) -> str:
    """The reason the single-process engine gives: it hashes the file first (the same step is called here), so a
    read failure reads as such."""
    digest = _content_key_or_error(record)
    return _reason(digest) if isinstance(digest, Exception) else decode_reason


class _EncoderActor:
    """Holds the model and the text weights; turns decoded batches into prediction rows."""

    def __init__(self, model_id: str, device: str, precision: str, weights_fingerprint: str, head: _TextHead,
                 k: int, collect: bool):
        import ray

        from .models import load_model

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))
        self.model = load_model(model_id, device=device, precision=precision)
        if self.model.weights_fingerprint != weights_fingerprint:
            raise ModelLoadError(
                f"model '{model_id}' loaded on a Ray worker has other weights than on the driver "
                f"('{self.model.weights_fingerprint}' vs '{weights_fingerprint}'). Give a model id that loads the "
                "same weights everywhere: a pretrained tag, or local-dir: on storage every node shares."
            )
        self.head = head
        self.text_weights = torch.from_numpy(head.weights.copy())  # [C, D]; the shipped array is read-only
        self.k = k
        self.collect = collect

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa

        errors = [str(e) if e else None for e in batch["error"]]
        ok_rows = [i for i, e in enumerate(errors) if e is None]
        labels: list[str | None] = [None] * len(errors)
        ranked: list[list[dict]] = [[] for _ in errors]
        logit_rows: list[list[float] | None] = [None] * len(errors)
        if ok_rows:
            head = self.head
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok_rows]))  # [B, 3, H, W]
            feats = l2_normalize(self.model.encode_images(pixels))  # [B, D]
            finite = torch.isfinite(feats).all(dim=1).tolist()  # [B]
            for n, row in enumerate(ok_rows):
                if not finite[n]:
                    errors[row] = NON_FINITE_FEATURE
            logits = compute_logits(feats, self.text_weights, head.logit_scale, head.logit_bias)  # [B, C]
            values, indices = top_k(probabilities(logits, head.score_rule), self.k)  # [B, k]
            for n, row in enumerate(ok_rows):
                if not finite[n]:
                    continue
                names = [head.class_names[int(j)] for j in indices[n]]
                ranked[row] = [{"label": c, "prob": round(float(v), 6)} for c, v in zip(names, values[n])]
                labels[row] = names[0]
                if self.collect:
                    logit_rows[row] = logits[n].tolist()
        columns = {
            "path": pa.array([str(p) for p in batch["path"]], pa.string()),
            "label": pa.array(labels, pa.string()),
            "top_k": pa.array(ranked, _top_k_type()),
            "error": pa.array(errors, pa.string()),
            "true_label": pa.array([str(t) or None for t in batch["true_label"]], pa.string()),
            "index": pa.array(np.asarray(batch["index"], dtype=np.int64), pa.int64()),
        }
        if self.collect:
            columns["logits"] = pa.array(logit_rows, pa.list_(pa.float32()))
            columns["done_at"] = pa.array([time.time()] * len(errors), pa.float64())
        return pa.table(columns)


def _top_k_type():
    import pyarrow as pa

    return pa.list_(pa.struct([("label", pa.string()), ("prob", pa.float64())]))


# -- results --------------------------------------------------------------------------------------------


def _write(ds, output_dir: str | Path, output_format: str) -> list[str]:
    target = str(output_dir)
    if output_format == "parquet":
        ds.write_parquet(target)
    else:
        ds.write_json(target)  # one JSON object per line
    if "://" in target:
        return []
    return sorted(str(p) for p in Path(target).iterdir() if p.is_file())


def _count_written_errors(ray, output_dir: str | Path, output_format: str) -> int:
    read = ray.data.read_parquet if output_format == "parquet" else ray.data.read_json
    written = read(str(output_dir)).select_columns(["error"])
    return sum(t.num_rows - t.column("error").null_count
               for t in written.iter_batches(batch_size=None, batch_format="pyarrow"))


def _collect(ds):
    import pyarrow as pa

    tables = [t for t in ds.iter_batches(batch_size=None, batch_format="pyarrow") if t.num_rows]
    if not tables:
        return None
    return pa.concat_tables(tables).sort_by("index")


def _steady_rate(table) -> float | None:
    """Images per second once every actor is up: rows finished after the first batch over the time they took."""
    if table is None:
        return None
    finished = sorted(set(table.column("done_at").to_pylist()))  # one timestamp per batch
    if len(finished) < 2 or finished[-1] <= finished[0]:
        return None
    first_batch = table.column("done_at").to_pylist().count(finished[0])
    return round((table.num_rows - first_batch) / (finished[-1] - finished[0]), 2)


def _to_result(table, records: list[ImageRecord], head: _TextHead, k: int) -> ClassificationResult:
    """The same ClassificationResult the single engine builds, from the rows the actors returned."""
    num_classes = len(head.class_names)
    if table is None or table.num_rows != len(records):
        got = 0 if table is None else table.num_rows
        raise ConfigError(f"the Ray run returned '{got}' rows for {len(records)} images; run it again.")
    errors = table.column("error").to_pylist()
    ok_rows = [i for i, e in enumerate(errors) if e is None]
    logits = torch.empty(0, num_classes)
    if ok_rows:
        flat = table.column("logits").take(ok_rows).combine_chunks().flatten()
        logits = torch.from_numpy(flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(ok_rows), num_classes))
    probs = probabilities(logits, head.score_rule)  # [N_ok, C]
    values, indices = top_k(probs, k) if ok_rows else (torch.empty(0, 0), torch.empty(0, 0))
    position = {row: n for n, row in enumerate(ok_rows)}
    predictions = []
    for i, rec in enumerate(records):
        path = str(rec.path) if rec.path is not None else None
        if i in position:
            n = position[i]
            ranked = [(head.class_names[int(j)], float(v)) for v, j in zip(values[n], indices[n])]
            predictions.append(Prediction(rec.id, path, ranked[0][0], ranked, None, rec.label))
        else:
            predictions.append(Prediction(rec.id, path, None, [], errors[i], rec.label))
    return ClassificationResult(predictions, list(head.class_names), logits, probs)
