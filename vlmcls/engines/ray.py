"""Classify on a Ray cluster with any method spec: the same rows as the single-process engine.

Image features are the expensive part, so they are computed once and kept in a feature store on shared storage
(:mod:`vlmcls.encode.feature_store`: Parquet shards keyed by model × weights × preprocessing × decoding × content digest)::

    driver: list images, stat files ─▶ digests the store keeps for unchanged files; those the feature store holds are done
    from_items(other files | dataset parts) ─▶ map_batches(decode)  CPU tasks read each image once (a file, or rows
                        of a Parquet or Arrow file), hash and decode the same bytes; a bad image becomes an error row
                        ─▶ map_batches(actor)   loads the model once, encodes, writes a feature shard
    driver: digests (and stat key -> digest, for the next run) ─▶ read_parquet(shards) ─▶ (position, feats) rows

The method spec is then prepared on the driver (:func:`vlmcls.methods.build_pipeline`: LLM calls, text encoding,
support features) and applied by Ray tasks batch by batch. A stage that needs a pass over all images asks for
a *gather*: FuDD's workers send their ambiguous pairs with counts, the self-cache gets every feature and first
logit back to the driver; the small state that results (a pair table, a cache, a metric) travels with the
pipeline to the final scoring tasks. The rows carry each image's scores so far between passes
(:mod:`vlmcls.engines.ray_stages`), so every stage is evaluated once per image, as on one machine
(``carry_scores=False``: each pass runs the stages before it again, one Ray pass fewer per gather).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import torch

from ..api import Classifier, _is_dataset, as_records, load_classes
from ..errors import ConfigError, MissingExtraError, ModelLoadError, WorkerError
from ..encode.feature_store import FeatureStore, default_feature_root, shards_for
from ..sources.listing import DatasetLocation, ImageRecord, locate_dataset
from ..methods import DEFAULT_METHOD, MethodOptions, build_pipeline, parse_spec
from ..results import ClassificationResult
from .request import RunRequest
from .ray_stages import RayStagesSoFar
from .ray_workers import EncoderActor, decode_files, decode_rows, decode_shard, rows_by_position
from .ray_results import _collect, _steady_rate, _to_result, _write

if TYPE_CHECKING:
    from .request import ProgressFn

__all__ = ["OUTPUT_FORMATS", "RayEngine", "classify_with_ray", "run_on_ray"]

log = logging.getLogger(__name__)

OUTPUT_FORMATS = ("parquet", "jsonl")

_INSTALL_HINT = "pip install 'vlmcls[ray]'"
_DECODE_WORKER_BYTES = 768 * 2**20  # a Python worker with torch and torchvision imported, measured ~0.5 GiB
_COLLECT_ONLY = ("logits", "counts")  # columns the driver needs, not the written rows


@dataclass
class RayEngine:
    """Ray Data: the same rows as :class:`LocalEngine`, in the same order, error rows included.

    ``workers`` encoder actors (default: one per GPU, else 7 in 8 of the cluster's CPUs) each load the model once,
    and only when some image is not in the feature store yet (``feature_store``: a folder every node can reach;
    default ``<cache>/features``). With ``output_dir`` the rows (``Prediction.to_dict`` columns + ``index``) are
    written there as sharded parquet or JSONL; ``collect=False`` then skips bringing predictions back to the driver
    (the result holds no predictions, only stats). ``heic_thumbnails``: as :class:`~vlmcls.api.Classifier`'s. The
    model id must load on every worker node (a shared path for ``local-dir:``). Ray starts locally (listening on
    127.0.0.1) unless ``address`` is given or Ray is already initialised.
    """

    model: str
    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int = 32
    workers: int | None = None  # encoder actors (default: one per GPU, else 7 in 8 CPUs)
    address: str | None = None  # an existing cluster ('auto'); default: start Ray locally
    output_dir: str | Path | None = None  # sharded rows written by the workers
    output_format: str = "parquet"
    collect: bool = True  # bring the rows back to the driver
    cache_dir: str | Path | None = None
    feature_store: str | Path | None = None
    heic_thumbnails: bool = False
    carry_scores: bool = True  # rows carry their scores between passes: each stage once (engines/ray_stages.py)

    def run(self, request: RunRequest, progress: ProgressFn | None = None) -> ClassificationResult:
        return run_on_ray(self, request)


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
    heic_thumbnails: bool = False,
    carry_scores: bool = True,
    **source_options: Any,
) -> ClassificationResult:
    """Classify images on Ray Data with any method spec; same rows, in the same order, as :meth:`Classifier.classify`.

    The function form of ``RayEngine(model_id, …).run(RunRequest(images, classes, …))``: see
    :class:`vlmcls.engines.RayEngine` for what each setting does (``num_workers`` is its ``workers``,
    ``ray_address`` its ``address``).
    """
    engine = RayEngine(model_id, device, precision, batch_size, workers=num_workers, address=ray_address,
                       output_dir=output_dir, output_format=output_format, collect=collect, cache_dir=cache_dir,
                       feature_store=feature_store, heic_thumbnails=heic_thumbnails, carry_scores=carry_scores)
    return engine.run(RunRequest(images, classes, method, options, top_k, source_options))


def run_on_ray(engine: RayEngine, request: RunRequest) -> ClassificationResult:
    """Carry out ``request`` with ``engine``'s settings (what :meth:`RayEngine.run` calls)."""
    model_id, device, precision, batch_size = engine.model, engine.device, engine.precision, engine.batch_size
    num_workers, ray_address, cache_dir, feature_store = engine.workers, engine.address, engine.cache_dir, \
        engine.feature_store
    output_dir, output_format, collect = engine.output_dir, engine.output_format, engine.collect
    images, classes, method, top_k = request.images, request.classes, request.method, request.top_k
    options, source_options = request.options, dict(request.source_options)
    ray = _import_ray()
    started = time.perf_counter()
    spec = parse_spec(method).with_implied(options)  # a bad spec fails before anything loads
    _check_settings(top_k, batch_size, num_workers, output_dir, output_format, collect)
    class_names = load_classes(classes)
    records, paths, dataset = _listing(images, source_options)
    if not records:
        raise ConfigError("no images to classify: the image source is empty.")

    clf = _driver_classifier(model_id, device, precision, cache_dir)
    clf.encoder.heic_thumbnails = engine.heic_thumbnails  # the workers decode as the driver's encoder says (and keys)
    if clf.model.weights_fingerprint.startswith("random-"):
        raise ConfigError(
            f"model '{model_id}' has random weights, and every Ray worker would draw other ones. Give a pretrained "
            "tag (e.g. 'ViT-B-32:openai'), or save seeded weights to a local-dir: folder (see bench/bench_ray.py)."
        )
    pixel_shape, dim = _probe_model(clf, class_names[0])
    store = FeatureStore(feature_store if feature_store is not None else default_feature_root(cache_dir),
                         clf.encoder.image_key_parts(), dim)
    _connect(ray, ray_address)
    actor_device, gpus_per_worker, workers = _placement(ray, device, num_workers)

    # 1. Features. The driver only stats files: a file whose digest the store keeps under its unchanged stat and
    #    whose feature the feature store holds is done. The workers read every other image once, hash and decode
    #    those same bytes (an image the feature store holds is hashed only) and encode what is new.
    index = store.index()
    listed = list(paths)
    known = clf.encoder.known_digests([ImageRecord(records[i].id, Path(paths[i]), None, i) for i in listed])
    digests = {listed[n]: d for n, d in known.items() if d in index}
    errors: dict[int, str] = {}
    encode_stats: dict[str, Any] = {"encoded": 0}
    with _worker_start_failures(ray):
        todo = {i: p for i, p in paths.items() if i not in digests}
        if todo or dataset is not None:
            held = np.sort(np.array(list(index), dtype="S64"))  # for the workers: one shared array, no set to unpickle
            found, failed, learned = _encode(ray, clf, store, model_id, precision, todo, dataset, held,
                                             pixel_shape, batch_size, actor_device, gpus_per_worker, workers,
                                             encode_stats)
            digests.update(found)
            errors.update(failed)
            if dataset is not None:
                errors.update(dataset.failed)
            if learned and clf.store is not None:  # stat key -> digest: the next run need not read these files
                clf.store.set_jsons(learned)
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
            feats_ds = feats_ds.map_batches(rows_by_position, batch_size=1, batch_format="pyarrow",
                                            fn_kwargs={"positions": positions, "shard_of": shard_of}).materialize()

        # 3. The pipeline, prepared on the driver; gathers run as Ray tasks over the features.
        context = clf.run_context(class_names, options)
        method_started = time.perf_counter()
        if feats_ds is not None:
            so_far = RayStagesSoFar(feats_ds, batch_size, options.explain, carry=engine.carry_scores)
            pipeline, report = build_pipeline(spec, context, so_far.gather)
            scored = so_far.score(pipeline, top_k)
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


def _listing(images, source_options) -> tuple[list[ImageRecord], dict[int, str], DatasetLocation | None]:
    """(the run's records in source order, as the single engine lists them; the file each is read from, by
    position, absolute; or the dataset whose Parquet or Arrow files hold the images)."""
    if isinstance(images, (str, os.PathLike)) or _is_dataset(images):
        dataset = locate_dataset(images, **source_options)
        if dataset is not None and dataset.files:  # imagefolder: its rows are files
            return dataset.records, dict(enumerate(dataset.files)), None
        if dataset is not None:
            return dataset.records, {}, dataset
    records = sorted(as_records(images, **source_options), key=lambda r: r.source_index)
    hosted = [r.id for r in records if r.path is None or r.fetch is not None]
    if hosted:
        raise ConfigError(
            f"the Ray engine reads files and datasets on disk, but '{hosted[0]}' is a dataset row handed over "
            "alone. Give the dataset itself (a save_to_disk folder, a .parquet file or imagefolder:DIR)."
        )
    return records, {i: os.path.abspath(r.path) for i, r in enumerate(records)}, None


def _encode(ray, clf, store: FeatureStore, model_id, precision, paths: dict[int, str],
            dataset: DatasetLocation | None, known: np.ndarray, pixel_shape, batch_size, actor_device,
            gpus_per_worker, workers, encode_stats) -> tuple[dict[int, str], dict[int, str], dict[str, str]]:
    """Read, hash, decode and encode on the workers the files in ``paths`` or the rows of ``dataset``; new features
    land in the feature store. Returns (position -> digest, position -> error reason, stat key -> digest)."""
    # A decode task asks for the memory it takes (torch for the transforms, plus its batch of pixels). Remote
    # arguments that differ from the actors' also keep Ray from fusing decoding into the encoder actors, so
    # decoding runs on the CPUs the actors leave free, alongside encoding.
    decode_bytes = _DECODE_WORKER_BYTES + 2 * batch_size * 4 * math.prod(pixel_shape)
    decoding = {"preprocess": _portable_preprocess(clf.model), "min_side": clf.encoder.decode_min_side(),
                "heif_thumbnails": clf.encoder.heic_thumbnails, "known": known}
    if dataset is not None and dataset.shards:  # wds: one task per tar shard, each member read once
        items = [{"file": os.fsencode(file), "rows": [m[0] for m in members], "offsets": [m[1] for m in members],
                  "sizes": [m[2] for m in members]} for file, members in dataset.shards if members]
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        ds = ds.map_batches(decode_shard, batch_size=1, batch_format="pyarrow", memory=decode_bytes,
                            fn_kwargs={**decoding, "batch_size": batch_size})
    elif dataset is not None:
        parts = _dataset_parts(dataset, batch_size)
        ds = ray.data.from_items(parts, override_num_blocks=max(1, len(parts)))
        ds = ds.map_batches(decode_rows, batch_size=1, batch_format="pyarrow", memory=decode_bytes,
                            fn_kwargs={**decoding, "column": dataset.column, "base_dir": dataset.base_dir,
                                       "batch_size": batch_size})
    else:
        items = [{"row": i, "path": os.fsencode(p)} for i, p in paths.items()]  # bytes: any file name
        ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / batch_size)))
        ds = ds.map_batches(decode_files, batch_size=batch_size, batch_format="numpy",
                            memory=decode_bytes, fn_kwargs=decoding)
    ds = ds.map_batches(
        EncoderActor, batch_size=batch_size, batch_format="pyarrow", num_gpus=gpus_per_worker,
        compute=ray.data.ActorPoolStrategy(size=workers),
        fn_constructor_kwargs={
            "model_id": model_id, "device": actor_device, "precision": precision,
            "weights_fingerprint": clf.model.weights_fingerprint, "store_root": str(store.folder.parent),
            "image_key_parts": clf.encoder.image_key_parts(), "dim": store.dim, "pixel_shape": pixel_shape,
        },
    )
    digests: dict[int, str] = {}
    failed: dict[int, str] = {}
    learned: dict[str, str] = {}
    done_at: list[float] = []
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        columns = [batch.column(name).to_pylist() for name in ("row", "digest", "stat_key", "error", "encoded",
                                                                "done_at")]
        for row, digest, key, error, encoded, done in zip(*columns):
            if error:
                failed[row] = os.fsdecode(error)
                continue
            digests[row] = digest
            if key:
                learned[key] = digest
            if encoded:
                done_at.append(done)
    encode_stats["encoded"] = len(done_at)
    encode_stats["steady_images_per_second"] = _steady_rate(done_at)
    return digests, failed, learned


