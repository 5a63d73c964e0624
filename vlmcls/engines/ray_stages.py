"""The Ray engine's stages-so-far: each stage evaluated once per image, as on the single engine.

A stage that needs a pass over every image (FuDD's pair counts, the self-cache, TransCLIP) is prepared from the
scores of the stages before it. On one machine :class:`~vlmcls.methods.pipeline.StagesSoFar` keeps those scores
in memory; here they travel with the feature rows: each row carries its image's scores so far (``s_*`` columns:
logits, notes, labels, unknown score, label set, and the batch's summable counts on one row), so a gather runs
only the stages added since the last one and the final scoring only the stages no gather needed::

    (position, feats) ─▶ advance(stages 0..i) ─▶ (position, feats, s_*) ─▶ collect ─▶ parts to the driver
                     ─▶ advance(stages i+1..j) ─▶ … ─▶ score (the rest) ─▶ rows

The columns are plain Arrow (no pickles): a batch's scores are rebuilt from them exactly (float64 logits keep
float64, float32 stay float32).

It is the default; ``RayEngine(carry_scores=False)`` (``--ray carry_scores=false``) re-runs the stages before each
gather instead, for one Ray pass per gather rather than two and no logits kept between passes (the object store
holds every image's logits, [N, C] float64, while they are carried: 400 MB for 50,000 images × 1,000 classes).
Measured (2-core box, demo model, 10,000 images, ``cbd+fudd+tfup``, warm runs, alternated): with scoring batches
of at least ``SCORE_ROWS`` rows, carrying 33.1–35.6 s, re-running 35.1–36.5 s; with the encoder's batch of 8 as
the scoring batch (before ``SCORE_ROWS``), 84–94 s and 66–92 s. The rows are the same either way.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import torch

from ..methods.pipeline import BatchScores, StagesSoFar
from ..results import json_safe, top_k_arrow_type
from ..scoring import top_k
from .ray_workers import _batch_feats, labels_type

__all__ = ["RayStagesSoFar", "advance_batch", "collect_part", "score_batch"]

SCORE_ROWS = 1024  # the least rows per Ray batch when stages run (logits of 1,024 × 5,000 texts: 20 MB)
_STATE = ("s_logits", "s_logits64", "s_notes", "s_label", "s_unknown", "s_unknown64", "s_labels", "s_counts")


class RayStagesSoFar:
    """Driver side: the feature rows with the scores of the stages applied so far, and which stages those are.
    Its :meth:`gather` is the Ray engine's gather for :func:`~vlmcls.methods.build_pipeline`."""

    def __init__(self, feats_ds: Any, batch_size: int, explain: bool, carry: bool = True) -> None:
        self.ds, self.explain, self.carry = feats_ds, explain, carry
        # Scoring is matrix work on features: the encoder's batch (sized for a forward pass) would make thousands of
        # tiny Ray batches whose per-batch cost dominates (10,000 images at batch 8: 66–92 s, at 1,024 rows 33–45 s).
        self.batch_size = max(batch_size, SCORE_ROWS)
        self.stages: list[Any] = []

    def advance(self, pipeline: Any) -> int:
        """Apply the stages of ``pipeline`` not applied yet (all of them when it does not extend what ran);
        returns how many stages the rows' scores now hold (0 when scores are not carried: each pass runs them)."""
        if not self.carry:
            return 0
        done = len(self.stages)
        if done > len(pipeline.stages) or any(a is not b for a, b in zip(pipeline.stages, self.stages)):
            done = 0  # not an extension of what ran: start over from the features
        if done < len(pipeline.stages):
            self.ds = self.ds.map_batches(advance_batch, batch_size=self.batch_size, batch_format="pyarrow",
                                          fn_kwargs={"pipeline": pipeline, "done": done,
                                                     "explain": self.explain}).materialize()
            self.stages = list(pipeline.stages)
        return len(self.stages)

    def gather(self, upstream: Any, collect: Any) -> list[Any]:
        done = self.advance(upstream)
        parts = self.ds.map_batches(collect_part, batch_size=self.batch_size, batch_format="pyarrow",
                                    fn_kwargs={"pipeline": upstream, "collect": collect, "done": done,
                                               "explain": self.explain})
        return [row["part"] for row in parts.iter_rows()]

    def score(self, pipeline: Any, k: int) -> Any:
        """The final scoring: the stages no gather needed, then the rows (see :func:`score_batch`)."""
        done = len(self.stages)
        if done > len(pipeline.stages) or any(a is not b for a, b in zip(pipeline.stages, self.stages)):
            done = 0  # not the pipeline the gathers saw: every stage on the features
        return self.ds.map_batches(score_batch, batch_size=self.batch_size, batch_format="pyarrow",
                                   fn_kwargs={"pipeline": pipeline, "k": k, "explain": self.explain, "done": done})


# -- worker side -------------------------------------------------------------------------------------------


def _resume(table, pipeline, done: int, explain: bool) -> tuple[StagesSoFar, Any, dict[str, float]]:
    """A StagesSoFar holding the batch's first ``done`` stages (their scores read from the rows) and the counts
    the rows carry."""
    positions, feats = _batch_feats(table)
    run = StagesSoFar(feats, explain, positions)
    carried: dict[str, float] = {}
    if done:
        run.stages = list(pipeline.stages[:done])
        run.scores = _scores_from_rows(table)
        for text in table.column("s_counts").to_pylist():
            for key, value in json.loads(text).items():
                carried[key] = carried.get(key, 0) + value
    return run, feats, carried


def _tensor(column, wide) -> torch.Tensor:
    values = np.asarray(column, dtype=np.float64)
    return torch.from_numpy(values if wide else values.astype(np.float32))


