"""Classify on a Ray cluster with any method spec: the same rows as the single-process engine.

Image features are the expensive part, so they are computed once and kept in a feature store on shared storage
(:mod:`vlmcls.feature_store`: Parquet shards keyed by model × weights × preprocessing × content digest)::

    driver: list images, content digests ─▶ which digests the store lacks
    from_items(missing) ─▶ map_batches(decode)  CPU tasks; a bad file becomes an error row
                        ─▶ map_batches(actor)   loads the model once, encodes, writes a feature shard
    read_parquet(shards) ─▶ one row per image: (position, feats) — a re-run with other classes starts here

The method spec is then prepared on the driver (:func:`vlmcls.methods.build_pipeline`: LLM calls, text encoding,
support features) and applied by Ray tasks batch by batch. A stage that needs a pass over all images asks for
a *gather*: FuDD's workers send their ambiguous pairs with counts, the self-cache gets every feature and first
logit back to the driver; the small state that results (a pair table, a cache, a metric) travels with the
pipeline to the final scoring tasks.
"""

from __future__ import annotations

import json
import logging
import sys
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .api import Classifier, as_records, load_classes
from .cache import stat_key
from .embeddings import _content_key_or_error, _reason
from .errors import ConfigError, MissingExtraError, ModelLoadError
from .feature_store import FeatureStore, default_feature_root, shards_for
from .images import ImageRecord, default_decode_workers
from .methods import DEFAULT_METHOD, MethodOptions, build_pipeline, parse_spec
from .results import ClassificationResult, Prediction
from .scoring import probabilities
from . import ray_workers

__all__ = ["OUTPUT_FORMATS", "classify_with_ray"]

log = logging.getLogger(__name__)

OUTPUT_FORMATS = ("parquet", "jsonl")

_INSTALL_HINT = "pip install 'vlmcls[ray]'"
_DECODE_WORKER_BYTES = 768 * 2**20  # a Python worker with torch and torchvision imported, measured ~0.5 GiB
_COLLECT_ONLY = ("logits", "counts")  # columns the driver needs, not the written rows


