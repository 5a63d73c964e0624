"""The Ray engine's worker side: what runs inside Ray tasks and actors (see :mod:`vlmcls.engines.ray`).

Decode tasks read each image once (a file, or a row of a Parquet or Arrow file), hash and decode those same bytes
(a bad image becomes an error row; an image the feature store already holds is hashed only); encoder actors hold
the model and write feature-store shards; the other tasks read shards into one row per image and give scored rows
the written row shape (the stages run in :mod:`vlmcls.engines.ray_stages`).
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..encode.store import stat_key
from ..encode.embeddings import l2_normalize
from ..api import NON_FINITE_FEATURE
from ..errors import ModelLoadError
from ..encode.feature_store import FeatureStore, read_feats
from ..sources.listing import ImageRecord, image_data_of
from ..sources.parquet_rows import open_parquet
from ..encode.images import iter_decoded_batches

__all__ = ["decode_files", "decode_rows", "decode_shard", "EncoderActor", "rows_by_position", "located_rows"]


def decode_files(batch: dict[str, np.ndarray], *, preprocess, min_side: int | None, known: np.ndarray,
                 heif_thumbnails: bool = False):
    """Read, hash, decode and preprocess a batch of files (columns ``row``, ``path`` as file-system bytes)."""
    records = [ImageRecord(id=os.fsdecode(path), path=Path(os.fsdecode(path)), label=None, source_index=int(row))
               for row, path in zip(batch["row"], batch["path"])]
    return _decoded(records, preprocess, min_side, known, heif_thumbnails)


def decode_rows(batch, *, column: str, base_dir: str | None, preprocess, min_side: int | None,
                known: np.ndarray, batch_size: int, heif_thumbnails: bool = False) -> Iterator:
    """Read one part of a dataset (columns ``file``, ``group``, ``start``, ``stop``, ``first``: a Parquet row group,
    or rows of one of datasets' Arrow files) and decode its image column batch by batch."""
    part = batch.to_pylist()[0]
    first = part["first"]
    for values in _cells(part, column, batch_size):
        records = [ImageRecord(id=str(first + n), path=None, label=None, source_index=first + n,
                               fetch=functools.partial(image_data_of, value, column, base_dir))
                   for n, value in enumerate(values)]
        first += len(values)
        yield _decoded(records, preprocess, min_side, known, heif_thumbnails)


def decode_shard(batch, *, preprocess, min_side: int | None, known: np.ndarray, batch_size: int,
                 heif_thumbnails: bool = False) -> Iterator:
    """Read one webdataset tar shard's image members (columns ``file``, ``rows``, ``offsets``, ``sizes``), each
    once at its offset, and decode them batch by batch."""
    from ..sources.shards import read_member

    part = batch.to_pylist()[0]
    file = os.fsdecode(part["file"])
    members = list(zip(part["rows"], part["offsets"], part["sizes"]))
    for start in range(0, len(members), batch_size):
        records = [ImageRecord(id=str(row), path=None, label=None, source_index=row,
                               fetch=functools.partial(read_member, file, offset, size))
                   for row, offset, size in members[start:start + batch_size]]
        yield _decoded(records, preprocess, min_side, known, heif_thumbnails)


def _cells(part: dict, column: str, batch_size: int) -> Iterator[list]:
    """The image column's cells of one part, ``batch_size`` at a time, as Python values."""
    import pyarrow as pa

    if part["group"] is not None:  # a local file, or an hf:// URL a streamed hub dataset reads by row group
        with open_parquet(part["file"]) as parquet:
            cells = parquet.read_row_group(part["group"], columns=[column]).column(column)
        for start in range(0, len(cells), batch_size):
            yield cells.slice(start, batch_size).to_pylist()
        return
    with pa.memory_map(part["file"]) as source:  # zero-copy: only the rows taken here are read
        values = pa.ipc.open_stream(source).read_all().column(column)
        values = values.slice(part["start"], part["stop"] - part["start"]).to_pylist()
    for start in range(0, len(values), batch_size):
        yield values[start:start + batch_size]


def _decoded(records: list[ImageRecord], preprocess, min_side: int | None, known: np.ndarray,
             heif_thumbnails: bool = False):
    """The single engine's read-hash-decode (:func:`vlmcls.encode.images.iter_decoded_batches`) on these records: one row
    each with its content digest, the stat key of the file as read (for the driver's store), its error and its
    flattened pixels (none for an error or a digest the feature store holds)."""
    import pyarrow as pa

    rows, digests, stat_keys, errors, sizes, pixels = [], [], [], [], [], []

    def add(record, digest, file_stat, error, flat=None):
        rows.append(record.source_index)
        digests.append(digest or "")
        key = stat_key(record.path, file_stat) if record.path is not None and file_stat is not None else None
        stat_keys.append(key or "")
        errors.append(os.fsencode(error))  # a reason may name a file whose name is not UTF-8
        sizes.append(0 if flat is None else flat.size)
        if flat is not None:
            pixels.append(flat)

    lookup = functools.partial(_held, known)
    for batch in iter_decoded_batches(records, preprocess, max(1, len(records)), num_workers=0, min_side=min_side,
                                      heif_thumbnails=heif_thumbnails, lookup=lookup):
        for record, reason in batch.errors:
            add(record, None, None, reason)
        for record, digest, file_stat, _, _ in batch.known:
            add(record, digest, file_stat, "")
        if batch.records_ok:
            flat = batch.pixels.numpy().reshape(len(batch.records_ok), -1)  # [B, 3·H·W]
            for j, record in enumerate(batch.records_ok):
                add(record, batch.digests[j], batch.file_stats[j], "", np.ascontiguousarray(flat[j], np.float32))
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    values = np.concatenate(pixels) if pixels else np.empty(0, np.float32)
    return pa.table({
        "row": pa.array(rows, pa.int64()),
        "digest": pa.array(digests, pa.string()),
        "stat_key": pa.array(stat_keys, pa.string()),
        "error": pa.array(errors, pa.binary()),
        "pixels": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values)),
    })