def _matrix_column(matrix: Any, dtype: Any) -> Any:
    """Rows of a [B, C] matrix as an Arrow list column, straight from its buffer (no Python list per row)."""
    import pyarrow as pa

    values = np.ascontiguousarray(np.asarray(matrix), dtype=dtype)
    rows, width = values.shape
    offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)))


def _matrix_of(column) -> np.ndarray:
    """A list column of equal-length rows as a [B, C] array (the inverse of :func:`_matrix_column`)."""
    combined = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    flat = combined.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(combined), -1) if len(combined) else flat.reshape(0, 0)


def _scores_from_rows(table) -> BatchScores:
    logits = _tensor(_matrix_of(table.column("s_logits")), table.column("s_logits64")[0].as_py())
    notes = table.column("s_notes").to_pylist()
    labels = table.column("s_label").to_pylist()
    unknown = table.column("s_unknown").to_pylist()
    label_sets = table.column("s_labels").to_pylist()
    return BatchScores(
        logits,
        notes=None if all(n is None for n in notes) else [json.loads(n) if n is not None else None for n in notes],
        labels=None if all(v is None for v in labels) else labels,
        unknown_score=(None if all(v is None for v in unknown)
                       else _tensor(unknown, table.column("s_unknown64")[0].as_py())),
        label_sets=(None if all(v is None for v in label_sets)
                    else [[(e["label"], e["score"]) for e in row] for row in label_sets]),
    )


def _state_columns(scores: BatchScores, counts: dict[str, float], rows: int) -> dict[str, Any]:
    import pyarrow as pa

    logits = scores.logits
    wide = str(getattr(logits, "dtype", "")).endswith("float64")
    unknown = scores.unknown_score
    return {
        "s_logits": _matrix_column(logits, np.float64),
        "s_logits64": pa.array([wide] * rows, pa.bool_()),
        "s_notes": pa.array([json.dumps(json_safe(n)) if n is not None else None for n in scores.notes]
                            if scores.notes is not None else [None] * rows, pa.string()),
        "s_label": pa.array(list(scores.labels) if scores.labels is not None else [None] * rows, pa.string()),
        "s_unknown": pa.array(np.asarray(unknown, dtype=np.float64).tolist() if unknown is not None
                              else [None] * rows, pa.float64()),
        "s_unknown64": pa.array([str(getattr(unknown, "dtype", "")).endswith("float64")] * rows, pa.bool_()),
        "s_labels": pa.array([[{"label": c, "score": float(v)} for c, v in row] for row in scores.label_sets]
                             if scores.label_sets is not None else [None] * rows, labels_type()),
        "s_counts": pa.array([json.dumps(counts)] + ["{}"] * (rows - 1), pa.string()),  # the batch's, once
    }


def advance_batch(table, *, pipeline, done: int, explain: bool):
    """The stages after the first ``done`` on one batch; the rows keep their features and carry the new scores."""
    import pyarrow as pa

    run, _, carried = _resume(table, pipeline, done, explain)
    run.apply(pipeline)
    counts = dict(carried)
    for key, value in run.counts.items():
        counts[key] = counts.get(key, 0) + value
    state = _state_columns(run.scores, counts, table.num_rows)
    return pa.table({"position": table.column("position"), "feats": table.column("feats"), **state})


def collect_part(table, *, pipeline, collect, done: int = 0, explain: bool = False):
    """A gather's collect on one batch (its upstream scores read from the rows); the part travels back to the
    driver as one Python object."""
    run, feats, carried = _resume(table, pipeline, done, explain)
    scores = run.apply(pipeline)  # no stage left to run: the scores as the single engine's gather sees them
    part = np.empty(1, dtype=object)
    part[0] = collect(run.positions, feats, dataclasses.replace(scores, counts={**carried, **scores.counts}))
    return {"part": part}


def score_batch(table, *, pipeline, k: int, explain: bool, done: int = 0):
    """The prepared pipeline's remaining stages on one batch: the rows of Prediction.to_dict, plus logits and
    counts (every stage's) for the driver."""
    import pyarrow as pa

    run, feats, carried = _resume(table, pipeline, done, explain)
    scores = run.apply(pipeline)
    positions = run.positions
    probs = pipeline.probabilities(scores.logits)  # [B, C]
    values, indices = top_k(probs, k)
    names = pipeline.class_names
    ranked = [[{"label": names[int(j)], "prob": round(float(v), 6)} for v, j in zip(values[n], indices[n])]
              for n in range(feats.shape[0])]
    labels = scores.labels if scores.labels is not None else [r[0]["label"] for r in ranked]
    notes = [json.dumps(json_safe(note)) if note else None for note in (scores.notes or [None] * len(ranked))]
    counts = dict(carried)
    for key, value in scores.counts.items():
        counts[key] = counts.get(key, 0) + value
    batch_counts = [json.dumps(counts)] + ["{}"] * (len(ranked) - 1)  # the batch's counts, once
    unknown = scores.unknown_score.double().tolist() if scores.unknown_score is not None else [None] * len(ranked)
    label_sets = ([[{"label": c, "score": float(v)} for c, v in row] for row in scores.label_sets]
                  if scores.label_sets is not None else [None] * len(ranked))
    return pa.table({
        "position": pa.array(positions.tolist(), pa.int64()),
        "label": pa.array(labels, pa.string()),
        "top_k": pa.array(ranked, top_k_arrow_type()),
        "explanation": pa.array(notes, pa.string()),
        "logits": _matrix_column(scores.logits.float(), np.float32),
        "counts": pa.array(batch_counts, pa.string()),
        "unknown_score": pa.array(unknown, pa.float64()),  # the open world's (null without refiner unknown)
        "labels": pa.array(label_sets, labels_type()),
    })