def classify_with_ray(
    model_id: str,
    images: str | Path | Iterable[str | Path | ImageRecord],
    classes: str | Path | Sequence[str],
    *,
    method: str = DEFAULT_METHOD,
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
    feature_store: str | Path | None = None,
    **source_options: Any,
) -> ClassificationResult:
    """Classify images on Ray Data with any method spec; same rows, in the same order, as :meth:`Classifier.classify`.

    ``num_workers`` encoder actors (default: one per GPU, else 7 in 8 of the cluster's CPUs) each load the model
    once, and only when some image is not in the feature store yet (``feature_store``: a folder every node can
    reach; default ``<cache>/features``). With ``output_dir`` the rows (``Prediction.to_dict`` columns + ``index``)
    are written there as sharded parquet or JSONL; ``collect=False`` then skips bringing predictions back to the
    driver (the result holds no predictions, only stats). The model id must load on every worker node (a shared
    path for ``local-dir:``). Ray starts locally unless ``ray_address`` is given or Ray is already initialised.
    """
    ray = _import_ray()
    started = time.perf_counter()
    options = options or MethodOptions()
    spec = parse_spec(method).with_implied(options)  # a bad spec fails before anything loads
    _check_settings(top_k, batch_size, num_workers, output_dir, output_format, collect)
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
    store = FeatureStore(feature_store if feature_store is not None else default_feature_root(cache_dir),
                         clf.model.image_key_parts, dim)
    _connect(ray, ray_address)
    actor_device, gpus_per_worker, workers = _placement(ray, device, num_workers)

    # 1. Features: digests on the driver (unchanged files are not read again: the store keeps their digests),
    #    then only what the feature store lacks is decoded and encoded, on the workers.
    errors: dict[int, str] = {}
    digests: dict[int, str] = {}
    for i, digest in enumerate(_digests(records, clf.store)):
        if isinstance(digest, Exception):
            errors[i] = _reason(digest)
        else:
            digests[i] = digest
    index = store.index()
    missing = list(dict.fromkeys(d for d in digests.values() if d not in index))
    first_of = {}
    for i, d in digests.items():
        first_of.setdefault(d, i)
    encode_stats: dict[str, Any] = {"encoded": 0}
    with _worker_start_failures(ray):
        if missing:
            failed = _encode_missing(ray, clf, store, model_id, precision, missing, [records[first_of[d]] for d in missing],
                                     pixel_shape, batch_size, actor_device, gpus_per_worker, workers, encode_stats)
            for i, d in digests.items():
                if d in failed:
                    errors[i] = failed[d]
            index = store.index()
        ok = [i for i in range(len(records)) if i not in errors]
        unreadable = [i for i in ok if digests[i] not in index]
        if unreadable:
            raise ConfigError(f"the feature store '{store.folder}' lost {len(unreadable)} features during the run "
                              f"(e.g. '{records[unreadable[0]].id}'); run again.")
        log.info("ray: %d images, %d encoded now, %d from the feature store, %d errors", len(records),
                 encode_stats["encoded"], len(ok) - encode_stats["encoded"], len(errors))

        # 2. One row per decodable image, in the run's order (its position), read from the feature store.
        positions: dict[str, list[int]] = {}
        for position, i in enumerate(ok):
            positions.setdefault(digests[i], []).append(position)
        feats_ds = None
        if ok:
            shard_of = {d: index[d].name for d in positions}
            shards = shards_for(index, positions)
            # Each task reads whole shards with pyarrow (one read per shard, no Python object per row).
            feats_ds = ray.data.from_items([{"shard": path} for path in shards], override_num_blocks=len(shards))
            feats_ds = feats_ds.map_batches(ray_workers.rows_by_position, batch_size=1, batch_format="pyarrow",
                                            fn_kwargs={"positions": positions, "shard_of": shard_of}).materialize()

        # 3. The pipeline, prepared on the driver; gathers run as Ray tasks over the features.
        context = clf.run_context(class_names, options)
        method_started = time.perf_counter()
        if feats_ds is not None:
            pipeline, report = build_pipeline(spec, context, _ray_gather(feats_ds, batch_size))
            scored = feats_ds.map_batches(ray_workers.score_batch, batch_size=batch_size, batch_format="pyarrow",
                                          fn_kwargs={"pipeline": pipeline, "k": top_k, "explain": options.explain})
        else:
            pipeline = report = None
            scored = None
        table = None
        if collect or output_dir is not None:
            scored = scored.materialize() if scored is not None else None
        stats: dict[str, Any] = {"engine": "ray", "workers": workers, "method": method}
        if report is not None:
            stats.update(llm_calls=report.llm_calls, llm_tokens=report.llm_tokens, **report.info)
        if output_dir is not None:
            stats["output_files"] = _write(ray, scored, records, ok, errors, output_dir, output_format, options.explain)
        if collect and scored is not None:
            table = _collect(scored)
    stats["method_seconds"] = round(time.perf_counter() - method_started, 4)
    if table is not None and pipeline is not None:
        counts: dict[str, float] = {}
        for text in table.column("counts").to_pylist():
            for key, value in json.loads(text).items():
                counts[key] = counts.get(key, 0) + value
        stats.update(pipeline.summarize(counts, len(ok)))
    result = (_to_result(table, records, ok, errors, class_names, pipeline) if collect
              else ClassificationResult([], class_names, torch.empty(0, len(class_names)), torch.empty(0, len(class_names))))
    stats.update(images=len(records), errors=len(errors), encoded=encode_stats["encoded"],
                 cached=len(ok) - encode_stats["encoded"], seconds=round(time.perf_counter() - started, 3))
    if encode_stats.get("steady_images_per_second") is not None:
        stats["steady_images_per_second"] = encode_stats["steady_images_per_second"]
    result.stats.update(stats)
    if report is not None:
        result.warnings = list(report.warnings)
        result.artifacts = dict(report.artifacts)
        result.label_metric = report.label_metric
    return result


