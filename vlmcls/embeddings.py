"""Batched encoding with a content-addressed store, so nothing is encoded twice.

This is the one place features are L2-normalised. Image features are keyed by model × weights × preprocessing ×
file-content hash; text features by model × weights × text. Image features are written batch by batch, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from .cache import Store, cache_key, known_digest, stat_key
from .errors import ImageError
from .images import ImageRecord, choose_worker_type, content_key, default_decode_workers, iter_decoded_batches
from .models import ModelBackend

__all__ = ["l2_normalize", "Encoder", "ImageFeatures"]

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]  # (done, total)


def l2_normalize(feats: torch.Tensor) -> torch.Tensor:
    """Unit-length rows (the only normalisation in vlmcls); half precision is promoted to float32."""
    if feats.dtype not in (torch.float32, torch.float64):
        feats = feats.float()
    return torch.nn.functional.normalize(feats, dim=-1)


@dataclass
class ImageFeatures:
    """Features for the images that decoded, and the reasons for those that did not."""

    records: list[ImageRecord]  # the images with features, in input order
    feats: torch.Tensor  # [N, D], unit rows, aligned with records
    errors: list[tuple[ImageRecord, str]] = field(default_factory=list)  # (image, reason)
    encoded: int = 0  # how many were encoded now (the rest came from the store)


class Encoder:
    """Encodes images and texts through a model, reading and writing the embedding store."""

    def __init__(self, model: ModelBackend, store: Store | None = None, uint8_transfer: bool | None = None):
        """``uint8_transfer``: decode workers hand over uint8 pixels and the model side converts them
        (:meth:`ModelBackend.uint8_preprocess`); default: only when the model is on an accelerator, where that
        traffic bounds throughput. The features are the same either way."""
        self.model = model
        self.store = store
        self.uint8_transfer = uint8_transfer

    # -- texts --------------------------------------------------------------------------------------
    def _text_key(self, text: str) -> str:
        return cache_key("text", text=text, **self.model.text_key_parts)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """texts (T) -> unit features [T, D]; each distinct text is encoded once, ever."""
        unique = list(dict.fromkeys(texts))
        keys = {t: self._text_key(t) for t in unique}
        found = self.store.get_arrays(keys.values()) if self.store is not None else {}
        missing = [t for t in unique if keys[t] not in found]
        by_text: dict[str, np.ndarray] = {t: found[keys[t]] for t in unique if keys[t] in found}
        if missing:
            log.info("encoding %d new texts (%d cached)", len(missing), len(unique) - len(missing))
            new = l2_normalize(self.model.encode_texts(missing, batch_size=batch_size)).numpy()  # [M, D]
            fresh = {t: new[i] for i, t in enumerate(missing)}
            by_text.update(fresh)
            if self.store is not None:
                self.store.set_arrays({keys[t]: v for t, v in fresh.items()})
        return torch.from_numpy(np.stack([by_text[t] for t in texts]))  # [T, D]

    # -- images -------------------------------------------------------------------------------------
    def _worker_preprocess(self):
        wanted = self.uint8_transfer if self.uint8_transfer is not None else self.model.device.type != "cpu"
        return (self.model.uint8_preprocess() if wanted else None) or self.model.preprocess

    def _image_key(self, digest: str) -> str:
        return cache_key("image", content=digest, **self.model.image_key_parts)

    def encode_images(
        self,
        records: Sequence[ImageRecord],
        batch_size: int = 32,
        num_workers: int | None = None,
        progress: ProgressFn | None = None,
        worker_type: str = "auto",
    ) -> ImageFeatures:
        """Features for every image that decodes; error rows for the rest. Cached images are not decoded.

        ``worker_type``: ``thread``, ``process`` or ``auto`` (see :func:`vlmcls.images.choose_worker_type`).
        """
        total = len(records)
        keys: dict[int, str] = {}
        errors: dict[int, str] = {}
        hash_workers = default_decode_workers() if num_workers is None else num_workers
        for i, digest in enumerate(_content_keys(records, hash_workers, self.store)):
            if isinstance(digest, Exception):
                errors[i] = _reason(digest)
            else:
                keys[i] = self._image_key(digest)
        found = self.store.get_arrays(keys.values()) if self.store is not None else {}
        feats: dict[int, np.ndarray] = {i: found[k] for i, k in keys.items() if k in found}
        todo = [i for i in keys if i not in feats]
        done = len(feats) + len(errors)
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
        preprocess = self._worker_preprocess() if todo_records else None  # all cached: the model is not needed
        batches = iter_decoded_batches(todo_records, preprocess, batch_size, num_workers=num_workers,
                                       worker_type=kind)
        for batch in batches:
            for rec, reason in batch.errors:
                errors[position[id(rec)]] = reason
            if batch.records_ok:
                out = l2_normalize(self.model.encode_images(batch.pixels)).numpy()  # [B, D]
                rows = {position[id(rec)]: out[j] for j, rec in enumerate(batch.records_ok)}
                feats.update(rows)
                encoded += len(rows)
                if self.store is not None:
                    self.store.set_arrays({keys[i]: v for i, v in rows.items()})
            done += len(batch.records_ok) + len(batch.errors)
            if progress:
                progress(done, total)
        ok = sorted(feats)
        dim = next(iter(feats.values())).shape[-1] if feats else 0
        stacked = torch.from_numpy(np.stack([feats[i] for i in ok])) if ok else torch.empty(0, dim)
        return ImageFeatures(
            records=[records[i] for i in ok],
            feats=stacked,
            errors=[(records[i], errors[i]) for i in sorted(errors)],
            encoded=encoded,
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    return str(exc) or type(exc).__name__


def _content_key_or_error(record: ImageRecord) -> str | Exception:
    try:
        return content_key(record)
    except (OSError, ImageError) as exc:
        return exc


def _content_keys(
    records: Sequence[ImageRecord], num_workers: int, store: Store | None = None
) -> list[str | Exception]:
    """Each record's content hash (or the error reading it), in order.

    A file is read only when neither this process (:func:`~vlmcls.cache.known_digest`) nor the store (a digest
    kept under the file's :func:`~vlmcls.cache.stat_key`) has seen it unchanged, so a re-run in a new process
    does not re-read a folder of large photos. What must be read is hashed on threads: hashlib releases the GIL.
    """
    stats = [_stat(r.path) if r.fetch is None and r.path is not None else None for r in records]  # one stat each
    out: list[str | Exception | None] = [
        known_digest(r.path, st) if st is not None else None for r, st in zip(records, stats)
    ]
    stat_keys: dict[int, str] = {}
    if store is not None:
        for i, (r, st) in enumerate(zip(records, stats)):
            if out[i] is None and st is not None:
                stat_keys[i] = stat_key(r.path, st)
        kept = store.get_jsons(stat_keys.values())
        for i, key in stat_keys.items():
            if isinstance(kept.get(key), str):
                out[i] = kept[key]
    todo = [i for i, digest in enumerate(out) if digest is None]
    if num_workers <= 1 or len(todo) < 64:
        for i in todo:
            out[i] = _content_key_or_error(records[i])
    else:
        with ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="vlmcls-hash") as pool:
            for i, digest in zip(todo, pool.map(_content_key_or_error, [records[i] for i in todo], chunksize=16)):
                out[i] = digest
    if store is not None:
        fresh = {stat_keys[i]: out[i] for i in todo if i in stat_keys and isinstance(out[i], str)}
        if fresh:
            store.set_jsons(fresh)
    return out  # type: ignore[return-value]


def _stat(path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:  # reported with its reason when the file is hashed
        return None
