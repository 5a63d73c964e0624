"""Batched encoding with a content-addressed store, so nothing is encoded twice.

This is the one place features are L2-normalised. Image features are keyed by model × weights × preprocessing ×
file-content hash; text features by model × weights × text. Image features are written batch by batch, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .backend import ModelBackend, preprocess_input_side
from .cache import Store, cache_key, cache_key_for, stat_key
from .errors import CacheError
from .gcpause import paused_gc
from .images import ImageRecord, choose_worker_type, default_decode_workers, iter_decoded_batches

if TYPE_CHECKING:  # features are numpy arrays until a caller asks for tensors: a cached run imports no torch
    import torch

__all__ = ["l2_normalize", "Encoder", "ImageFeatures"]

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]  # (done, total)

# JPEGs are decoded at reduced size (libjpeg's DCT scaling) down to a short side of at least this many times the
# model's input side, then resized as before. Measured with bench/bench_photos.py on the demo world at 12 MP:
# see the README's "Large photos" note for the label agreement and feature cosines behind the choice.
REDUCED_DECODING_MARGIN = 1.0


def l2_normalize(feats: torch.Tensor) -> torch.Tensor:
    """Unit-length rows (the only normalisation in vlmcls); half precision is promoted to float32."""
    import torch

    if feats.dtype not in (torch.float32, torch.float64):
        feats = feats.float()
    return torch.nn.functional.normalize(feats, dim=-1)


@dataclass
class ImageFeatures:
    """Features for the images that decoded, and the reasons for those that did not."""

    records: list[ImageRecord]  # the images with features, in input order
    feats: torch.Tensor  # [N, D], unit rows, aligned with records (a numpy array when asked for as_numpy)
    errors: list[tuple[ImageRecord, str]] = field(default_factory=list)  # (image, reason)
    encoded: int = 0  # how many were encoded now (the rest came from the store)
    thumbnails: dict[str, bytes] = field(default_factory=dict)  # image id -> small JPEG, when the encoder keeps them

    def as_numpy(self) -> "ImageFeatures":
        return self if isinstance(self.feats, np.ndarray) else replace(self, feats=to_numpy(self.feats))

    def as_torch(self) -> "ImageFeatures":
        return replace(self, feats=to_torch(self.feats)) if isinstance(self.feats, np.ndarray) else self


def to_numpy(array) -> np.ndarray:
    """A tensor as a numpy array (on the CPU; shared memory where it can); arrays pass through."""
    return array if isinstance(array, np.ndarray) else array.detach().cpu().numpy()


def to_torch(array):
    """A numpy array as a tensor sharing its memory (imports torch); tensors and None pass through."""
    if isinstance(array, np.ndarray):
        import torch

        return torch.from_numpy(array)
    return array


class Encoder:
    """Encodes images and texts through a model, reading and writing the embedding store."""

    def __init__(self, model: ModelBackend, store: Store | None = None, uint8_transfer: bool | None = None,
                 reduced_decoding: bool = True, thumbnail_size: int | None = None):
        """``uint8_transfer``: decode workers hand over uint8 pixels and the model side converts them, one batch at a
        time (:meth:`ModelBackend.uint8_preprocess`); default: whenever the model's preprocessing splits that way.
        It moves a quarter of the bytes, and on a CPU it costs less too (64-px images on 2 cores: 0.11 ms per image
        on the workers instead of 0.36). The features are the same either way.
        ``reduced_decoding``: decode large JPEGs at reduced size (see :data:`REDUCED_DECODING_MARGIN`); False
        decodes every pixel. ``thumbnail_size``: keep a small JPEG of each image decoded
        (:attr:`ImageFeatures.thumbnails`), for a report that then need not read the files again."""
        self.model = model
        self.store = store
        self.uint8_transfer = uint8_transfer
        self.reduced_decoding = reduced_decoding
        self.thumbnail_size = thumbnail_size
        self._feature_shape: tuple[int] | None = None

    def feature_shape(self) -> tuple[int]:
        """(D,): the shape of one feature, so a cached array of another shape is dropped as corrupted (a lazy
        model knows D from its recorded identity, without being built)."""
        if self._feature_shape is None:
            self._feature_shape = (int(self.model.feature_dim),)
        return self._feature_shape

    # -- texts --------------------------------------------------------------------------------------
    def _text_key(self, text: str) -> str:
        return cache_key("text", text=text, **self.model.text_key_parts)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """texts (T) -> unit features [T, D]; each distinct text is encoded once, ever."""
        return to_torch(self.text_array(texts, batch_size))

    def text_array(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """:meth:`encode_texts` as a numpy array: when every text is in the store, no model and no torch."""
        unique = list(dict.fromkeys(texts))
        keys = {t: self._text_key(t) for t in unique}
        found = self.store.get_arrays(keys.values(), self.feature_shape()) if self.store is not None else {}
        missing = [t for t in unique if keys[t] not in found]
        by_text: dict[str, np.ndarray] = {t: found[keys[t]] for t in unique if keys[t] in found}
        if missing:
            log.info("encoding %d new texts (%d cached)", len(missing), len(unique) - len(missing))
            new = l2_normalize(self.model.encode_texts(missing, batch_size=batch_size)).numpy()  # [M, D]
            fresh = {t: new[i] for i, t in enumerate(missing)}
            by_text.update(fresh)
            if self.store is not None:
                self.store.set_arrays({keys[t]: v for t, v in fresh.items()})
        if not texts:
            return np.zeros((0, self.feature_shape()[0]), dtype=np.float32)
        return np.stack([by_text[t] for t in texts])  # [T, D]

    # -- images -------------------------------------------------------------------------------------
    def _worker_preprocess(self):
        wanted = self.uint8_transfer is not False
        return (self.model.uint8_preprocess() if wanted else None) or self.model.preprocess

    def image_key_parts(self) -> dict:
        """What a feature key holds besides the content: model × weights × preprocessing × decoding (the Ray
        engine's feature store is keyed by the same parts)."""
        parts, min_side = dict(self.model.image_key_parts), self.decode_min_side()
        if min_side is not None:
            # reduced-size decoding changes the pixels a little: its features are kept apart from full decoding's
            parts["jpeg_min_side"] = min_side
        return parts

    def _image_key_function(self) -> Callable[[str], str]:
        """content digest -> feature key (model × weights × preprocessing × decoding × content)."""
        return cache_key_for("image", "content", **self.image_key_parts())

    def decode_min_side(self) -> int | None:
        """``min_side`` for decoding (:func:`vlmcls.decoding.decode_image`): the short side JPEGs are decoded to
        at least, REDUCED_DECODING_MARGIN × the model's input side; None when every pixel is decoded."""
        side = model_input_side(self.model) if self.reduced_decoding else None
        return int(side * REDUCED_DECODING_MARGIN) if side else None

    def encode_images(
        self,
        records: Sequence[ImageRecord],
        batch_size: int = 32,
        num_workers: int | None = None,
        progress: ProgressFn | None = None,
        worker_type: str = "auto",
        as_numpy: bool = False,
    ) -> ImageFeatures:
        """Features for every image that decodes; error rows for the rest. Cached images are not read.
        ``as_numpy``: the features as a numpy array (then a run whose images are all in the store imports no torch).

        A file whose digest the store keeps under its unchanged stat (:func:`~vlmcls.cache.stat_key`) and whose
        features are stored is not opened at all; every other file is read once, and its digest and pixels come
        from those same bytes. ``worker_type``: ``thread``, ``process`` or ``auto`` (see
        :func:`vlmcls.images.choose_worker_type`).
        """
        total = len(records)
        errors: dict[int, str] = {}
        thumbnails: dict[str, bytes] = {}
        image_key = self._image_key_function()  # once per run: a re-run of 48,000 images is all look-ups
        keys = self._known_keys(records, image_key)
        found = self.store.get_arrays(keys.values(), self.feature_shape()) if keys and self.store is not None else {}
        feats: dict[int, np.ndarray] = {i: found[k] for i, k in keys.items() if k in found}
        todo = [i for i in range(total) if i not in feats]
        done = len(feats)
        if progress:
            progress(done, total)
        position = {id(records[i]): i for i in todo}
        encoded = 0
        todo_records = [records[i] for i in todo]
        kind = choose_worker_type(worker_type, todo_records)
        if num_workers is None:
            num_workers = default_decode_workers(kind)
        if todo_records:
            log.info("decoding %d images on %d %s(s)", len(todo_records), num_workers, kind)
        preprocess = None  # all cached: the model is not needed
        if todo_records:  # threads choose on the first image that decodes: undecodable files alone need no model
            preprocess = self._worker_preprocess() if kind == "process" else _FirstCall(self._worker_preprocess)
        batches = () if not todo_records else iter_decoded_batches(  # all cached: nothing to decode, no torch
            todo_records, preprocess, batch_size, num_workers=num_workers, worker_type=kind,
            min_side=self.decode_min_side(), thumbnail_size=self.thumbnail_size,
            lookup=(lambda digests: self._stored_features(digests, image_key)) if self.store is not None else None,
        )
        writer = _StoreWriter(self.store, image_key) if self.store is not None and todo_records else None
        try:
            for batch in batches:
                for rec, reason in batch.errors:
                    errors[position[id(rec)]] = reason
                for rec, _digest, _stat, value, thumbnail in batch.known:
                    feats[position[id(rec)]] = value
                    if thumbnail is not None:
                        thumbnails[rec.id] = thumbnail
                out = None
                if batch.records_ok:
                    out = l2_normalize(self.model.encode_images(batch.pixels)).numpy()  # [B, D]
                    for j, rec in enumerate(batch.records_ok):
                        feats[position[id(rec)]] = out[j]
                        if batch.thumbnails[j] is not None:
                            thumbnails[rec.id] = batch.thumbnails[j]
                    encoded += len(batch.records_ok)
                if writer is not None:
                    writer.put(batch, out)
                done += len(batch.records_ok) + len(batch.errors) + len(batch.known)
                if progress:
                    progress(done, total)
        except BaseException:
            if writer is not None:  # what was encoded is still stored (an interrupted run resumes from there)
                writer.close(raise_error=False)
            raise
        if writer is not None:
            writer.close()
        ok = sorted(feats)
        dim = next(iter(feats.values())).shape[-1] if feats else 0
        stacked = np.stack([feats[i] for i in ok]) if ok else np.zeros((0, dim), dtype=np.float32)
        result = ImageFeatures(
            records=[records[i] for i in ok],
            feats=stacked,
            errors=[(records[i], errors[i]) for i in sorted(errors)],
            encoded=encoded,
            thumbnails=thumbnails,
        )
        return result if as_numpy else result.as_torch()

    def _known_keys(self, records: Sequence[ImageRecord], image_key: Callable[[str], str]) -> dict[int, str]:
        """Feature keys of the files whose digest the store keeps under their unchanged stat, so they need not be
        read."""
        return {i: image_key(digest) for i, digest in self.known_digests(records).items()}

    @paused_gc()
    def known_digests(self, records: Sequence[ImageRecord]) -> dict[int, str]:
        """Content digests of the files the store knows under their unchanged stat (one query per few hundred
        files), by position in ``records``; nothing is read but the files' stat."""
        if self.store is None:
            return {}
        stat_keys: dict[int, str] = {}
        for i, record in enumerate(records):
            if record.fetch is None and record.path is not None:
                key = stat_key(record.path)
                if key is not None:
                    stat_keys[i] = key
        kept = self.store.get_jsons(stat_keys.values())
        return {i: kept[k] for i, k in stat_keys.items() if isinstance(kept.get(k), str)}

    def _stored_features(self, digests: list[str], image_key: Callable[[str], str] | None = None
                         ) -> dict[str, np.ndarray]:
        """For decode workers: the stored features of these contents (a renamed or touched file), one query.
        ``image_key``: the run's :meth:`_image_key_function`, made once per run rather than once per chunk."""
        image_key = image_key or self._image_key_function()
        keys = {digest: image_key(digest) for digest in digests}
        found = self.store.get_arrays(keys.values(), self.feature_shape())
        return {digest: found[key] for digest, key in keys.items() if key in found}


class _StoreWriter:
    """Stores each batch's new features and the digests of the files read, on a thread of its own, in batch order,
    one transaction per batch (:meth:`Store.set_many`), so the model never waits on SQLite: its commits and
    checkpoints wait on the disk, and the keys and rows are Python work. At most ``DEPTH`` batches wait."""

    DEPTH = 2
    STALL_S = 600.0  # the longest wait for the writer to take a batch or finish, before the run gives up

    def __init__(self, store: Store, image_key: Callable[[str], str]):
        self._store, self._image_key = store, image_key
        self._queue: queue.Queue = queue.Queue(self.DEPTH)
        self._error: BaseException | None = None
        self._raised = False  # the error went to the run already
        self._thread = threading.Thread(target=self._run, name="vlmcls-store-writer", daemon=True)
        self._thread.start()

    def put(self, batch, out: np.ndarray | None) -> None:
        """Hands over one batch (``out``: the features of ``batch.records_ok``; its pixels are not kept); raises the
        writer's error, if any."""
        self._raise_error()
        if not self._offer((batch.records_ok, batch.digests, batch.file_stats, batch.known, out)):
            self._raise_error()
            raise CacheError(f"the cache in '{self._store.directory}' took no batch for {self.STALL_S:.0f} s.")

    def close(self, raise_error: bool = True) -> None:
        """Waits until every batch handed over is stored (bounded); then raises the writer's error, if any."""
        if self._offer(None):
            self._thread.join(self.STALL_S)
        if self._thread.is_alive():
            message = f"the cache in '{self._store.directory}' did not finish writing within {self.STALL_S:.0f} s."
            if raise_error:
                raise CacheError(message)
            log.warning(message)
        elif raise_error:
            self._raise_error()
        elif self._error is not None and not self._raised:
            log.warning("storing the last batches in the cache failed: %s", self._error)

    def _offer(self, item) -> bool:
        deadline = time.monotonic() + self.STALL_S
        while self._thread.is_alive() and time.monotonic() < deadline:
            try:
                self._queue.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def _raise_error(self) -> None:
        if self._error is not None:
            self._raised = True
            raise self._error

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(*item)
                except BaseException as exc:  # handed to the run at its next batch, or at the end
                    self._error = exc

    def _write(self, records, digests_read, file_stats, known, out: np.ndarray | None) -> None:
        digests: dict[str, str] = {}  # stat key -> digest, for the next process
        for rec, digest, file_stat, _value, _thumbnail in known:
            digests.update(_stat_digest(rec, file_stat, digest))
        new: dict[str, np.ndarray] = {}
        for j, rec in enumerate(records):
            new[self._image_key(digests_read[j])] = out[j]
            digests.update(_stat_digest(rec, file_stats[j], digests_read[j]))
        if new or digests:
            self._store.set_many(arrays=new, jsons=digests)  # one transaction per batch


class _FirstCall:
    """A preprocessing chosen on its first call (choosing asks the model's device, which builds a lazy model and
    imports torch); a run whose only uncached files fail to decode never needs it."""

    def __init__(self, choose: Callable[[], Callable]):
        self._choose, self._chosen, self._lock = choose, None, threading.Lock()

    def __call__(self, image):
        if self._chosen is None:
            with self._lock:
                if self._chosen is None:
                    self._chosen = self._choose()
        return self._chosen(image)


def model_input_side(model: ModelBackend) -> int | None:
    """The short side the model's preprocessing resizes images to (224 for ViT-B/32), or None if unknown."""
    side = getattr(model, "input_side", None)
    if side:
        return int(side)
    return preprocess_input_side(getattr(model, "preprocess", None))  # a backend that is not a ModelBackend


def _stat_digest(record: ImageRecord, file_stat: os.stat_result | None, digest: str) -> dict[str, str]:
    """{stat key of the file as it was read: digest of the bytes read}, so a later run need not read it again."""
    if file_stat is None or record.path is None:
        return {}
    key = stat_key(record.path, file_stat)
    return {key: digest} if key is not None else {}