def _encode_missing(ray, clf, store: FeatureStore, model_id, precision, digests: list[str], records: list[ImageRecord],
                    pixel_shape, batch_size, actor_device, gpus_per_worker, workers, encode_stats) -> dict[str, str]:
    """Decode and encode the images the store lacks; their features land in the store. Returns digest -> reason
    for the images that failed to decode."""
    items = [{"digest": d, "path": str(r.path)} for d, r in zip(digests, records)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / batch_size)))
    # A decode task asks for the memory it takes (torch for the transforms, plus its batch of pixels). Remote
    # arguments that differ from the actors' also keep Ray from fusing decoding into the encoder actors, so
    # decoding runs on the CPUs the actors leave free, alongside encoding.
    decode_bytes = _DECODE_WORKER_BYTES + 2 * batch_size * 4 * math.prod(pixel_shape)
    ds = ds.map_batches(
        ray_workers.decode_batch, batch_size=batch_size, batch_format="numpy", memory=decode_bytes,
        fn_kwargs={"preprocess": _portable_preprocess(clf.model), "pixel_shape": pixel_shape},
    )
    ds = ds.map_batches(
        ray_workers.EncoderActor, batch_size=batch_size, batch_format="numpy", num_gpus=gpus_per_worker,
        compute=ray.data.ActorPoolStrategy(size=workers),
        fn_constructor_kwargs={
            "model_id": model_id, "device": actor_device, "precision": precision,
            "weights_fingerprint": clf.model.weights_fingerprint, "store_root": str(store.folder.parent),
            "dim": store.dim,
        },
    )
    failed: dict[str, str] = {}
    done_at: list[float] = []
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for digest, error in zip(batch.column("digest").to_pylist(), batch.column("error").to_pylist()):
            if error:
                failed[digest] = error
        done_at.extend(batch.column("done_at").to_pylist())
    encode_stats["encoded"] = len(digests) - len(failed)
    encode_stats["steady_images_per_second"] = _steady_rate(done_at)
    return failed


def _digests(records: list[ImageRecord], store) -> list:
    """Each record's content digest, or the error reading it. A file whose digest the store keeps under its
    unchanged stat is not read again; the rest are read and hashed on threads (hashlib releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    out: list = [None] * len(records)
    stat_keys: dict[int, str] = {}
    if store is not None:
        for i, record in enumerate(records):
            key = stat_key(record.path)
            if key is not None:
                stat_keys[i] = key
        kept = store.get_jsons(stat_keys.values())
        for i, key in stat_keys.items():
            if isinstance(kept.get(key), str):
                out[i] = kept[key]
    todo = [i for i, digest in enumerate(out) if digest is None]
    with ThreadPoolExecutor(max_workers=default_decode_workers(), thread_name_prefix="vlmcls-hash") as pool:
        for i, digest in zip(todo, pool.map(_content_key_or_error, [records[i] for i in todo])):
            out[i] = digest
    fresh = {stat_keys[i]: out[i] for i in todo if i in stat_keys and isinstance(out[i], str)}
    if fresh:
        store.set_jsons(fresh)
    return out


def _ray_gather(feats_ds, batch_size: int):
    """The Ray engine's gather: ``collect`` runs in tasks over the feature rows; the driver gets the parts."""

    def gather(upstream, collect):
        parts = feats_ds.map_batches(ray_workers.collect_part, batch_size=batch_size, batch_format="pyarrow",
                                     fn_kwargs={"pipeline": upstream, "collect": collect})
        return [row["part"] for row in parts.iter_rows()]

    return gather


# -- driver side ----------------------------------------------------------------------------------------


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the Data library is a separate extra of ray)
    except ImportError as exc:
        raise MissingExtraError(f"the Ray engine needs Ray Data, which is not installed: {_INSTALL_HINT}") from exc
    return ray


def _check_settings(k, batch_size, num_workers, output_dir, output_format, collect) -> None:
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
    # Ray prints ~50 lines of its own (worker logs, dashboard, Data's execution plan and progress bars): the user
    # sees them only with -v/-vv; errors still reach the driver as exceptions.
    verbose = log.isEnabledFor(logging.DEBUG)
    quiet_logs = {} if verbose else {"logging_level": logging.WARNING, "log_to_driver": False}
    if address is None and not verbose:
        quiet_logs["include_dashboard"] = False  # only for a local instance this process starts
    if not verbose:
        logging.getLogger("ray").setLevel(logging.WARNING)
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        ray.init(address=address, **quiet_logs)
        if not sys.stderr.isatty():  # bars only on a terminal, like classify's own progress
            ray.data.DataContext.get_current().enable_progress_bars = False
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


