"""The Ray engine's rows: written as shards by the workers, brought back to the driver, and turned into the same
result table the local engine gives (input order, error rows included)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..results import ClassificationResult, ResultTable, top_k_arrow_type
from ..scoring import probabilities
from ..sources.listing import ImageRecord
from .ray_workers import located_rows

def _write(ray, scored, records: list[ImageRecord], ok: list[int], errors: dict[int, str], output_dir,
           output_format: str, explain: bool) -> list[str]:
    """The rows of every image, error rows included, as shards in output_dir (written by the workers)."""
    import pyarrow as pa

    located = {"index": ok, "path": [_row_path(records[i]) for i in ok],
               "true_label": [records[i].label for i in ok]}
    parts = []
    if scored is not None:
        parts.append(scored.map_batches(located_rows, batch_format="pyarrow", fn_kwargs={"located": located,
                                                                                              "explain": explain}))
    if errors:
        rows = pa.table({
            "path": pa.array([_row_path(records[i]) for i in errors], pa.string()),
            "label": pa.array([None] * len(errors), pa.string()),
            "top_k": pa.array([[] for _ in errors], top_k_arrow_type()),
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


def _row_path(record: ImageRecord) -> str:
    """The written row's ``path``, as :meth:`Prediction.to_dict` gives it (a dataset row's id)."""
    return str(record.path) if record.path is not None else record.id


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
    probs = pipeline.probabilities(logits) if pipeline is not None else probabilities(logits)  # [N_ok, C]
    # the result table, column by column: the workers' rows where an image was scored, error rows elsewhere
    n_all = len(records)
    ok_at = np.asarray(ok, np.int64)
    k = len(table.column("top_k")[0].as_py()) if ok else 0
    index = {name: j for j, name in enumerate(class_names)}
    top_index = np.full((n_all, k), -1, np.int64)
    top_prob = np.zeros((n_all, k), np.float32)
    labels: list = [None] * n_all
    notes: list = [None] * n_all
    unknown: list = [None] * n_all  # the open world's columns (null without refiner unknown)
    label_sets: list = [None] * n_all
    if ok:
        top = table.column("top_k").combine_chunks().flatten()  # [N_ok·k] structs
        names = top.field("label").to_pylist()
        top_index[ok_at] = np.fromiter(map(index.__getitem__, names), np.int64, len(names)).reshape(len(ok), k)
        top_prob[ok_at] = top.field("prob").to_numpy(zero_copy_only=False).reshape(len(ok), k)
        for i, label, note in zip(ok, table.column("label").to_pylist(), table.column("explanation").to_pylist()):
            labels[i], notes[i] = label, (json.loads(note) if note else None)
        for i, score, sets in zip(ok, table.column("unknown_score").to_pylist(), table.column("labels").to_pylist()):
            unknown[i] = float(score) if score is not None else None
            label_sets[i] = [(t["label"], float(t["score"])) for t in sets] if sets is not None else None
    failed = [errors.get(i) for i in range(n_all)]
    result_table = ResultTable(list(class_names), [rec.id for rec in records],
                               [str(rec.path) if rec.path is not None else None for rec in records], top_index,
                               top_prob, labels, failed, [rec.label for rec in records],
                               notes if any(n is not None for n in notes) else None,
                               unknown if any(v is not None for v in unknown) else None,
                               label_sets if any(v is not None for v in label_sets) else None)
    return ClassificationResult(result_table, list(class_names), logits, probs)
