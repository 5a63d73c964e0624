"""A classify run read back from its files: the rows (JSONL, JSON or Parquet), the run's settings (the
``out.run.json`` sidecar classify writes beside ``-o out.jsonl``) and its corrections (``out.labels.jsonl``).

What ``review``, ``sort`` and ``export`` start from. A row's ``path`` is as classify wrote it: relative paths are
relative to the folder classify ran in (the sidecar's ``cwd``; without a sidecar, the current folder).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .labels import Correction, labels_path_for, read_corrections

__all__ = ["RESULT_SUFFIXES", "RunResults", "load_results", "run_settings_path", "run_settings", "final_label"]

RESULT_SUFFIXES = (".jsonl", ".json", ".parquet")  # the formats that keep top-k as data (CSV flattens it)
RUN_SUFFIX = ".run.json"


def run_settings_path(results: str | os.PathLike) -> Path:
    """Where classify keeps a run's settings: beside its results, ``out.jsonl`` → ``out.run.json``."""
    results = Path(results)
    return results.with_name(results.stem + RUN_SUFFIX)


def run_settings(model: str, class_names: list[str], method: str, method_options: dict[str, dict[str, Any]],
                 images: Any, source_options: dict[str, Any], top_k: int) -> dict[str, Any]:
    """The sidecar's content: enough to score the run again (``review``'s "improve with my labels")."""
    return {
        "format": 1,
        "model": model,
        "classes": list(class_names),
        "method": method,
        "options": {name: {key: str(value) for key, value in values.items()}
                    for name, values in (method_options or {}).items()},
        "images": os.fspath(images) if isinstance(images, (str, os.PathLike)) else None,
        "source_options": {k: v for k, v in (source_options or {}).items() if isinstance(v, (str, int, float, bool))},
        "top_k": top_k,
        "cwd": os.getcwd(),
    }


@dataclass
class RunResults:
    """A results file's rows, its run's settings and its corrections."""

    path: Path  # the results file
    rows: list[dict[str, Any]]  # as written: path, label, top_k [{label, prob}], error, true_label
    settings: dict[str, Any] = field(default_factory=dict)  # the sidecar; {} when the run wrote none
    corrections: dict[str, Correction] = field(default_factory=dict)  # results path -> the reviewers' label

    @property
    def labels_path(self) -> Path:
        return labels_path_for(self.path)

    @property
    def class_names(self) -> list[str]:
        """The run's classes (the sidecar's; else every class the rows name, in order of first mention)."""
        if self.settings.get("classes"):
            return list(self.settings["classes"])
        names: dict[str, None] = {}
        for row in self.rows:
            for item in row.get("top_k") or []:
                names.setdefault(item["label"], None)
        return list(names)

    def image_file(self, n: int) -> Path | None:
        """Row ``n``'s image file, resolved against the folder classify ran in (a dataset row's id names no file:
        callers find it missing)."""
        text = self.rows[n].get("path")
        if not isinstance(text, str) or not text:
            return None
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = Path(self.settings.get("cwd") or os.getcwd()) / path
        return path

    def final_label(self, n: int) -> str | None:
        """Row ``n``'s answer with the corrections applied: the reviewer's class, None for an image marked unknown
        or an error row, else the prediction."""
        return final_label(self.rows[n], self.corrections.get(self.rows[n]["path"]))

    def reload_corrections(self) -> None:
        self.corrections = read_corrections(self.labels_path)


def final_label(row: dict[str, Any], correction: Correction | None) -> str | None:
    if correction is not None:
        return correction.label
    return row.get("label") if row.get("error") is None else None


def load_results(path: str | os.PathLike) -> RunResults:
    """Read a results file classify wrote (.jsonl, .json, .parquet), its sidecar and its labels file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"results file '{path}' does not exist; give the file `vlmcls classify … -o FILE` wrote.")
    suffix = path.suffix.lower()
    if suffix not in RESULT_SUFFIXES:
        raise ConfigError(f"results file '{path}' has suffix '{path.suffix}'; use the .jsonl, .json or .parquet "
                          "classify wrote (CSV flattens the top-k).")
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(str(path)).to_pylist()
        elif suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
        else:
            with open(path, encoding="utf-8") as fh:
                rows = [json.loads(line) for line in fh if line.strip()]
    except (OSError, ValueError) as exc:
        raise ConfigError(f"results file '{path}' cannot be read: {exc}.") from exc
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "path" in r for r in rows):
        raise ConfigError(f"results file '{path}' does not hold classify's rows (objects with 'path', 'label', "
                          "'top_k').")
    for row in rows:
        row.setdefault("top_k", [])
        row.setdefault("error", None)
        row.setdefault("true_label", None)
    settings: dict[str, Any] = {}
    sidecar = run_settings_path(path)
    if sidecar.is_file():
        try:
            settings = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"run settings '{sidecar}' cannot be read ({exc}); re-run classify to write it.") from exc
    return RunResults(path, rows, settings, read_corrections(labels_path_for(path)))