def _dataset_parts(dataset: DatasetLocation, batch_size: int) -> list[dict]:
    """Work items over a dataset's files: each Parquet row group (read whole, decoded batch by batch), or
    ``batch_size`` rows of one of datasets' Arrow files (read zero-copy)."""
    items, first = [], 0
    for file, group, rows in dataset.parts:
        step = max(1, rows if group is not None else batch_size)
        for start in range(0, rows, step):
            items.append({"file": file, "group": group, "start": start, "stop": min(rows, start + step),
                          "first": first + start})
        first += rows
    return items


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
    # Ray prints ~50 lines of its own (worker logs, dashboard, Data's execution plan and progress bars, the
    # token-auth notice, C++ "E … core_worker.cc … max_restarts" lines that read as failures): the user sees them
    # only with -vv. A real failure still reaches the driver as an exception (one line: _worker_start_failures).
    verbose = log.isEnabledFor(logging.DEBUG)
    quiet_logs = {} if verbose else {"logging_level": logging.CRITICAL, "log_to_driver": False}
    if address is None:  # a local instance this process starts: it listens on this machine only
        quiet_logs["_node_ip_address"] = "127.0.0.1"
        if not verbose:
            quiet_logs["include_dashboard"] = False
    if not verbose:
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        with _quiet_ray_backend(not verbose):
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
def _quiet_ray_backend(quiet: bool):
    """Ray's C++ side (this process's core worker, and a local instance's raylet and workers, which inherit the
    environment when ray.init starts them) writes its errors to stderr by itself, at the level it reads from
    RAY_BACKEND_LOG_LEVEL once, at start; reading it, it announces the level on stderr: that one line is dropped
    (stderr points at /dev/null while Ray starts; a failure to start still raises). A level the user set is kept."""
    if not quiet or "RAY_BACKEND_LOG_LEVEL" in os.environ:
        yield
        return
    os.environ["RAY_BACKEND_LOG_LEVEL"] = "fatal"
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to quieten
        saved = None
    try:
        if saved is not None:
            with open(os.devnull, "wb") as null:
                os.dup2(null.fileno(), 2)
        yield
    finally:
        if saved is not None:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        os.environ.pop("RAY_BACKEND_LOG_LEVEL", None)


