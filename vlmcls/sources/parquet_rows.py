"""The rows of a dataset's Parquet files, read the way datasets' own streaming reads them: the footer and the label
column up front, each image when it is decoded, one row group at a time.

Local paths and fsspec URLs (``hf://datasets/ORG/NAME@REV/...``, as datasets resolves a hub dataset's files) alike:
nothing is copied into datasets' Arrow cache, so a hub dataset is not downloaded whole before the first image is
encoded. datasets' ``IterableDataset`` is not used for the images: it has no row count and no random access, and
vlmcls needs each row's label before scoring and each image readable alone (one Ray task per row group).
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from .columns import dataset_records, image_data_of, label_names, load_hf, pick_image_column, pick_label_column
from .records import DatasetLocation, ImageData, ImageRecord

__all__ = ["ParquetRows", "read_parquet_rows", "open_parquet"]


@dataclass(frozen=True)
class ParquetRows:
    """A split's Parquet files listed: one record per row (``fetch`` reads its image), where Ray reads them, and
    the label column's class names when it is a ClassLabel."""

    records: list[ImageRecord]
    location: DatasetLocation  # (file, row group, rows) parts, in row order; records without fetch
    class_names: list[str] | None


def open_parquet(file: str):
    """A ``pyarrow.parquet.ParquetFile`` over a local path or an fsspec URL (range reads: only what is read is
    fetched). Close it after use."""
    import pyarrow.parquet as pq

    if "://" not in file:
        return pq.ParquetFile(file)
    import fsspec

    handle = fsspec.open(file, "rb").open()
    try:
        return pq.ParquetFile(handle)
    except BaseException:
        handle.close()
        raise


def read_parquet_rows(files: list[str], name: str, split_name: str, source: str, image_column: str | None = None,
                      label_column: str | None = None, base_dir: str | None = None) -> ParquetRows:
    """List the rows of ``files`` (one split, in order) from their footers and label column; no image is read."""
    import datasets

    def footer(file: str):
        def read(_):
            with open_parquet(file) as parquet:
                return parquet.metadata, parquet.schema_arrow
        return load_hf(read, source)

    metas = []
    features = None
    for file in files:
        meta, schema = footer(file)
        metas.append(meta)
        if features is None:
            features = datasets.Features.from_arrow_schema(schema)
    column = pick_image_column(features, image_column, name)
    label_column = pick_label_column(features, label_column, name)
    labels: list[str | None] = []
    for file, meta in zip(files, metas):
        if label_column is None:
            labels += [None] * meta.num_rows
            continue

        def read_labels(_, file=file):
            with open_parquet(file) as parquet:  # only the label column's pages are read
                return parquet.read(columns=[label_column]).column(label_column).to_pylist()
        labels += label_names(load_hf(read_labels, source), features[label_column])
    parts = tuple((file if "://" in file else os.path.abspath(file), group, meta.row_group(group).num_rows)
                  for file, meta in zip(files, metas) for group in range(meta.num_row_groups))
    images = _RowGroupImages(parts, column, base_dir)
    records = dataset_records(name, split_name, labels, images.read)
    location = DatasetLocation(dataset_records(name, split_name, labels, None), column, base_dir, parts=parts)
    feature = features[label_column] if label_column is not None else None
    class_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    return ParquetRows(records, location, class_names)


class _RowGroupImages:
    """Each row's image cell, read a row group at a time (the image column only) and kept for the next rows: the
    decode threads ask for rows in about listing order, so each row group is read once."""

    _KEEP = 4  # row groups held: a few decode threads may straddle a boundary

    def __init__(self, parts: tuple[tuple[str, int, int], ...], column: str, base_dir: str | None):
        self._parts = parts
        self._column = column
        self._base_dir = base_dir
        self._starts = []
        first = 0
        for _, _, rows in parts:
            self._starts.append(first)
            first += rows
        self._groups: OrderedDict[int, list] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, index: int) -> ImageData:
        part = bisect.bisect_right(self._starts, index) - 1
        cells = self._cells(part)
        return image_data_of(cells[index - self._starts[part]], self._column, self._base_dir)

    def _cells(self, part: int) -> list[Any]:
        with self._lock:  # one read per row group, however many threads ask for it at once
            cells = self._groups.get(part)
            if cells is None:
                file, group, _ = self._parts[part]
                with open_parquet(file) as parquet:
                    cells = parquet.read_row_group(group, columns=[self._column]).column(self._column).to_pylist()
                self._groups[part] = cells
                while len(self._groups) > self._KEEP:
                    self._groups.popitem(last=False)
            else:
                self._groups.move_to_end(part)
            return cells
