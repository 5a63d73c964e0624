"""Writing predictions to CSV, JSONL or JSON, chosen by the file's suffix.

Strict JSON only: a NaN or infinity is refused (VlmclsError), never written as the invalid ``NaN``. A file name that
is not valid UTF-8 (Linux allows any bytes) is kept losslessly: Python reads it with surrogate escapes
(``os.fsdecode``); JSON and JSONL write each escape as a ``\\udcXX`` sequence, which ``json.loads`` turns back
into the same string (``os.fsencode`` of it is the original bytes), and CSV writes the name's original bytes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, TextIO

from .errors import ConfigError, VlmclsError
from .gcpause import paused_gc

__all__ = ["OUTPUT_SUFFIXES", "write_rows", "write_json", "json_text", "check_output_path"]

OUTPUT_SUFFIXES = (".csv", ".jsonl", ".json")


def check_output_path(path: str | Path, suffixes: tuple[str, ...] = OUTPUT_SUFFIXES, what: str = "output",
                      hint: str | None = None) -> Path:
    """Fail before any work when the file's suffix is not one of ``suffixes``, it names a folder or a read-only
    file, or its folder cannot be created or written."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{what} '{path}' is a folder; give a file name inside it, e.g. '{path / ('out' + suffixes[0])}'.")
    if path.suffix.lower() not in suffixes:
        hint = hint or f"use one of {', '.join(suffixes)}"
        raise ConfigError(f"{what} '{path}' has suffix '{path.suffix}'; {hint}.")
    if path.exists() and (not os.access(path, os.W_OK) or not path.stat().st_mode & 0o222):
        # os.replace would swap a read-only file out silently: a 0444 file is the user saying "keep this".
        raise ConfigError(f"{what} '{path}' is read-only; make it writable (chmod u+w) or choose another file.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{what} '{path}': its folder '{path.parent}' cannot be created ({exc.strerror}); "
                          "choose a folder you can write.") from exc
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} '{path}': the folder '{path.parent}' is not writable; choose a folder you can write.")
    return path


def _csv_cell(value: Any) -> Any:
    if isinstance(value, list) and value and isinstance(value[0], dict) and "label" in value[0]:
        return ";".join(f"{d['label']}:{d['prob']:.4f}" for d in value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else value


_SURROGATE = re.compile("[\ud800-\udfff]")


def json_text(value: Any, indent: int | None = None) -> str:
    """Strict JSON (VlmclsError on NaN or infinity) that any UTF-8 writer can write: the surrogate escapes of a
    non-UTF-8 file name become ``\\udcXX`` JSON escapes (lossless), everything else stays readable text."""
    encoder = _STRICT_JSON if indent is None else json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=indent)
    try:
        text = encoder.encode(value)  # json.dumps(value, ensure_ascii=False, indent=indent, allow_nan=False)
    except ValueError as exc:
        raise VlmclsError(f"refusing to write a NaN or infinite number as JSON ({exc}); this is a bug in the step "
                          "that produced it, please report it") from exc
    if text.isascii():  # nothing to escape (the common case, checked at C speed)
        return text
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


_STRICT_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False)  # one encoder for every row, not one per row


def prediction_line(pred: Any) -> str:
    """``json_text(pred.to_dict()) + "\n"`` for a :class:`~vlmcls.results.Prediction`, written straight from its
    fields (a 48,000-image re-run spent a third of its time building row dicts and encoding them); a prediction
    with an explanation, or with a field that is not a plain string, takes the general path."""
    path = pred.path if pred.path is not None else pred.id
    plain = (pred.explanation is None and type(path) is str and type(pred.label) in (str, type(None))
             and type(pred.error) in (str, type(None)) and type(pred.true_label) in (str, type(None)))
    if not plain:
        return json_text(pred.to_dict()) + "\n"
    items = []
    for label, prob in pred.top_k:
        prob = round(prob, 6) if type(prob) is float else prob
        if type(label) is not str or type(prob) is not float or not math.isfinite(prob):
            return json_text(pred.to_dict()) + "\n"  # raises on NaN as the general path does
        items.append(f'{{"label": {_string(label)}, "prob": {float.__repr__(prob)}}}')
    text = (f'{{"path": {_string(path)}, "label": {_null_or_string(pred.label)}, "top_k": [{", ".join(items)}], '
            f'"error": {_null_or_string(pred.error)}'
            + (f', "true_label": {_string(pred.true_label)}}}' if pred.true_label is not None else "}"))
    if not text.isascii():
        text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text + "\n"


_string = json.encoder.encode_basestring  # what the encoder above writes for a str (C speed)


def _null_or_string(value: str | None) -> str:
    return "null" if value is None else _string(value)


@contextmanager
def atomic_open(path: str | Path, errors: str = "strict") -> Iterator[TextIO]:
    """A UTF-8 text handle whose content replaces ``path`` only when the block ends without an error, so a crash
    never leaves half a file. A plain open underneath: the file gets the user's umask. ``errors``: how text that
    is not valid UTF-8 (surrogate escapes) is written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", errors=errors, newline="") as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@paused_gc()  # 48,000 rows of small dicts and lists: no cycles among them
def write_rows(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write rows atomically (a crash never leaves half a file): .jsonl one object a line, .csv, or .json.
    ``rows`` (dicts, or predictions written as their ``to_dict()``) may be a generator: JSONL is written as the
    rows come, without holding them all."""
    path = check_output_path(path)
    suffix = path.suffix.lower()
    if suffix != ".jsonl":
        rows = [row.to_dict() if hasattr(row, "to_dict") else row for row in rows]
    # CSV has no escapes: a non-UTF-8 file name is written as its original bytes (surrogateescape).
    with atomic_open(path, errors="surrogateescape" if suffix == ".csv" else "strict") as fh:
        if suffix == ".jsonl":
            write = fh.write
            for row in rows:  # a Prediction is written straight from its fields
                write(prediction_line(row) if hasattr(row, "to_dict") else json_text(row) + "\n")
        elif suffix == ".json":
            fh.write(json_text(rows, indent=1) + "\n")
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
    return path


def write_json(path: str | Path, value: Any, indent: int = 1) -> Path:
    """Write one JSON document atomically (strict JSON: NaN is refused, not written)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json_text(value, indent) + "\n"  # fails before any write
    with atomic_open(path) as fh:
        fh.write(text)
    return path
