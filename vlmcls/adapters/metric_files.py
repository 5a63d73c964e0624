"""Reading label-metric files: hierarchies (parent/child edges) and named distance matrices.

Hierarchy files, chosen by suffix:

- ``.json``: a list of ``[parent, child]`` pairs, a list of ``{"parent": …, "child": …}`` objects, a mapping
  ``{parent: [child, …]}``, or a nested mapping ``{root: {child: {grandchild: {}}}}`` (``{}``/``null``/``[]`` = leaf).
- ``.csv`` / ``.tsv``: two columns, parent then child; an optional header ``parent,child`` (or ``child,parent``,
  which swaps the columns).
- anything else is text: one edge per line, ``parent<TAB>child`` or ``parent -> child``; blank lines and lines
  starting with ``#`` are skipped.

Distance files: ``.csv`` with a header row of names and the name of each row in its first column, or ``.npy``
with the names beside it (a list, or a text file with one name per line, or a JSON list; by default the file
next to the ``.npy`` with the suffix ``.txt`` or ``.json``).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError

__all__ = ["read_hierarchy_file", "read_distance_file", "read_names_file"]

Edge = tuple[str, str]


def _existing(path: str | os.PathLike, what: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{what} '{file}' does not exist; pass the path of an existing file.")
    return file


def _read_text(file: Path, what: str) -> str:
    from ..sources.textfiles import read_text_file  # size-limited, BOM/UTF-16 aware: a ConfigError, never a crash

    return read_text_file(file, what)


def _name(value: Any, file: Path, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"hierarchy file '{file}': {where} has the label {value!r}; labels must be non-empty strings."
        )
    return value.strip()


def read_hierarchy_file(path: str | os.PathLike) -> tuple[list[Edge], list[str]]:
    """Read a hierarchy file into ``(parent, child)`` edges and the labels that appear without an edge."""
    file = _existing(path, "hierarchy file")
    text = _read_text(file, "hierarchy file")
    suffix = file.suffix.lower()
    if suffix == ".json":
        edges, lone = _hierarchy_from_json(text, file)
    elif suffix in (".csv", ".tsv"):
        edges, lone = _hierarchy_from_csv(text, file, "\t" if suffix == ".tsv" else ","), []
    else:
        edges, lone = _hierarchy_from_text(text, file), []
    if not edges and not lone:
        raise ConfigError(f"hierarchy file '{file}' holds no edges; write one 'parent,child' pair per line.")
    return edges, lone


def _hierarchy_from_json(text: str, file: Path) -> tuple[list[Edge], list[str]]:
    from ..sources.textfiles import parse_json

    data = parse_json(text, "hierarchy file", file)
    edges: list[Edge] = []
    lone: list[str] = []
    if isinstance(data, list):
        for number, item in enumerate(data):
            where = f"item {number}"
            if isinstance(item, dict) and {"parent", "child"} <= item.keys():
                edges.append((_name(item["parent"], file, where), _name(item["child"], file, where)))
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                edges.append((_name(item[0], file, where), _name(item[1], file, where)))
            else:
                raise ConfigError(
                    f"hierarchy file '{file}': {where} is {item!r}; expected [parent, child] or "
                    '{"parent": …, "child": …}.'
                )
        return edges, lone
    if isinstance(data, dict):
        _walk_mapping(data, None, edges, lone, file)
        return edges, lone
    raise ConfigError(
        f"hierarchy file '{file}' holds a JSON {type(data).__name__}; expected a list of edges or a mapping."
    )


def _walk_mapping(mapping: dict, parent: str | None, edges: list[Edge], lone: list[str], file: Path) -> None:
    for key, children in mapping.items():
        node = _name(key, file, f"key {key!r}")
        if parent is not None:
            edges.append((parent, node))
        elif not children:
            lone.append(node)
        if children is None or children == [] or children == {}:
            continue
        if isinstance(children, dict):
            _walk_mapping(children, node, edges, lone, file)
        elif isinstance(children, list):
            for child in children:
                if isinstance(child, dict):
                    _walk_mapping(child, node, edges, lone, file)
                else:
                    edges.append((node, _name(child, file, f"a child of {node!r}")))
        else:
            raise ConfigError(
                f"hierarchy file '{file}': the children of {node!r} are {children!r}; "
                "expected a list of names or a nested mapping."
            )


def _hierarchy_from_csv(text: str, file: Path, delimiter: str) -> list[Edge]:
    rows = [row for row in csv.reader(text.splitlines(), delimiter=delimiter) if any(cell.strip() for cell in row)]
    swap = False
    if rows and [cell.strip().lower() for cell in rows[0]] in (["parent", "child"], ["child", "parent"]):
        swap = rows[0][0].strip().lower() == "child"
        rows = rows[1:]
    edges = []
    for number, row in enumerate(rows, start=1):
        if len(row) != 2:
            raise ConfigError(
                f"hierarchy file '{file}': row {number} is {row!r}; expected exactly two columns, parent and child."
            )
        parent, child = (_name(cell, file, f"row {number}") for cell in row)
        edges.append((child, parent) if swap else (parent, child))
    return edges


def _hierarchy_from_text(text: str, file: Path) -> list[Edge]:
    edges = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "\t" in line:
            parts = line.split("\t")
        elif "->" in line:
            parts = line.split("->")
        else:
            parts = line.split()
        if len(parts) != 2:
            raise ConfigError(
                f"hierarchy file '{file}': line {number} is {line!r}; write 'parent<TAB>child' or 'parent -> child'."
            )
        edges.append((_name(parts[0], file, f"line {number}"), _name(parts[1], file, f"line {number}")))
    return edges


def read_names_file(path: str | os.PathLike) -> list[str]:
    """Read label names: a JSON list, or text with one name per line (blank lines skipped)."""
    file = _existing(path, "names file")
    text = _read_text(file, "names file")
    if file.suffix.lower() == ".json":
        from ..sources.textfiles import parse_json

        names = parse_json(text, "names file", file)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"names file '{file}' must hold a JSON list of strings.")
        return [n.strip() for n in names]
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_distance_file(
    path: str | os.PathLike, names: Sequence[str] | str | os.PathLike | None = None
) -> tuple[list[str], np.ndarray]:
    """Read a named square distance matrix from ``.csv`` or ``.npy``; returns ``(names, distances [L, L])``."""
    file = _existing(path, "distance file")
    if file.suffix.lower() == ".npy":
        return _distances_from_npy(file, names)
    if names is not None:
        raise ConfigError(f"distance file '{file}' is a CSV, which names its rows itself; drop the names argument.")
    return _distances_from_csv(file)


def _distances_from_npy(file: Path, names: Sequence[str] | str | os.PathLike | None) -> tuple[list[str], np.ndarray]:
    if names is None:
        beside = [file.with_suffix(".txt"), file.with_suffix(".json")]
        found = [candidate for candidate in beside if candidate.is_file()]
        if not found:
            raise ConfigError(
                f"distance file '{file}' needs the names of its rows: pass names= (a list or a file with one name "
                f"per line), or put them in '{beside[0]}'."
            )
        names = found[0]
    label_names = read_names_file(names) if isinstance(names, (str, os.PathLike)) else [str(n) for n in names]
    try:
        matrix = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"could not read distance file '{file}' as a .npy array: {exc}") from exc
    return label_names, np.asarray(matrix, dtype=np.float64)


def _distances_from_csv(file: Path) -> tuple[list[str], np.ndarray]:
    rows = [row for row in csv.reader(_read_text(file, "distance file").splitlines()) if row]
    if len(rows) < 2:
        raise ConfigError(f"distance file '{file}' needs a header row of names and one row per name.")
    column_names = [cell.strip() for cell in rows[0][1:]]
    row_names, values = [], []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(column_names) + 1:
            raise ConfigError(
                f"distance file '{file}': row {number} has {len(row) - 1} values; the header names "
                f"{len(column_names)} columns."
            )
        row_names.append(row[0].strip())
        try:
            values.append([float(cell) for cell in row[1:]])
        except ValueError as exc:
            raise ConfigError(
                f"distance file '{file}': row {number} holds a value that is not a number: {exc}"
            ) from exc
    if sorted(row_names) != sorted(column_names):
        missing = sorted(set(column_names) ^ set(row_names))
        raise ConfigError(
            f"distance file '{file}': the row names and the column names differ (only on one side: "
            f"{', '.join(repr(n) for n in missing[:10])}); the matrix must be square and named the same both ways."
        )
    if len(set(row_names)) != len(row_names):
        raise ConfigError(f"distance file '{file}' names a row twice; each label must appear once.")
    matrix = np.asarray(values, dtype=np.float64)  # [L, L] columns in header order
    column_of = {name: position for position, name in enumerate(column_names)}
    matrix = matrix[:, [column_of[name] for name in row_names]]  # columns reordered by name to match the rows
    return row_names, matrix
