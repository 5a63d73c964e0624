"""Batched encoding with a content-addressed store, so nothing is encoded twice.

This is the one place features are L2-normalised. Image features are keyed by model × weights × preprocessing ×
file-content hash; text features by model × weights × text. Image features are written batch by batch, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
import operator
import os
import threading
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .backend import ModelBackend, preprocess_input_side
from .store_writer import _StoreWriter
from .store import Store, cache_key, cache_key_for, stat_key_of
from ..errors import CacheError
from ..gcpause import paused_gc
from .images import ImageRecord, choose_worker_type, default_decode_workers, iter_decoded_batches
from ..sources.snapshot import FileStats, Snapshot, save_snapshot, snapshot_key, stat_rows, stat_tuple

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
                 reduced_decoding: bool = True, thumbnail_size: int | None = None, heic_thumbnails: bool = False):
        """``uint8_transfer``: decode workers hand over uint8 pixels and the model side converts them, one batch at a
        time (:meth:`ModelBackend.uint8_preprocess`); default: whenever the model's preprocessing splits that way.
        It moves a quarter of the bytes, and on a CPU it costs less too (64-px images on 2 cores: 0.11 ms per image
        on the workers instead of 0.36). The features are the same either way.
        ``reduced_decoding``: decode large JPEGs at reduced size (see :data:`REDUCED_DECODING_MARGIN`); False
        decodes every pixel. ``heic_thumbnails``: with reduced decoding, a HEIC/HEIF photo decodes its embedded
        thumbnail when one has both sides ≥ the model's input (an iPhone's 320×240, ~50× less decoding; a
        separately compressed picture: ViT-B/32 features within cosine 0.9989 of every pixel's, and one near-tie
        label in 96 flipped on the 12 MP demo world, so it is asked for, not the default). ``thumbnail_size``: keep
        a small JPEG of each image decoded (:attr:`ImageFeatures.thumbnails`), for a report that then need not read
        the files again."""
        self.model = model
        self.store = store
        self.uint8_transfer = uint8_transfer
        self.reduced_decoding = reduced_decoding
        self.heic_thumbnails = heic_thumbnails
        self.thumbnail_size = thumbnail_size
        # JPEGs decoded on the model's device (vlmcls.encode.device_decode): None = when the model runs on CUDA
        self.device_decoding: bool | None = None
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

    def _device_decoder(self):
        """The device JPEG decoder for this run, or None: asked for (``device_decoding``) or the model on CUDA, and
        the workers handing over uint8 pixels from preprocessing with tensor twins."""
        wanted = self.device_decoding if self.device_decoding is not None else self.model.device.type == "cuda"
        if not wanted:
            return None
        uint8 = self.model.uint8_preprocess()
        if uint8 is None or self.uint8_transfer is False:  # the workers hand over float pixels
            log.info("device decoding off: the decode workers do not hand over uint8 pixels for this model")
            return None
        from .device_decode import DeviceJpegDecoder

        return DeviceJpegDecoder.for_preprocess(uint8, self.model.device)

    def image_key_parts(self) -> dict:
        """What a feature key holds besides the content: model × weights × preprocessing × decoding (the Ray
        engine's feature store is keyed by the same parts)."""
        parts, min_side = dict(self.model.image_key_parts), self.decode_min_side()
        if min_side is not None:
            # reduced-size decoding changes the pixels a little: its features are kept apart from full decoding's
            parts["jpeg_min_side"] = min_side
            if self.heic_thumbnails:  # a HEIC's embedded thumbnail (vlmcls.encode.decoding): other pixels, other features
                parts["heic_thumbnails"] = True
        return parts

    def _image_key_function(self) -> Callable[[str], str]:
        """content digest -> feature key (model × weights × preprocessing × decoding × content)."""
        return cache_key_for("image", "content", **self.image_key_parts())

    def decode_min_side(self) -> int | None:
        """``min_side`` for decoding (:func:`vlmcls.encode.decoding.decode_image`): the short side JPEGs are decoded to
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

        A file that the folder's snapshot holds under its unchanged stat (:mod:`vlmcls.sources.snapshot`: one read for
        the whole folder), or whose digest the store keeps under its unchanged stat (:func:`~vlmcls.encode.store.stat_key`)
        and whose features are stored, is not opened at all; every other file is read once, and its digest and
        pixels come from those same bytes. A run that learnt something new writes the folder's next snapshot. ``worker_type``: ``thread``, ``process`` or ``auto`` (see
        :func:`vlmcls.encode.images.choose_worker_type`).
        """
        total = len(records)
        errors: dict[int, str] = {}
        thumbnails: dict[str, bytes] = {}
        image_key = self._image_key_function()  # once per run: a re-run of 48,000 images is all look-ups
        files = FileStats.of(_file_texts(records)) if self.store is not None else None
        snap = self._snapshot_hits(files)  # an unchanged file's feature straight from the folder's snapshot
        # the other files: digests kept under their unchanged stat, then features kept by digest
        known = self._digests_by_stat(files, np.flatnonzero(~snap.same).tolist()) if files is not None else {}
        keys = {i: image_key(digest) for i, (digest, _) in known.items()}
        found = self.store.get_arrays(keys.values(), self.feature_shape()) if keys else {}
        feats: dict[int, np.ndarray] = {i: found[k] for i, k in keys.items() if k in found}
        # what the next snapshot needs of each file it lacks: (digest, stat when the digest was taken)
        learnt: dict[int, tuple[str, tuple[int, int, int, int]]] = {i: known[i] for i in feats}
        have = np.zeros(total, bool)
        have[snap.positions] = True
        have[list(feats)] = True
        todo = np.flatnonzero(~have).tolist()
        done = total - len(todo)
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
        preprocess = device_decoder = None  # all cached: the model is not needed
        if todo_records:  # threads choose on the first image that decodes: undecodable files alone need no model
            preprocess = self._worker_preprocess() if kind == "process" else _FirstCall(self._worker_preprocess)
            device_decoder = None if kind == "process" or self.device_decoding is False else _Chosen(self._device_decoder)
        batches = () if not todo_records else iter_decoded_batches(  # all cached: nothing to decode, no torch
            todo_records, preprocess, batch_size, num_workers=num_workers, worker_type=kind,
            min_side=self.decode_min_side(), heif_thumbnails=self.heic_thumbnails,
            thumbnail_size=self.thumbnail_size, lookup=(lambda digests: self._stored_features(digests, image_key)) if self.store is not None else None,
            device_decoder=device_decoder,
        )
        writer = _StoreWriter(self.store, image_key) if self.store is not None and todo_records else None
        try:
            for batch in batches:
                for rec, reason in batch.errors:
                    errors[position[id(rec)]] = reason
                for rec, digest, file_stat, value, thumbnail in batch.known:
                    i = position[id(rec)]
                    feats[i] = value
                    if file_stat is not None:
                        learnt[i] = (digest, stat_tuple(file_stat))
                    if thumbnail is not None:
                        thumbnails[rec.id] = thumbnail
                out = None
                if batch.records_ok:
                    out = l2_normalize(self.model.encode_images(batch.pixels)).numpy()  # [B, D]
                    for j, rec in enumerate(batch.records_ok):
                        i = position[id(rec)]
                        feats[i] = out[j]
                        if self.store is not None and batch.file_stats[j] is not None:
                            learnt[i] = (batch.digests[j], stat_tuple(batch.file_stats[j]))
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
        if files is not None and files.folder is not None:
            self._save_snapshot(files, snap, feats, learnt)
        ok, stacked = _merge_features(snap.positions, snap.feats, feats)
        result = ImageFeatures(
            records=list(records) if len(ok) == total else [records[i] for i in ok.tolist()],
            feats=stacked,
            errors=[(records[i], errors[i]) for i in sorted(errors)],
            encoded=encoded,
            thumbnails=thumbnails,
        )
        return result if as_numpy else result.as_torch()

    # -- the folder snapshot (vlmcls.sources.snapshot) ------------------------------------------------------------
    def _snapshot_key(self, files: FileStats) -> str:
        return snapshot_key(files.folder, self.image_key_parts())

    def _snapshot_hits(self, files: FileStats | None) -> "_SnapshotHits":
        """The files whose stat the folder's snapshot holds unchanged, with their features."""
        count = len(files.positions) if files is not None else 0
        none = _SnapshotHits(None, np.zeros(0, np.int64), None, np.zeros(count, bool), np.full(count, -1))
        if files is None or files.folder is None:
            return none
        key = self._snapshot_key(files)
        raw = self.store.get_bytes(key)
        if raw is None:
            return none
        try:
            snapshot = Snapshot.from_bytes(raw, self.feature_shape()[0])
        except (ValueError, UnicodeDecodeError) as exc:  # damaged: its files are looked up one by one
            self.store.drop(key, f"its folder snapshot does not parse ({exc})")
            return none
        same, rows = snapshot.match(files)
        taken = rows[same]
        whole = len(taken) == len(snapshot.names) and np.array_equal(taken, np.arange(len(taken)))
        feats = snapshot.feats if whole else snapshot.feats[taken]  # [H, D] (read-only when whole)
        return _SnapshotHits(snapshot, np.asarray(files.positions, dtype=np.int64)[same], feats, same, rows)

    def _save_snapshot(self, files: FileStats, snap: "_SnapshotHits", feats: dict[int, np.ndarray],
                       learnt: dict[int, tuple[str, tuple[int, int, int, int]]]) -> None:
        """A new snapshot of the folder when this run learnt files its snapshot lacks (new or changed) or the
        snapshot holds files this run did not find unchanged; never fails the run."""
        fresh = [f for f, i in enumerate(files.positions) if i in learnt and i in feats] if learnt else []
        try:
            # files of the folder this run did not list (a list file naming part of it) keep their rows while
            # their stat holds, so runs alternating between part of a folder and all of it both re-run from it
            carried = _unlisted_unchanged(files.folder, snap)
            kept = len(snap.positions) + len(carried)
            if not fresh and (snap.snapshot is None or kept == len(snap.snapshot.names)):
                return  # nothing to keep, or nothing new: the snapshot stands
            snapshot = _next_snapshot(files, snap, fresh, feats, learnt, carried)
            if snapshot is not None:
                save_snapshot(self.store, self._snapshot_key(files), snapshot)
        except (CacheError, OSError, ValueError) as exc:  # a snapshot only saves time; the run has its features
            log.warning("could not keep the folder snapshot (%s); the next run looks files up one by one", exc)

    @paused_gc()
    def _digests_by_stat(self, files: FileStats, which: Sequence[int]) -> dict[int, tuple[str, tuple[int, int, int, int]]]:
        """{position: (digest, stat)} for the files ``which`` (indices into ``files``) whose digest the store keeps
        under their unchanged stat (:func:`~vlmcls.encode.store.stat_key`), in bulk queries."""
        stat_keys: dict[int, tuple[str, tuple[int, int, int, int]]] = {}
        for f in which:
            stat = files.fields[f]
            key = stat_key_of(files.texts[f], stat)
            if key is not None:
                stat_keys[files.positions[f]] = (key, stat)
        kept = self.store.get_jsons(key for key, _ in stat_keys.values()) if stat_keys else {}
        return {i: (kept[key], stat) for i, (key, stat) in stat_keys.items() if isinstance(kept.get(key), str)}

    def known_digests(self, records: Sequence[ImageRecord]) -> dict[int, str]:
        """Content digests of the files the store knows under their unchanged stat (one query per few hundred
        files), by position in ``records``; nothing is read but the files' stat."""
        if self.store is None:
            return {}
        files = FileStats.of(_file_texts(records))
        return {i: digest for i, (digest, _) in self._digests_by_stat(files, range(len(files.positions))).items()}

    def _stored_features(self, digests: list[str], image_key: Callable[[str], str] | None = None
                         ) -> dict[str, np.ndarray]:
        """For decode workers: the stored features of these contents (a renamed or touched file), one query.
        ``image_key``: the run's :meth:`_image_key_function`, made once per run rather than once per chunk."""
        image_key = image_key or self._image_key_function()
        keys = {digest: image_key(digest) for digest in digests}
        found = self.store.get_arrays(keys.values(), self.feature_shape())
        return {digest: found[key] for digest, key in keys.items() if key in found}


class _Chosen:
    """A value worked out on first use, once, whichever thread asks first (choosing the preprocessing or the device
    decoder asks the model's device, which builds a lazy model and imports torch)."""

    def __init__(self, choose: Callable[[], Any]):
        self._choose, self._done, self._value, self._lock = choose, False, None, threading.Lock()

    def chosen(self) -> Any:
        if not self._done:
            with self._lock:
                if not self._done:
                    self._value, self._done = self._choose(), True
        return self._value


class _FirstCall(_Chosen):
    """A preprocessing chosen on its first call: a run whose only uncached files fail to decode never needs it."""

    def __call__(self, image):
        return self.chosen()(image)


def model_input_side(model: ModelBackend) -> int | None:
    """The short side the model's preprocessing resizes images to (224 for ViT-B/32), or None if unknown."""
    side = getattr(model, "input_side", None)
    if side:
        return int(side)
    return preprocess_input_side(getattr(model, "preprocess", None))  # a backend that is not a ModelBackend



def _file_texts(records: Sequence[ImageRecord]) -> list[str | None]:
    """Each record's file as a string (no Path built), or None when it is no file on disk (a dataset row)."""
    texts = list(map(_PATH_TEXT, records))
    fetches = list(map(_FETCH, records))
    if fetches.count(None) == len(fetches):  # files only (C loops)
        return texts
    return [text if fetch is None else None for text, fetch in zip(texts, fetches)]


_PATH_TEXT, _FETCH = operator.attrgetter("path_text"), operator.attrgetter("fetch")


@dataclass
class _SnapshotHits:
    """What a folder snapshot gave a run: ``positions`` [H] (in the records) and ``feats`` [H, D] of the files
    found unchanged; ``same`` [F] and ``rows`` [F] per stat-ed file (:meth:`vlmcls.sources.snapshot.Snapshot.match`)."""

    snapshot: Snapshot | None
    positions: np.ndarray
    feats: np.ndarray | None
    same: np.ndarray
    rows: np.ndarray


def _merge_features(positions: np.ndarray, block: np.ndarray | None, feats: dict[int, np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(the positions with features, ascending; their features stacked [N, D]) from a block of rows at
    ``positions`` (a snapshot's) and single rows by position."""
    if block is not None and not len(positions):
        block = None
    if not feats:
        if block is None:
            return np.zeros(0, np.int64), np.zeros((0, 0), dtype=np.float32)
        return positions, np.array(block)  # a copy: the caller's to change
    singles = sorted(feats)
    stacked = np.stack([feats[i] for i in singles])
    if block is None:
        return np.asarray(singles, dtype=np.int64), stacked
    ok = np.concatenate([positions, np.asarray(singles, dtype=np.int64)])
    order = np.argsort(ok, kind="stable")
    merged = np.empty((len(ok), stacked.shape[1]), dtype=np.result_type(block, stacked))
    merged[: len(positions)] = block
    merged[len(positions):] = stacked
    return ok[order], merged[order]


def _unlisted_unchanged(folder: str | None, snap: _SnapshotHits) -> np.ndarray:
    """Rows of the old snapshot whose file this run did not list, still there under the same stat."""
    old = snap.snapshot
    if old is None or folder is None:
        return np.zeros(0, np.int64)
    listed = np.zeros(len(old.names), dtype=bool)
    listed[snap.rows[snap.rows >= 0]] = True
    return old.unchanged_on_disk(folder, np.flatnonzero(~listed))


def _next_snapshot(files: FileStats, snap: _SnapshotHits, fresh: list[int], feats: dict[int, np.ndarray],
                   learnt: dict[int, tuple[str, tuple[int, int, int, int]]],
                   carried: np.ndarray | None = None) -> Snapshot | None:
    """The folder's snapshot after this run: the files the old one gave unchanged, and those ``fresh`` (indices
    into ``files``, ascending) whose digest and finite float32 feature this run has, in the records' order; then
    the old one's ``carried`` rows (files this run did not list, unchanged), all in the folder's listing order."""
    fresh = [f for f in fresh if feats[files.positions[f]].dtype == np.float32  # (a digest read back from the
             and len(learnt[files.positions[f]][0]) == 64]                       # store is checked: sha256 hex)
    block = np.stack([feats[files.positions[f]] for f in fresh]) if fresh else None  # [F, D], all at once:
    if block is not None:                                                            # a first run's every row
        finite = np.isfinite(block).all(axis=1)
        fresh, block = [f for f, ok in zip(fresh, finite.tolist()) if ok], block[finite]
    old = np.flatnonzero(snap.same)
    rows = np.sort(np.concatenate([old, np.asarray(fresh, dtype=np.int64)]))
    if not len(rows):
        return None  # (an old snapshot's rows stay true for as long as their files' stats match)
    dim = snap.snapshot.feats.shape[1] if len(old) else block.shape[1]
    names = [files.names[f] for f in rows.tolist()]
    stats = files.stats[rows]
    digests = np.empty((len(rows), 32), np.uint8)
    out = np.empty((len(rows), dim), np.float32)
    from_old = snap.same[rows]
    if len(old):
        digests[from_old] = snap.snapshot.digests[snap.rows[rows[from_old]]]
        out[from_old] = snap.snapshot.feats[snap.rows[rows[from_old]]]
    if fresh:  # rows[~from_old] is fresh, in the same (ascending) order
        new = [files.positions[f] for f in fresh]
        digests[~from_old] = np.frombuffer(bytes.fromhex("".join(learnt[i][0] for i in new)), np.uint8).reshape(-1, 32)
        stats[~from_old] = stat_rows([learnt[i][1] for i in new])
        out[~from_old] = block
    if carried is not None and len(carried):
        old_snap = snap.snapshot
        names += [old_snap.names[row] for row in carried.tolist()]
        stats = np.concatenate([stats, old_snap.stats[carried]])
        digests = np.concatenate([digests, old_snap.digests[carried]])
        out = np.concatenate([out, old_snap.feats[carried]])
        order = sorted(range(len(names)), key=lambda i: names[i].split(os.sep))  # as a folder lists
        names = [names[i] for i in order]
        stats, digests, out = stats[order], digests[order], out[order]
    return Snapshot(names, stats, digests, out)
