"""Writing predictions to CSV, JSONL or JSON, chosen by the file's suffix.

Strict JSON only: a NaN or infinity is refused (VlmclsError), never written as the invalid ``NaN``. A file name that
is not valid UTF-8 (Linux allows any bytes) is kept losslessly: Python reads it with surrogate escapes
(``os.fsdecode``); JSON and JSONL write each escape as a ``\\udcXX`` sequence, which ``json.loads`` turns back
into the same string (``os.fsencode`` of it is the original bytes), and CSV writes the name's original bytes.
"""

from __future__ import annotations

import csv
import json
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
    ``rows`` may be a generator: JSONL is written as the rows come, without holding them all."""
    path = check_output_path(path)
    suffix = path.suffix.lower()
    if suffix != ".jsonl":
        rows = list(rows)
    # CSV has no escapes: a non-UTF-8 file name is written as its original bytes (surrogateescape).
    with atomic_open(path, errors="surrogateescape" if suffix == ".csv" else "strict") as fh:
        if suffix == ".jsonl":
            write = fh.write
            for row in rows:
                write(json_text(row) + "\n")
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
