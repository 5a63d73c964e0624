"""The Ray engine's worker side: what runs inside Ray tasks and actors (see :mod:`vlmcls.distributed`).

Decode tasks turn files into pixels (a bad file becomes an error row); encoder actors hold the model and write
feature-store shards; the other tasks read shards into one row per image, run a gather's collect on a batch, score
a batch with the prepared pipeline, and give scored rows the written row shape.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .embeddings import l2_normalize
from .api import NON_FINITE_FEATURE
from .errors import ModelLoadError
from .feature_store import FeatureStore, read_feats
from .images import DEFAULT_MAX_PIXELS, ImageRecord
from .results import json_safe
from .scoring import probabilities, top_k

__all__ = ["decode_batch", "EncoderActor", "rows_by_position", "collect_part", "score_batch", "located_rows",
           "top_k_type"]


def decode_batch(batch: dict[str, np.ndarray], *, preprocess, pixel_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Decode and preprocess a batch of files; a file that fails keeps zeros and its reason in 'error'."""
    from .images import decode_and_preprocess  # the one decoding routine, shared with the single engine

    paths = batch["path"]
    pixels = np.zeros((len(paths), *pixel_shape), dtype=np.float32)  # [B, 3, H, W]
    errors = []
    for row, path in enumerate(paths):
        record = ImageRecord(id=str(path), path=Path(str(path)), label=None, source_index=row)
        outcome = decode_and_preprocess(record, preprocess=preprocess, max_pixels=DEFAULT_MAX_PIXELS)
        if isinstance(outcome, str):
            errors.append(outcome)
        else:
            pixels[row] = outcome.numpy()
            errors.append("")
    return {"digest": batch["digest"], "error": np.array(errors, dtype=object), "pixels": pixels}


class EncoderActor:
    """Holds the model; encodes decoded batches and writes their features to the feature store."""

    def __init__(self, model_id: str, device: str, precision: str, weights_fingerprint: str, store_root: str,
                 dim: int):
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
        self.store = FeatureStore(store_root, self.model.image_key_parts, dim)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = [str(e) if e else "" for e in batch["error"]]
        ok_rows = [i for i, e in enumerate(errors) if not e]
        if ok_rows:
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok_rows]))  # [B, 3, H, W]
            feats = l2_normalize(self.model.encode_images(pixels)).numpy()  # [B, D]
            finite = np.isfinite(feats).all(axis=1)  # [B]: a NaN feature is an error row, never stored
            for n in np.flatnonzero(~finite):
                errors[ok_rows[n]] = NON_FINITE_FEATURE
            kept = [row for row, ok in zip(ok_rows, finite) if ok]
            if kept:
                self.store.write_shard([str(batch["digest"][i]) for i in kept], feats[finite])
        return {"digest": batch["digest"], "error": np.array(errors, dtype=object),
                "done_at": np.full(len(errors), time.time())}


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


def collect_part(table, *, pipeline, collect):
    """A gather's collect on one batch; the part travels back to the driver as one Python object."""
    positions, feats = _batch_feats(table)
    part = np.empty(1, dtype=object)
    part[0] = collect(positions, feats, pipeline.apply(feats))
    return {"part": part}


def score_batch(table, *, pipeline, k: int, explain: bool):
    """The prepared pipeline on one batch: the rows of Prediction.to_dict, plus logits and counts for the driver."""
    import pyarrow as pa

    positions, feats = _batch_feats(table)
    scores = pipeline.apply(feats, explain)
    probs = probabilities(scores.logits, pipeline.score_rule)  # [B, C]
    values, indices = top_k(probs, k)
    names = pipeline.class_names
    ranked = [[{"label": names[int(j)], "prob": round(float(v), 6)} for v, j in zip(values[n], indices[n])]
              for n in range(feats.shape[0])]
    labels = scores.labels if scores.labels is not None else [r[0]["label"] for r in ranked]
    notes = [json.dumps(json_safe(note)) if note else None for note in (scores.notes or [None] * len(ranked))]
    counts = [json.dumps(scores.counts)] + ["{}"] * (len(ranked) - 1)  # the batch's counts, once
    return pa.table({
        "position": pa.array(positions.tolist(), pa.int64()),
        "label": pa.array(labels, pa.string()),
        "top_k": pa.array(ranked, top_k_type()),
        "explanation": pa.array(notes, pa.string()),
        "logits": pa.array(scores.logits.float().tolist(), pa.list_(pa.float32())),
        "counts": pa.array(counts, pa.string()),
    })


def top_k_type():
    import pyarrow as pa

    return pa.list_(pa.struct([("label", pa.string()), ("prob", pa.float64())]))


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
    return pa.table(columns)
