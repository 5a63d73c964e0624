"""Writing predictions to CSV, JSONL or JSON, chosen by the file's suffix."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from .errors import ConfigError

__all__ = ["OUTPUT_SUFFIXES", "write_rows", "write_json", "check_output_path"]

OUTPUT_SUFFIXES = (".csv", ".jsonl", ".json")


def check_output_path(path: str | Path) -> Path:
    """Fail before any work when the output suffix is unknown or its folder cannot be created."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(f"output '{path}' has suffix '{path.suffix}'; use one of {', '.join(OUTPUT_SUFFIXES)}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _csv_cell(value: Any) -> Any:
    if isinstance(value, list) and value and isinstance(value[0], dict) and "label" in value[0]:
        return ";".join(f"{d['label']}:{d['prob']:.4f}" for d in value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else value


def write_rows(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write rows atomically (a crash never leaves half a file): .jsonl one object a line, .csv, or .json."""
    path = check_output_path(path)
    rows = list(rows)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            suffix = path.suffix.lower()
            if suffix == ".jsonl":
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            elif suffix == ".json":
                json.dump(rows, fh, ensure_ascii=False, indent=1)
            else:
                fields: list[str] = []
                for row in rows:
                    fields.extend(k for k in row if k not in fields)
                if "top_k" in fields:  # the top-1 probability is what people sort by in a spreadsheet
                    fields.insert(fields.index("label") + 1 if "label" in fields else 0, "prob")
                writer = csv.DictWriter(fh, fieldnames=fields)
                writer.writeheader()
                for row in rows:
                    cells = {k: _csv_cell(v) for k, v in row.items()}
                    if "top_k" in row:
                        cells["prob"] = f"{row['top_k'][0]['prob']:.6f}" if row["top_k"] else ""
                    writer.writerow(cells)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, value: Any) -> Path:
    """Write one JSON document atomically (strict JSON: NaN is refused, not written)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(value, ensure_ascii=False, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