@contextmanager
def _worker_start_failures(ray):
    """An encoder actor that cannot start (model not loadable there, other weights) becomes a ModelLoadError; any
    other failure of a Ray worker or task becomes a WorkerError whose one line ends with the worker's own error
    (Ray's own message is a traceback of a dozen lines, kept as the cause)."""
    try:
        yield
    except ray.exceptions.ActorDiedError as exc:
        if not getattr(exc, "actor_init_failed", False):
            raise WorkerError(f"a Ray worker died: {_last_error_line(exc)}. Run with -vv to see Ray's logs.") from exc
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ModelLoadError(
            f"an encoder actor could not start on a Ray worker: {lines[-1].rstrip('.') if lines else exc}. Check that every node "
            "has vlmcls installed and can load the model id."
        ) from exc
    except ray.exceptions.RayError as exc:
        raise WorkerError(f"a Ray worker failed: {_last_error_line(exc)}. Run with -vv to see Ray's logs.") from exc


def _last_error_line(exc: BaseException) -> str:
    """The error a worker raised, from Ray's text (``ValueError: boom``): the last line of the first traceback
    (Ray Data chains its own UserCodeException after it), without terminal colours."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    first = text.split("The above exception was the direct cause of the following exception:")[0]
    lines = [line.strip() for line in first.splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__).rstrip(".")


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
