"""Multi-label truth for eval: a file of path → labels, and the metrics of several labels per image.

A truth file is JSON lines ``{"path": "two_objects/a.png", "labels": ["trelloq", "yantrok"]}`` (the demo's
``two_objects.jsonl``) or a CSV with a ``path`` and a ``labels`` column, labels separated by ``;`` (a path may
also repeat, one label a row). Relative paths are read from the truth file's folder. Every label must be one of
the classes: a truth file that names others is an error listing them, raised before any image is encoded.

Metrics (:func:`multi_label_metrics`):

- mAP: the mean over classes (with at least one true image) of the average precision of ranking the images by
  the method's probability of that class — every method has those, so a ``--multi-label`` run and a single-label
  baseline compare on the same footing.
- per-class precision, recall and F1 of the labels each image was given: a row's ``labels`` when the run decided
  several per image (the open-world refiner in multi-label mode), else its one top-1 label; macro and micro F1 over them.
- exact match: the share of images whose given labels are exactly their true ones.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..results import ClassificationResult

__all__ = ["read_truth_file", "multi_label_metrics", "average_precision", "TRUTH_SUFFIXES"]

TRUTH_SUFFIXES = (".jsonl", ".csv")


def read_truth_file(path: str | os.PathLike, class_names: Sequence[str]) -> dict[Path, list[str]]:
    """Resolved image path → its true labels (order kept, repeats dropped), checked against ``class_names``."""
    from ..sources.textfiles import read_text_file

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TRUTH_SUFFIXES:
        raise ConfigError(f"truth file '{path}' must end in .jsonl or .csv (path → labels); see the demo's "
                          "two_objects.jsonl.")
    text = read_text_file(path, "truth file")
    pairs = _jsonl_pairs(path, text) if suffix == ".jsonl" else _csv_pairs(path, text)
    truth: dict[Path, list[str]] = {}
    for image, labels in pairs:
        where = Path(image) if Path(image).is_absolute() else path.parent / image
        known = truth.setdefault(where.resolve(), [])
        known.extend(label for label in labels if label not in known)
    if not truth:
        raise ConfigError(f"truth file '{path}' holds no rows; give one path with its labels per line.")
    listed = set(class_names)
    outside = Counter(label for labels in truth.values() for label in labels if label not in listed)
    if outside:
        shown = ", ".join(f"'{label}' ({count})" for label, count in outside.most_common(10))
        raise ConfigError(f"truth file '{path}' names labels that are not among the {len(listed)} classes: {shown}; "
                          "add them to the classes or fix their spelling.")
    return truth


def _jsonl_pairs(path: Path, text: str) -> list[tuple[str, list[str]]]:
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"truth file '{path}' line {number} is not JSON: {exc.msg}.") from exc
        labels = row.get("labels") if isinstance(row, dict) else None
        if not isinstance(row, dict) or not isinstance(row.get("path"), str) or not (
                isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
            raise ConfigError(f"truth file '{path}' line {number} is not {{\"path\": \"…\", \"labels\": [\"…\"]}}.")
        pairs.append((row["path"], [x.strip() for x in labels if x.strip()]))
    return pairs


def _csv_pairs(path: Path, text: str) -> list[tuple[str, list[str]]]:
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or not {"path", "labels"} <= set(reader.fieldnames):
        raise ConfigError(f"truth file '{path}' needs a header with 'path' and 'labels' columns (labels separated "
                          f"by ';'); it has {', '.join(repr(f) for f in reader.fieldnames or [])}.")
    return [(row["path"], [x.strip() for x in (row["labels"] or "").split(";") if x.strip()])
            for row in reader if row.get("path")]


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """AP of ranking by ``scores [N]`` against ``truth [N]`` (0/1); None when no image is true."""
    if truth.sum() == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    hits = truth[order]
    precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float((precision * hits).sum() / hits.sum())


def multi_label_metrics(result: "ClassificationResult", truth: dict[Path, list[str]]) -> dict[str, Any] | None:
    """mAP, per-class and micro/macro F1 and exact match of a run over its images that the truth file names."""
    classes = list(result.class_names)
    rows = [(n, p) for n, p in enumerate(result.ok) if p.path is not None and Path(p.path).resolve() in truth]
    if not rows:
        return None
    true = np.array([[c in truth[Path(p.path).resolve()] for c in classes] for _, p in rows], dtype=float)  # [N, C]
    probs = np.asarray(result.probs, dtype=float)[[n for n, _ in rows]]  # [N, C]
    given = np.array([[c in _given(p) for c in classes] for _, p in rows], dtype=float)  # [N, C]
    aps = [average_precision(probs[:, c], true[:, c]) for c in range(len(classes))]
    per_class = []
    for c, name in enumerate(classes):
        tp, predicted, support = float((given[:, c] * true[:, c]).sum()), int(given[:, c].sum()), int(true[:, c].sum())
        precision = tp / predicted if predicted else None
        recall = tp / support if support else None
        f1 = 2 * tp / (predicted + support) if predicted + support else None
        per_class.append({"name": name, "precision": precision, "recall": recall, "f1": f1, "support": support,
                          "predicted": predicted, "ap": aps[c]})
    scored = [s["f1"] for s in per_class if s["support"]]
    tp = float((given * true).sum())
    return {
        "images": len(rows),
        "labels_from": "labels" if any(p.labels is not None for _, p in rows) else "top-1",
        "map": float(np.mean([a for a in aps if a is not None])) if any(a is not None for a in aps) else None,
        "macro_f1": float(np.mean(scored)) if scored else None,
        "micro_f1": 2 * tp / float(given.sum() + true.sum()) if given.sum() + true.sum() else None,
        "exact_match": float(np.mean((given == true).all(axis=1))),
        "labels_per_image": float(given.sum(axis=1).mean()),
        "per_class": per_class,
    }


def _given(p: Any) -> set[str]:
    """The labels a row was given: its multi-label set, else its one answer."""
    return {c for c, _ in p.labels} if p.labels is not None else {p.label}
