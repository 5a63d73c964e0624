"""Images for the model: records in (listed by :mod:`vlmcls.sources.listing`); batches of pixels or error rows out.

``list_images`` (from :mod:`vlmcls.sources.listing`) turns a source into :class:`ImageRecord` s without reading any
pixels; ``load_image`` (from :mod:`vlmcls.encode.decoding`) decodes one. ``iter_decoded_batches`` reads, hashes, decodes
and preprocesses on worker threads ahead of the consumer, so decoding overlaps with encoding, each file is read
once, and every bad image becomes an error row instead of stopping.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from .decoding import (
    DEFAULT_MAX_PIXELS,
    content_key,
    decode_image,
    digest_of,
    load_image,
    thumbnail_jpeg,
)
from ..errors import ConfigError, ImageError
from ..sources.listing import DEFAULT_MAX_BYTES, IMAGE_EXTENSIONS, ImageRecord, list_images, read_image_data

if TYPE_CHECKING:
    import torch

__all__ = [
    "IMAGE_EXTENSIONS",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_BYTES",
    "ImageRecord",
    "DecodedBatch",
    "list_images",
    "load_image",
    "decode_image",
    "content_key",
    "digest_of",
    "thumbnail_jpeg",
    "iter_decoded_batches",
    "default_decode_workers",
    "choose_worker_type",
    "WORKER_TYPES",
]

log = logging.getLogger(__name__)


@dataclass
class DecodedBatch:
    """Up to ``batch_size`` decoded images ready to encode, plus the images that failed on the way."""

    records_ok: list[ImageRecord]
    pixels: "torch.Tensor"  # [B, 3, H, W], B = len(records_ok); [0, 3, 0, 0] when nothing decoded
    errors: list[tuple[ImageRecord, str]]  # (record, reason), in input order
    digests: list[str] = field(default_factory=list)  # sha256 of the bytes each of records_ok was decoded from
    file_stats: list[os.stat_result | None] = field(default_factory=list)  # each file as read; None: dataset rows
    # (record, digest, file stat, value, thumbnail): images whose digest the look-up knew, not decoded for the model
    known: list[tuple[ImageRecord, str, os.stat_result | None, Any, bytes | None]] = field(default_factory=list)
    thumbnails: list[bytes | None] = field(default_factory=list)  # small JPEGs when asked for, aligned with records_ok


# -- batches --------------------------------------------------------------------------------------------


def default_decode_workers(worker_type: str = "thread") -> int:
    """Decode workers to use when none are asked for.

    Threads: at most 8. Beside a CPU model the model's own threads need the cores; beside a GPU, threads share one
    GIL and 8 beat 16 on the H100 box (832 vs 782 img/s, 500×375 JPEGs through ViT-B-32's transform).
    Processes: one per core (at most 32), since they do not share a GIL.
    """
    cpus = os.cpu_count() or 1
    return min(32, cpus) if worker_type == "process" else min(8, cpus)


WORKER_TYPES = ("auto", "thread", "process")


def choose_worker_type(worker_type: str, records: Sequence[ImageRecord]) -> str:
    """Resolve ``auto`` to ``thread`` or ``process``; check an explicit choice.

    ``auto`` is threads, everywhere, because that is what measured faster end to end. On this 2-core box the model
    needs the cores. On an H100 box (16 cores, 2,048 JPEGs of 500×375, ViT-B-32 fp16, model alone 19,300 img/s)
    decoding is the bound: decode-only, 16 processes handing over uint8 pixels reached 884 img/s against 709 for
    16 threads, yet whole runs were 518 img/s with processes and 560 with threads (forking 16 workers from a process
    that holds the model and a CUDA context eats the gain at that size). ``process`` stays available for much
    larger GPU runs; it needs fork() and files on disk (dataset rows are not shipped to workers).
    """
    key = (worker_type or "auto").strip().lower()
    if key not in WORKER_TYPES:
        raise ConfigError(f"unknown worker type '{worker_type}'. Valid: {', '.join(WORKER_TYPES)}.")
    if key == "process":
        if not _can_fork():
            raise ConfigError("worker type 'process' needs a platform with fork() (Linux); use 'thread' here.")
        if any(r.fetch is not None for r in records):
            log.info("dataset rows are decoded on threads: worker processes take files on disk only")
            return "thread"
    return "thread" if key == "auto" else key


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


LookupFn = Callable[[list[str]], Mapping[str, Any]]  # content digests -> the values already known for some


def iter_decoded_batches(
    records: Iterable[ImageRecord],
    preprocess: Callable[[Image.Image], "torch.Tensor"],
    batch_size: int,
    num_workers: int | None = None,
    *,
    prefetch_batches: int = 2,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    worker_type: str = "thread",
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    min_side: int | None = None,
    thumbnail_size: int | None = None,
    lookup: LookupFn | None = None,
    device_decoder: Any = None,
    heif_thumbnails: bool = False,
) -> Iterator[DecodedBatch]:
    """Read, hash, decode and preprocess ``records`` ahead of the consumer; yield batches in input order.

    Each file is read once: its digest and its pixels come from the same bytes, so a file replaced meanwhile can
    never be stored under the other content's key. Each batch holds ``batch_size`` decoded images (the last may
    hold fewer) and the records that failed since the previous batch, with their reasons. A failure never stops
    the iteration. ``num_workers`` threads (``worker_type="thread"``) or forked processes (``"process"``, see
    :func:`choose_worker_type`) do the work in chunks of a few records (default: :func:`default_decode_workers`;
    0 works in the calling thread). About ``batch_size * (prefetch_batches + 1)`` records are in flight.

    ``lookup`` (threads only) is called once per chunk with the chunk's digests; a record whose digest it returns
    a value for is not decoded and comes back in ``DecodedBatch.known``. ``thumbnail_size`` keeps a small JPEG
    of each decoded image (``DecodedBatch.thumbnails``), so a report need not read the file again.
    ``min_side``, ``heif_thumbnails``: see :func:`decode_image`. ``device_decoder`` (threads only; see
    :mod:`vlmcls.encode.device_decode`): workers read, hash and check the header of each JPEG it accepts, and the batch decodes them on the device;
    ``preprocess`` must then give uint8 pixels (the model's ``uint8_preprocess``).
    """
    if num_workers is None:
        num_workers = default_decode_workers(worker_type)

    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got '{batch_size}'.")
    if num_workers < 0 or prefetch_batches < 0:
        raise ConfigError(
            "num_workers and prefetch_batches must be 0 or more, "
            f"got '{num_workers}' and '{prefetch_batches}'."
        )
    if worker_type not in ("thread", "process"):
        raise ConfigError(f"worker_type must be 'thread' or 'process' here, got '{worker_type}'.")
    in_processes = worker_type == "process" and num_workers > 0
    settings = _DecodeSettings(preprocess, max_pixels, max_bytes, min_side, thumbnail_size,
                               None if in_processes else lookup, heif_thumbnails,
                               None if in_processes else device_decoder)
    # Chunks, not single records, are the unit of work: one future (or one hand-over between processes) and one
    # store look-up per chunk. Small enough that every worker gets several chunks of each batch.
    chunk = max(1, min(16, batch_size // max(1, num_workers)))
    window = batch_size * (prefetch_batches + 1)
    if in_processes:
        outcomes = _in_order_processes(list(records), settings, num_workers, chunk, window)
    else:
        outcomes = _in_order(records, settings, num_workers, chunk, window)
    batch = _BatchBuilder(settings)
    for record, outcome in outcomes:
        if batch.add(record, outcome) == batch_size:
            yield batch.take()
    if batch.records_ok or batch.errors or batch.known:
        yield batch.take()


@dataclass(frozen=True)
class _DecodeSettings:
    preprocess: Callable[[Image.Image], Any]
    max_pixels: int | None
    max_bytes: int | None
    min_side: int | None
    thumbnail_size: int | None
    lookup: LookupFn | None
    heif_thumbnails: bool
    device_decoder: Any = None  # a vlmcls.encode.device_decode.DeviceJpegDecoder (or a lazy chooser of one): JPEGs it
    # accepts are decoded in batches on the model's device when the batch is taken


@dataclass
class _Outcome:
    """What became of one record: pixels, or an error, or a value already known for its digest."""

    digest: str | None = None  # sha256 of the bytes read; None when they could not be read
    file_stat: os.stat_result | None = None  # the file as read (None: a dataset row's bytes)
    pixels: Any = None  # preprocess(image)
    error: str | None = None
    known: Any = None  # lookup's value for the digest; the image was not decoded
    thumbnail: bytes | None = None


@dataclass(frozen=True)
class _OnDevice:
    """A JPEG the device decoder accepted: its bytes and EXIF orientation, decoded when the batch is taken."""

    data: bytes
    orientation: int


class _BatchBuilder:
    def __init__(self, settings: _DecodeSettings | None = None):
        self._item_shape: tuple[int, ...] = (3, 0, 0)
        self._settings = settings
        self._reset()

    def _reset(self) -> None:
        self.records_ok: list[ImageRecord] = []
        self.tensors: list[Any] = []
        self.errors: list[tuple[ImageRecord, str]] = []
        self.known: list[tuple[ImageRecord, str, os.stat_result | None, Any, bytes | None]] = []
        self.digests: list[str] = []
        self.file_stats: list[os.stat_result | None] = []
        self.thumbnails: list[bytes | None] = []

    def add(self, record: ImageRecord, outcome: _Outcome) -> int:
        """Adds one outcome; returns how many decoded images the batch holds now."""
        if outcome.error is not None:
            self.errors.append((record, outcome.error))
        elif outcome.known is not None:
            self.known.append((record, outcome.digest, outcome.file_stat, outcome.known, outcome.thumbnail))
        else:
            self.records_ok.append(record)
            self.tensors.append(outcome.pixels)
            self.digests.append(outcome.digest)
            self.file_stats.append(outcome.file_stat)
            self.thumbnails.append(outcome.thumbnail)
            if not isinstance(outcome.pixels, _OnDevice):
                self._item_shape = tuple(outcome.pixels.shape)
        return len(self.records_ok)

    def take(self) -> DecodedBatch:
        if any(isinstance(t, _OnDevice) for t in self.tensors):
            self._decode_on_device()
        if self.tensors:  # pixels come from the model's preprocessing: torch is already imported
            import torch

            pixels = torch.stack(self.tensors)
        else:  # only errors and known images: no torch (a re-run with undecodable files in the folder)
            pixels = np.empty((0, *self._item_shape), dtype=np.float32)
        batch = DecodedBatch(self.records_ok, pixels, self.errors, self.digests, self.file_stats, self.known,
                             self.thumbnails)  # pixels: [B, 3, H, W]
        self._reset()
        return batch

    def _decode_on_device(self) -> None:
        """Decode the batch's accepted JPEGs on the device in one call; a file the device decoder fails on takes the
        PIL path here, and one that fails there too becomes an error row."""
        settings = self._settings
        decoder = _resolved(settings.device_decoder)
        wanted = [j for j, t in enumerate(self.tensors) if isinstance(t, _OnDevice)]
        decoded = decoder.decode([(self.tensors[j].data, self.tensors[j].orientation) for j in wanted])
        failed: set[int] = set()
        for j, pixels in zip(wanted, decoded):
            if pixels is None:
                outcome = _Outcome()
                _decode_into(outcome, self.records_ok[j], self.tensors[j].data, settings, on_device=False)
                if outcome.error is not None:
                    self.errors.append((self.records_ok[j], outcome.error))
                    failed.add(j)
                    continue
                pixels = outcome.pixels
            self.tensors[j] = pixels
        device = decoder.device
        keep = [j for j in range(len(self.tensors)) if j not in failed]
        self.tensors = [self.tensors[j].to(device, non_blocking=True) for j in keep]
        for name in ("records_ok", "digests", "file_stats", "thumbnails"):
            values = getattr(self, name)
            setattr(self, name, [values[j] for j in keep])


def _resolved(decoder: Any) -> Any:
    """The device decoder itself, whether given outright or as a lazy chooser (``.chosen()``)."""
    return decoder.chosen() if hasattr(decoder, "chosen") else decoder


def _work_on_chunk(records: Sequence[ImageRecord], settings: _DecodeSettings) -> list[_Outcome]:
    """Read and hash each record, ask ``lookup`` once about the digests, decode the rest (never raises)."""
    outcomes: list[_Outcome] = []
    contents: list[bytes | Image.Image | None] = []
    for record in records:
        data = None
        try:
            data, file_stat = read_image_data(record, settings.max_bytes)
            outcomes.append(_Outcome(digest=digest_of(data), file_stat=file_stat))
        except ImageError as exc:
            outcomes.append(_Outcome(error=str(exc)))
        except Exception as exc:  # a bug here must not end a long run; it is logged with its traceback
            log.warning("unexpected error reading '%s'", record.id, exc_info=True)
            outcomes.append(_Outcome(error=f"unexpected error ({type(exc).__name__}: {exc})"))
        contents.append(data)
    known: Mapping[str, Any] = {}
    if settings.lookup is not None:
        digests = [o.digest for o in outcomes if o.digest is not None]
        try:
            known = settings.lookup(digests) if digests else {}
        except Exception:  # the look-up only saves work; without it the images are decoded
            log.warning("looking up %d digests failed; decoding them", len(digests), exc_info=True)
    for record, outcome, data in zip(records, outcomes, contents):
        if data is None:
            continue
        if outcome.digest in known:
            outcome.known = known[outcome.digest]
            if settings.thumbnail_size:  # decoded for the thumbnail alone, so the report need not read it again
                _decode_into(outcome, record, data, settings, preprocess=False)
            continue
        _decode_into(outcome, record, data, settings)
    return outcomes


def _decode_into(outcome: _Outcome, record: ImageRecord, data: bytes | Image.Image, settings: _DecodeSettings,
                 preprocess: bool = True, on_device: bool = True) -> None:
    if (on_device and preprocess and settings.device_decoder is not None and not settings.thumbnail_size
            and isinstance(data, bytes) and data[:3] == b"\xff\xd8\xff"):  # only a JPEG makes the choice (it may
        # build the model), so a folder whose uncached files are all broken PNGs still needs none
        decoder = _resolved(settings.device_decoder)
        orientation = decoder.accepts(data) if decoder is not None else None
        if orientation is not None:
            outcome.pixels = _OnDevice(data, orientation)
            return
    try:
        image = decode_image(data, max_pixels=settings.max_pixels,
                             min_side=settings.min_side if preprocess else settings.thumbnail_size,
                             heif_thumbnails=settings.heif_thumbnails or not preprocess)  # (a gallery picture
        # may come from a HEIC's thumbnail either way: it is only shown)
    except Exception as exc:
        if preprocess:
            outcome.error = str(exc) if isinstance(exc, ImageError) else f"unexpected error ({type(exc).__name__}: {exc})"
            if not isinstance(exc, ImageError):
                log.warning("unexpected error decoding '%s'", record.id, exc_info=True)
        return
    if preprocess:
        try:
            outcome.pixels = settings.preprocess(image)
        except Exception as exc:
            log.warning("preprocessing failed for '%s'", record.id, exc_info=True)
            outcome.error = f"preprocessing failed ({type(exc).__name__}: {exc})"
            return
    if settings.thumbnail_size:
        try:
            outcome.thumbnail = thumbnail_jpeg(image, settings.thumbnail_size)
        except Exception as exc:  # a missing thumbnail costs the report a picture, never the image its row
            log.info("no thumbnail for '%s': %s", record.id, exc)


def _chunks(records: Iterable[ImageRecord], size: int) -> Iterator[list[ImageRecord]]:
    iterator = iter(records)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _in_order(
    records: Iterable[ImageRecord], settings: _DecodeSettings, num_workers: int, chunk: int, window: int
) -> Iterator[tuple[ImageRecord, _Outcome]]:
    """``(record, outcome)`` in input order, worked out by a thread pool, chunk by chunk, up to ``window`` ahead.

    Threads, not processes: PIL releases the GIL while decoding and resizing, and threads need no pickling
    and no start-up. Measured on 2 busy cores, 256 JPEGs of 500×375 through open_clip's ViT-B-32 transform,
    consumer standing in for a GPU (0.3 s per batch of 32, 2.4 s in all): sequential 5.2 s; threads 1 / 2 / 4:
    3.4 / 3.9 / 3.1 s; torch DataLoader worker processes 1 / 2: 3.9 / 4.6 s.
    """
    if num_workers == 0:
        for part in _chunks(records, chunk):
            yield from zip(part, _work_on_chunk(part, settings))
        return
    pool = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="vlmcls-decode")
    pending: deque[tuple[list[ImageRecord], Future]] = deque()
    ahead = max(1, -(-window // chunk))
    try:
        for part in _chunks(records, chunk):
            pending.append((part, pool.submit(_work_on_chunk, part, settings)))
            if len(pending) >= ahead:
                done, future = pending.popleft()
                yield from zip(done, future.result())
        while pending:
            done, future = pending.popleft()
            yield from zip(done, future.result())
    finally:  # also runs when the consumer stops early: drop queued work, wait for the running few
        pool.shutdown(wait=True, cancel_futures=True)


class _ChunkDecoder:
    """Map-style dataset for DataLoader worker processes: item ``i`` is the ``i``-th chunk of records, worked out.

    A chunk's pixels come back as one stacked tensor (one shared-memory segment), so passing images between
    processes costs one hand-over per chunk, not one per image.
    """

    def __init__(self, records: Sequence[ImageRecord], settings: _DecodeSettings, chunk: int):
        self.records, self.settings, self.chunk = records, settings, chunk

    def __len__(self) -> int:
        return -(-len(self.records) // self.chunk)

    def __getitem__(self, i: int):
        import torch

        outcomes = _work_on_chunk(self.records[i * self.chunk : (i + 1) * self.chunk], self.settings)
        decoded = [o for o in outcomes if o.pixels is not None]
        pixels = torch.stack([o.pixels for o in decoded]) if decoded else None  # [k, 3, H, W]
        for o in decoded:
            o.pixels = None
        return outcomes, pixels


def _in_order_processes(
    records: Sequence[ImageRecord], settings: _DecodeSettings, num_workers: int, chunk: int, window: int,
) -> Iterator[tuple[ImageRecord, _Outcome]]:
    """``(record, outcome)`` in input order, worked out by ``num_workers`` forked worker processes.

    Fork, so nothing is pickled on the way in (the records and the preprocessing are inherited) and CUDA is never
    touched in a worker. The work never raises; a worker that dies (a crashing decoder library) ends the run with a
    :class:`~vlmcls.errors.VlmclsError`, after every batch already yielded was stored by the consumer.
    """
    import multiprocessing

    from torch.utils.data import DataLoader

    from ..errors import VlmclsError

    # prefetch_factor counts chunks per worker: keep about `window` records in flight overall
    per_worker = max(2, -(-window // (chunk * num_workers)))
    loader = DataLoader(
        _ChunkDecoder(records, settings, chunk), batch_size=None, shuffle=False, num_workers=num_workers,
        multiprocessing_context=multiprocessing.get_context("fork"), prefetch_factor=per_worker,
    )
    iterator = iter(loader)
    try:
        for i in range(len(loader)):
            try:
                outcomes, pixels = next(iterator)
            except RuntimeError as exc:  # DataLoader's "worker (pid …) exited unexpectedly"
                raise VlmclsError(f"a decoding worker process failed ({exc}); try --worker-type thread") from exc
            decoded = 0
            for j, outcome in enumerate(outcomes):
                if outcome.error is None and outcome.known is None:
                    outcome.pixels = pixels[decoded]
                    decoded += 1
                yield records[i * chunk + j], outcome
    finally:  # also when the consumer stops early: end the workers now, not at garbage collection
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