def _held(known: np.ndarray, digests: list[str]) -> dict[str, bool]:
    """The digests found in ``known`` (sorted hex digests, dtype S64: shared by the tasks without a copy)."""
    wanted = np.array(digests, dtype="S64")
    where = np.minimum(np.searchsorted(known, wanted), max(0, len(known) - 1))
    found = (known[where] == wanted) if len(known) else np.zeros(len(wanted), dtype=bool)
    return {d: True for d, hit in zip(digests, found) if hit}


class EncoderActor:
    """Holds the model; encodes decoded batches and writes their features to the feature store."""

    def __init__(self, model_id: str, device: str, precision: str, weights_fingerprint: str, store_root: str,
                 image_key_parts: dict, dim: int, pixel_shape: tuple[int, ...]):
        import ray

        from ..encode.models import load_model

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))
        self.model = load_model(model_id, device=device, precision=precision)
        if self.model.weights_fingerprint != weights_fingerprint:
            raise ModelLoadError(
                f"model '{model_id}' loaded on a Ray worker has other weights than on the driver "
                f"('{self.model.weights_fingerprint}' vs '{weights_fingerprint}'). Give a model id that loads the "
                "same weights everywhere: a pretrained tag, or local-dir: on storage every node shares."
            )
        self.store = FeatureStore(store_root, image_key_parts, dim)
        self.pixel_shape = tuple(pixel_shape)

    def __call__(self, table):
        """Decoded rows in; per row its digest, stat key, error and whether it was encoded now out."""
        import pyarrow as pa
        import pyarrow.compute as pc

        errors = table.column("error").to_pylist()
        sizes = pc.list_value_length(table.column("pixels")).to_pylist()
        todo = [i for i, (error, size) in enumerate(zip(errors, sizes)) if not error and size]
        encoded = np.zeros(len(errors), dtype=bool)
        if todo:
            flat = table.column("pixels").take(todo).combine_chunks().flatten()
            pixels = np.require(flat.to_numpy(zero_copy_only=False), requirements="W")  # torch wants it writable
            pixels = torch.from_numpy(pixels.reshape(len(todo), *self.pixel_shape))  # [B, 3, H, W]
            feats = l2_normalize(self.model.encode_images(pixels)).numpy()  # [B, D]
            finite = np.isfinite(feats).all(axis=1)  # [B]: a NaN feature is an error row, never stored
            for n in np.flatnonzero(~finite):
                errors[todo[n]] = NON_FINITE_FEATURE.encode()
            kept = [row for row, ok in zip(todo, finite) if ok]
            if kept:
                digests = table.column("digest").to_pylist()
                self.store.write_shard([digests[i] for i in kept], feats[finite])
                encoded[kept] = True
        return pa.table({
            "row": table.column("row"), "digest": table.column("digest"), "stat_key": table.column("stat_key"),
            "error": pa.array(errors, pa.binary()), "encoded": pa.array(encoded),
            "done_at": pa.array(np.full(len(errors), time.time())),
        })


def rows_by_position(batch, *, positions: dict[str, list[int]], shard_of: dict[str, str]):
    """A feature-store shard -> one row per image of this run (a digest shared by two files gives two rows).
    A digest kept in two shards is taken from the one the driver's index named, so each image gets one row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shard = Path(str(batch.column("shard")[0]))
    table = pq.read_table(shard, columns=["digest", "feats"])
    take, where = [], []
    for row, digest in enumerate(table.column("digest").to_pylist()):
        if shard_of.get(digest) != shard.name:
            continue
        for position in positions[digest]:
            take.append(row)
            where.append(position)
    picked = table.take(pa.array(take, pa.int64())) if take else table.slice(0, 0)
    return pa.table({"position": pa.array(where, pa.int64()), "feats": picked.column("feats")})


def _batch_feats(table, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions [B], unit feats [B, D]) of a batch of feature rows."""
    column = table.column("feats").combine_chunks()
    dim = dim or column.type.list_size
    positions = torch.from_numpy(np.asarray(table.column("position").to_numpy(), dtype=np.int64))
    return positions, torch.from_numpy(read_feats(table, dim))


def labels_type():
    import pyarrow as pa

    return pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))




def located_rows(table, *, located: dict[str, list], explain: bool):
    """Scored rows with their image's index, path and true label (the written row shape)."""
    import pyarrow as pa

    positions = table.column("position").to_pylist()
    columns = {
        "path": pa.array([located["path"][p] for p in positions], pa.string()),
        "label": table.column("label"),
        "top_k": table.column("top_k"),
        "error": pa.array([None] * len(positions), pa.string()),
        "true_label": pa.array([located["true_label"][p] for p in positions], pa.string()),
        "index": pa.array([located["index"][p] for p in positions], pa.int64()),
    }
    if explain:
        columns["explanation"] = table.column("explanation")
    if table.column("unknown_score").null_count < table.num_rows:
        columns["unknown_score"] = table.column("unknown_score")
    if table.column("labels").null_count < table.num_rows:
        columns["labels"] = table.column("labels")
    return pa.table(columns)