# -- results --------------------------------------------------------------------------------------------


def _write(ray, scored, records: list[ImageRecord], ok: list[int], errors: dict[int, str], output_dir,
           output_format: str, explain: bool) -> list[str]:
    """The rows of every image, error rows included, as shards in output_dir (written by the workers)."""
    import pyarrow as pa

    located = {"index": ok, "path": [str(records[i].path) for i in ok],
               "true_label": [records[i].label for i in ok]}
    parts = []
    if scored is not None:
        parts.append(scored.map_batches(ray_workers.located_rows, batch_format="pyarrow", fn_kwargs={"located": located,
                                                                                              "explain": explain}))
    if errors:
        rows = pa.table({
            "path": pa.array([str(records[i].path) for i in errors], pa.string()),
            "label": pa.array([None] * len(errors), pa.string()),
            "top_k": pa.array([[] for _ in errors], ray_workers.top_k_type()),
            "error": pa.array(list(errors.values()), pa.string()),
            "true_label": pa.array([records[i].label for i in errors], pa.string()),
            "index": pa.array(list(errors), pa.int64()),
            **({"explanation": pa.array([None] * len(errors), pa.string())} if explain else {}),
        })
        parts.append(ray.data.from_arrow(rows))
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    target = str(output_dir)
    if output_format == "parquet":
        ds.write_parquet(target)
    else:
        ds.write_json(target)  # one JSON object per line
    if "://" in target:
        return []
    return sorted(str(p) for p in Path(target).iterdir() if p.is_file())


def _collect(ds):
    import pyarrow as pa

    tables = [t for t in ds.iter_batches(batch_size=None, batch_format="pyarrow") if t.num_rows]
    if not tables:
        return None
    return pa.concat_tables(tables).sort_by("position")


def _steady_rate(done_at: list[float]) -> float | None:
    """Images per second once every actor is up: rows finished after the first batch over the time they took."""
    finished = sorted(set(done_at))  # one timestamp per batch
    if len(finished) < 2 or finished[-1] <= finished[0]:
        return None
    first_batch = done_at.count(finished[0])
    return round((len(done_at) - first_batch) / (finished[-1] - finished[0]), 2)


def _to_result(table, records: list[ImageRecord], ok: list[int], errors: dict[int, str], class_names: list[str],
               pipeline) -> ClassificationResult:
    """The same ClassificationResult the single engine builds, from the rows the workers returned."""
    num_classes = len(class_names)
    got = 0 if table is None else table.num_rows
    if got != len(ok):
        raise ConfigError(f"the Ray run returned '{got}' rows for {len(ok)} decodable images; run it again.")
    logits = torch.empty(0, num_classes)
    if ok:
        flat = table.column("logits").combine_chunks().flatten()
        logits = torch.from_numpy(flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(ok), num_classes))
    probs = probabilities(logits, pipeline.score_rule if pipeline is not None else "softmax")  # [N_ok, C]
    labels = table.column("label").to_pylist() if ok else []
    ranked = table.column("top_k").to_pylist() if ok else []
    notes = table.column("explanation").to_pylist() if ok else []
    position = {i: n for n, i in enumerate(ok)}
    predictions = []
    for i, rec in enumerate(records):
        path = str(rec.path) if rec.path is not None else None
        if i in position:
            n = position[i]
            top = [(t["label"], float(t["prob"])) for t in ranked[n]]
            explanation = json.loads(notes[n]) if notes[n] else None
            predictions.append(Prediction(rec.id, path, labels[n], top, None, rec.label, explanation))
        else:
            predictions.append(Prediction(rec.id, path, None, [], errors[i], rec.label))
    return ClassificationResult(predictions, list(class_names), logits, probs)
