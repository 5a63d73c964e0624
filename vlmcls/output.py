"""Writing predictions to CSV, JSONL or JSON, chosen by the file's suffix.

Strict JSON only: a NaN or infinity is refused (VlmclsError), never written as the invalid ``NaN``. A file name that
is not valid UTF-8 (Linux allows any bytes) is kept losslessly: Python reads it with surrogate escapes
(``os.fsdecode``); JSON and JSONL write each escape as a ``\\udcXX`` sequence, which ``json.loads`` turns back
into the same string (``os.fsencode`` of it is the original bytes), and CSV writes the name's original bytes.
"""

from __future__ import annotations

import csv
import errno
import itertools
import json
import math
import operator
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, TextIO

import numpy as np

from .errors import ConfigError, OutputError, VlmclsError
from .gcpause import paused_gc

__all__ = ["OUTPUT_SUFFIXES", "write_rows", "write_json", "json_text", "check_output_path"]

OUTPUT_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


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
        return _csv_text(";".join(f"{d['label']}:{d['prob']:.4f}" for d in value))
    if isinstance(value, (list, dict)):
        return _csv_text(json.dumps(value, ensure_ascii=False))
    if isinstance(value, str):
        return _csv_text(value)
    return "" if value is None else value


# OWASP's CSV-injection rule: a cell starting with one of these is a formula in Excel, LibreOffice and Sheets
# (`=HYPERLINK("http://evil.example","x").png`), so it gets a leading apostrophe, which they show as text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_text(text: str) -> str:
    """A text cell safe to open in a spreadsheet: no formula start, no raw control characters (see README: the
    JSONL and Parquet outputs keep the raw text)."""
    from .report.html import visible_controls

    text = visible_controls(text)
    return "'" + text if text.startswith(_FORMULA_START) else text


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
    plain = (pred.explanation is None and not _open_world(pred) and type(path) is str and type(pred.label) in (str, type(None))
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
_TEXT_OR_NONE = (str, type(None))
_TEXT_OR_NONE_SET = set(_TEXT_OR_NONE)
_first, _second = operator.itemgetter(0), operator.itemgetter(1)
_FIELDS = [operator.attrgetter(name) for name in ("path", "label", "error", "true_label", "top_k", "explanation")]


def _null_or_string(value: str | None) -> str:
    return "null" if value is None else _string(value)


def prediction_text(preds: Sequence[Any]) -> str:
    """``"".join(prediction_line(p) for p in preds)``, the plain predictions (no explanation, text fields, finite
    float probabilities) written many at once: rows of one shape (k, with or without a true label) are one
    ``%``-format of all their cells, every probability is rounded and written in numpy (:func:`rounded_texts`) and
    each label's JSON is made once. (A 48,000-image re-run spent 0.8 s writing its rows one item at a time.)"""
    paths, labels, errors, trues, tops, explanations = (list(map(get, preds)) for get in _FIELDS)
    if None not in paths and set(map(type, paths)) <= {str} and set(map(type, labels)) <= _TEXT_OR_NONE_SET \
            and set(map(type, errors)) <= _TEXT_OR_NONE_SET and len(set(map(len, tops))) == 1 \
            and set(map(type, trues)) in ({str}, {type(None)}) and set(map(id, explanations)) == {id(None)} \
            and not any(_open_world(p) for p in preds):
        # the usual case, checked column by column: one shape
        text = _same_shape_text(paths, labels, errors, trues if trues[0] is not None else None, tops)
        if text is not None:
            return text
    lines: list[str | None] = [None] * len(preds)
    shapes: dict[tuple[int, bool], list[int]] = {}  # (k, has a true label) -> rows
    for n, pred in enumerate(preds):
        path = pred.path if pred.path is not None else pred.id
        if (pred.explanation is None and not _open_world(pred) and type(path) is str and type(pred.label) in _TEXT_OR_NONE
                and type(pred.error) in _TEXT_OR_NONE and type(pred.true_label) in _TEXT_OR_NONE):
            shapes.setdefault((len(pred.top_k), pred.true_label is not None), []).append(n)
        else:
            lines[n] = prediction_line(pred)
    for (k, has_true), rows in shapes.items():
        group = [preds[n] for n in rows]
        text = _same_shape_text([pred.path if pred.path is not None else pred.id for pred in group],
                                [pred.label for pred in group], [pred.error for pred in group],
                                [pred.true_label for pred in group] if has_true else None,
                                [pred.top_k for pred in group])
        if text is None:  # an odd item somewhere: each row its own way (which refuses NaN)
            for n in rows:
                lines[n] = prediction_line(preds[n])
            continue
        for n, line in zip(rows, text.split("\n")):
            lines[n] = line + "\n"
    return "".join(lines)  # type: ignore[arg-type]


def _open_world(pred: Any) -> bool:
    """Whether a row carries the open world's fields (unknown_score, labels): those take the general path."""
    return getattr(pred, "unknown_score", None) is not None or getattr(pred, "labels", None) is not None


def _same_shape_text(paths: list[str], labels: list[str | None], errors: list[str | None],
                     trues: list[str] | None, tops: list[list[tuple[str, float]]]) -> str | None:
    """The JSONL text of plain rows (these columns) whose top-k all have the same length, all with a true label
    or (``trues`` None) none; None when an item is not (text, finite float)."""
    k = len(tops[0]) if tops else 0
    pairs = list(itertools.chain.from_iterable(tops))
    names, probs = list(map(_first, pairs)), list(map(_second, pairs))
    if not set(map(type, names)) <= {str} or not set(map(type, probs)) <= {float}:
        return None
    return _cells_text(paths, labels, errors, trues, names, np.array(probs, dtype=np.float64), k)


def _cells_text(paths: list[str], labels: list[str | None], errors: list[str | None], trues: list[str] | None,
                names: list[str], values: np.ndarray, k: int) -> str | None:
    """The JSONL text of rows of one shape from their columns: ``names`` and ``values`` [N·k] their top-k, flat."""
    if not np.isfinite(values).all():
        return None
    fields = {None: "null"}  # a label's, error's or true label's JSON, made once
    fields.update((value, _string(value)) for value in {*labels, *errors, *(trues or ())} - {None})
    item = {name: f'{{"label": {_string(name)}, "prob": ' for name in set(names)}
    width = 3 + 2 * k + (trues is not None)  # cells per row
    cells: list[str | None] = [None] * (len(paths) * width)
    cells[0::width] = list(map(_string, paths))
    cells[1::width] = list(map(fields.__getitem__, labels))
    texts = rounded_texts(values)
    for j in range(k):
        cells[2 + 2 * j::width] = list(map(item.__getitem__, names[j::k]))
        cells[3 + 2 * j::width] = texts[j::k]
    cells[2 + 2 * k::width] = list(map(fields.__getitem__, errors))
    if trues is not None:
        cells[3 + 2 * k::width] = list(map(fields.__getitem__, trues))
    row = ('{"path": %s, "label": %s, "top_k": [' + ", ".join(["%s%s}"] * k) + '], "error": %s'
           + (', "true_label": %s}' if trues is not None else "}") + "\n")
    text = (row * len(paths)) % tuple(cells)
    return text if text.isascii() else _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def rounded_texts(values: np.ndarray) -> list[str]:
    """``[repr(round(v, 6)) for v in values]`` (finite float64 values), worked out in numpy for the values in
    [0, 1] that are float32 values (every probability vlmcls computes): v × 10⁶ is then exact in float64 (24 by
    14 significant bits), so ``rint`` rounds it exactly as ``round`` does (half to even), and the text of the
    rounded value is its six decimals without trailing zeros, or ``d e-0x`` below 10⁻⁴, as ``repr`` writes it.
    Any other value is rounded one by one. (Rounding and ``repr`` cost a microsecond per value.)"""
    digits = np.rint(values * 1e6)
    exact = ~np.signbit(values) & (values <= 1) & (values.astype(np.float32).astype(np.float64) == values)
    d = np.where(exact, digits, 0).astype(np.int32)  # [M] in 0 … 10⁶
    buf = np.zeros((len(d), 9), np.uint8)  # "0." + six digits without trailing zeros, NUL-padded, then ","
    buf[:, 0], buf[:, 1], buf[:, 8] = ord("0"), ord("."), ord(",")
    rest, zeros, trailing = d.copy(), np.zeros(len(d), np.int32), np.ones(len(d), bool)
    for column in range(7, 1, -1):  # the last digit first
        digit = rest % 10
        rest //= 10
        trailing &= digit == 0
        zeros += trailing
        buf[:, column] = digit + ord("0")
    buf[:, :8][np.arange(8)[None, :] >= 8 - zeros[:, None]] = 0
    small = d < 100  # below 10⁻⁴ (and 0): repr's exponent form, from a table
    buf[small, :8] = _SMALL_TEXTS[d[small]]
    buf[d == 1_000_000, :8] = _ONE_TEXT
    texts = buf[buf != 0].tobytes().decode("ascii").split(",")[:-1]
    for i in np.flatnonzero(~exact).tolist():
        texts[i] = repr(round(float(values[i]), 6))
    return texts


def _padded(texts: list[str], width: int = 8) -> np.ndarray:
    return np.array([list(t.encode("ascii").ljust(width, b"\0")) for t in texts], dtype=np.uint8)


_SMALL_TEXTS = _padded([repr(round(d * 1e-6, 6)) for d in range(100)])  # "0.0", "1e-06" … "9.9e-05"
_ONE_TEXT = _padded(["1.0"])[0]


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
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise output_error(path, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def output_error(path: str | Path, exc: OSError) -> OutputError:
    """A failed write as one line: which file, what happened, what to do (the old file is kept)."""
    if isinstance(exc, OutputError):
        return exc
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
            errno.EFBIG: "the file-size limit was reached (ulimit -f)", errno.EROFS: "the filesystem is read-only",
            errno.EACCES: "permission denied", errno.EPERM: "permission denied"}.get(exc.errno or 0,
                                                                                   exc.strerror or str(exc))
    return OutputError(f"cannot write '{path}': {what}; the previous file, if any, is unchanged. "
                                       "Free space, raise the limit or choose another output path, then re-run "
                                       "(computed features and answers are cached).", exc.errno)


_ROWS_PER_WRITE = 8192  # rows formatted and written together: bounds the text held at once


def table_text(table: Any, start: int, stop: int) -> str:
    """The JSONL lines of rows ``start:stop`` of a :class:`~vlmcls.results.ResultTable`, from its columns: rows of
    one shape (classified or error, with or without a true label) are one ``%``-format of their cells; a row with
    an explanation, or an odd value, is written on its own (which refuses NaN)."""
    paths = table.write_paths(start, stop)  # this chunk only: the writer calls once per 8,192 rows
    labels, errors, trues = table.labels[start:stop], table.errors[start:stop], table.true_labels[start:stop]
    notes = table.explanations[start:stop] if table.explanations else None
    count, k = stop - start, table.k
    plain = (table.unknown_scores is None and table.label_sets is None  # the open world's rows: the general path
             and set(map(type, paths)) <= {str} and set(map(type, labels)) <= _TEXT_OR_NONE_SET
             and set(map(type, errors)) <= _TEXT_OR_NONE_SET and set(map(type, trues)) <= _TEXT_OR_NONE_SET)
    names = np.asarray(table.class_names + [""], dtype=object)
    lines: list[str | None] = [None] * count
    groups: dict[tuple[bool, bool], list[int]] = {}
    if plain and notes is None and None not in labels and set(errors) == {None} \
            and set(map(type, trues)) in ({str}, {type(None)}):
        groups[(True, trues[0] is not None)] = list(range(count))  # the usual case: one shape
    else:
        for n in range(count):
            if not plain or (notes is not None and notes[n] is not None):
                lines[n] = prediction_line(table.prediction(start + n))
            else:
                groups.setdefault((errors[n] is None, trues[n] is not None), []).append(n)
    for (classified, has_true), rows in groups.items():
        width = k if classified else 0
        at = np.asarray(rows, np.int64) + start
        text = _cells_text([paths[n] for n in rows], [labels[n] for n in rows], [errors[n] for n in rows],
                           [trues[n] for n in rows] if has_true else None,
                           names[table.top_index[at, :width]].ravel().tolist(),
                           table.top_prob[at, :width].astype(np.float64).ravel(), width)
        if text is None:  # an odd value somewhere: each row its own way
            for n in rows:
                lines[n] = prediction_line(table.prediction(start + n))
            continue
        for n, line in zip(rows, text.split("\n")):
            lines[n] = line + "\n"
    return "".join(lines)  # type: ignore[arg-type]


def write_result(result: Any, path: str | Path) -> Path:
    """Write a run's rows from its result table (a ClassificationResult or a ResultTable), atomically: .jsonl and
    .parquet from the columns (no row objects), .csv and .json through the rows."""
    table = getattr(result, "table", result)
    path = check_output_path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _write_parquet(table, path)
    if suffix != ".jsonl":
        return write_rows((table.prediction(n) for n in range(len(table))), path)
    with atomic_open(path) as fh:
        for start in range(0, len(table), _ROWS_PER_WRITE):
            fh.write(table_text(table, start, min(start + _ROWS_PER_WRITE, len(table))))
    return path


def _write_parquet(table: Any, path: Path) -> Path:
    """The rows as Parquet, in the Ray shards' columns (``index`` = input position), written to a temporary file
    beside ``path`` and renamed over it (a crash leaves the old file)."""
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table.arrow(), str(tmp))
        os.replace(tmp, path)
    except OSError as exc:
        raise output_error(path, exc) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


@paused_gc()  # 48,000 rows of small dicts and lists: no cycles among them
def write_rows(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write rows atomically (a crash never leaves half a file): .jsonl one object a line, .csv, or .json.
    ``rows`` (dicts, or predictions written as their ``to_dict()``) may be a generator: JSONL is written
    8,192 rows at a time, without holding them all."""
    path = check_output_path(path)
    suffix = path.suffix.lower()
    if suffix != ".jsonl":
        rows = [row.to_dict() if hasattr(row, "to_dict") else row for row in rows]
    # CSV has no escapes: a non-UTF-8 file name is written as its original bytes (surrogateescape).
    with atomic_open(path, errors="surrogateescape" if suffix == ".csv" else "strict") as fh:
        if suffix == ".jsonl":
            rows = iter(rows)
            while part := list(itertools.islice(rows, _ROWS_PER_WRITE)):  # predictions written straight from
                if all(map(hasattr, part, itertools.repeat("to_dict"))):    # their fields, many at once
                    fh.write(prediction_text(part))
                else:
                    fh.write("".join(prediction_line(row) if hasattr(row, "to_dict") else json_text(row) + "\n"
                                     for row in part))
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
