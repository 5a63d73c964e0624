"""A run's results, corrections applied, in the formats labelling tools import (``vlmcls export``).

- ``labelstudio``: a folder with ``tasks.json`` — Label Studio's basic JSON task format, one task per image with
  ``data.image``, the prediction as pre-annotation (``predictions[0].result`` of type ``choices``, ``score`` = the
  top-1 probability, the whole top-k kept in ``data.top_k``) and a reviewer's correction as an annotation — and
  ``label_config.xml``, the image-classification labelling config whose ``Choices`` are the run's classes.
- ``fiftyone``: a FiftyOne ``FiftyOneImageClassificationDataset`` folder: ``labels.json``
  (``{"classes": [...], "labels": {uuid: {"label": …, "confidence": …}}}``) and ``data.json``, the manifest
  ``{uuid: image path}`` its importer reads in place of a ``data/`` folder (no image copied).
- ``csv`` / ``parquet``: one row per image: path, label (corrected), predicted, prob, corrected, unknown,
  true_label, error.
"""

from __future__ import annotations

import csv
import os
import uuid
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from ..errors import ConfigError
from ..output import _csv_cell, atomic_open, check_output_path, write_json
from .run_results import RunResults

__all__ = ["EXPORT_FORMATS", "export_results", "export_rows"]

EXPORT_FORMATS = ("labelstudio", "fiftyone", "csv", "parquet")
LABEL_STUDIO_FILES_PREFIX = "/data/local-files/?d="  # Label Studio's local-files storage URL


def export_rows(run: RunResults) -> list[dict[str, Any]]:
    """The flat rows every format starts from (corrections applied)."""
    rows = []
    for n, row in enumerate(run.rows):
        correction = run.corrections.get(row["path"])
        top = row["top_k"][0]["prob"] if row["top_k"] else None
        rows.append({"path": row["path"], "label": run.final_label(n), "predicted": row.get("label"), "prob": top,
                     "corrected": correction is not None, "unknown": bool(correction and correction.unknown),
                     "true_label": row.get("true_label"), "error": row.get("error")})
    return rows


def export_results(run: RunResults, fmt: str, to: str | os.PathLike, files_root: str | None = None) -> Path:
    """Write ``run`` in format ``fmt`` to ``to`` (a folder for labelstudio/fiftyone, a file for csv/parquet)."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'. Valid: {', '.join(EXPORT_FORMATS)}.")
    to = Path(to).expanduser()
    if fmt in ("csv", "parquet"):
        path = check_output_path(to, (f".{fmt}",), "export", f"a {fmt} export is one file: use .{fmt}")
        return _write_table(export_rows(run), path, fmt)
    if to.exists() and not to.is_dir():
        raise ConfigError(f"export '{to}' is a file; give a folder (it is created when missing).")
    to.mkdir(parents=True, exist_ok=True)
    return _label_studio(run, to, files_root) if fmt == "labelstudio" else _fiftyone(run, to)


def _write_table(rows: list[dict[str, Any]], path: Path, fmt: str) -> Path:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            pq.write_table(pa.Table.from_pylist(rows), str(tmp))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path
    with atomic_open(path, errors="surrogateescape") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["path", "label"])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_cell(v) for k, v in row.items()})
    return path


def _image_url(run: RunResults, n: int, files_root: str | None) -> str:
    """Label Studio's local-files URL: the path relative to LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (``files_root``;
    default: the filesystem root)."""
    file = run.image_file(n)
    if file is None:
        return run.rows[n]["path"]
    file = file.absolute()
    relative = os.path.relpath(file, files_root) if files_root else os.fspath(file).lstrip("/")
    return LABEL_STUDIO_FILES_PREFIX + relative


def _label_studio(run: RunResults, folder: Path, files_root: str | None) -> Path:
    tasks = []
    for n, row in enumerate(run.rows):
        if row.get("error") is not None:
            continue
        task: dict[str, Any] = {"data": {"image": _image_url(run, n, files_root), "path": row["path"],
                                         "top_k": row["top_k"]}}
        if row.get("label") is not None:
            score = row["top_k"][0]["prob"] if row["top_k"] else None
            task["predictions"] = [{"model_version": f"vlmcls {run.settings.get('model', '')}".strip(),
                                    "score": score,
                                    "result": [_choice(row["label"], score)]}]
        correction = run.corrections.get(row["path"])
        if correction is not None and correction.label is not None:
            task["annotations"] = [{"result": [_choice(correction.label, None)]}]
        tasks.append(task)
    write_json(folder / "tasks.json", tasks)
    choices = "\n".join(f"    <Choice value={quoteattr(name)}/>" for name in run.class_names)
    config = ('<View>\n  <Image name="image" value="$image"/>\n'
              f'  <Choices name="choice" toName="image" choice="single">\n{choices}\n  </Choices>\n</View>\n')
    with atomic_open(folder / "label_config.xml") as fh:
        fh.write(config)
    return folder


def _choice(label: str, score: float | None) -> dict[str, Any]:
    result = {"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": [label]}}
    if score is not None:
        result["score"] = score
    return result


def _fiftyone(run: RunResults, folder: Path) -> Path:
    labels: dict[str, Any] = {}
    data: dict[str, str] = {}
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, os.fspath(run.path.absolute()))
    for n, row in enumerate(run.rows):
        file = run.image_file(n)
        if row.get("error") is not None or file is None:
            continue
        key = uuid.uuid5(namespace, row["path"]).hex  # the same image, the same id on every export
        data[key] = os.fspath(file.absolute())
        label = run.final_label(n)
        if label is None:
            labels[key] = None
        elif row["path"] in run.corrections:
            labels[key] = {"label": label}
        else:
            labels[key] = {"label": label, "confidence": row["top_k"][0]["prob"] if row["top_k"] else None}
    write_json(folder / "labels.json", {"classes": run.class_names, "labels": labels})
    write_json(folder / "data.json", data)
    return folder
