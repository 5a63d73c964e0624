"""The columns of an HF dataset as vlmcls reads them: the split, the image and label columns picked (by feature
type, then by name), ClassLabel ids turned into names, one :class:`ImageRecord` per row and each cell's image read
without decoding (vlmcls decodes it itself, with its guards). Shared by local datasets (:mod:`.listing`) and
``hf-dataset:`` sources (:mod:`.hub_datasets`)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from ..errors import ConfigError, ImageError, MissingExtraError
from ..gcpause import paused_gc
from .records import ImageData, ImageRecord

__all__ = ["load_hf", "list_dataset_rows", "dataset_columns", "dataset_records", "pick_split", "pick_image_column",
           "pick_label_column", "label_names", "DatasetImages", "image_data_of",
           "arrow_parts"]


def load_hf(load: Callable[[Any], Any], source: str) -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise MissingExtraError(
            f"reading '{source}' needs the 'datasets' package: pip install datasets"
        ) from exc
    try:
        return load(datasets)
    except ValueError as exc:  # includes an unknown split
        raise ConfigError(f"cannot load the dataset '{source}': {exc}") from exc
    except Exception as exc:  # datasets raises many kinds: FileNotFoundError, ArrowInvalid, …
        raise ConfigError(
            f"cannot load the dataset '{source}': {type(exc).__name__}: {exc}. "
            "Check that it was written by datasets (save_to_disk, to_parquet) or is a folder of images."
        ) from exc


def list_dataset_rows(
    loaded: Any,
    name: str,
    base_dir: Path | None,
    image_column: str | None,
    label_column: str | None,
    split: str | None,
) -> list[ImageRecord]:
    dataset, split_name, image_column, labels = dataset_columns(loaded, name, image_column, label_column, split)
    return dataset_records(name, split_name, labels, DatasetImages(dataset, image_column, base_dir).read)


def dataset_columns(loaded: Any, name: str, image_column: str | None, label_column: str | None,
                     split: str | None) -> tuple[Any, str, str, list[str | None]]:
    """(the split's Dataset, the split's name, the image column, each row's label)."""
    dataset, split_name = pick_split(loaded, name, split)
    features = dataset.features
    image_column = pick_image_column(features, image_column, name)
    label_column = pick_label_column(features, label_column, name)
    if label_column is None:
        return dataset, split_name, image_column, [None] * len(dataset)
    values = dataset.with_format("arrow")[label_column].to_pylist()  # arrow: ~1000x faster than a row loop
    return dataset, split_name, image_column, label_names(values, features[label_column])


def dataset_records(name: str, split_name: str, labels: list[str | None],
                     read: Callable[[int], ImageData] | None) -> list[ImageRecord]:
    """One record per row, ``name[split]/index``; ``read(index)`` fetches a row's image (None: read elsewhere)."""
    with paused_gc():  # 48,000 records would trigger full collections that walk every object alive
        return [
            ImageRecord(id=f"{name}[{split_name}]/{index}", path=None, label=label, source_index=index,
                        fetch=functools.partial(read, index) if read is not None else None)
            for index, label in enumerate(labels)
        ]


def pick_split(loaded: Any, name: str, split: str | None) -> tuple[Any, str]:
    if type(loaded).__name__ != "DatasetDict":
        own = str(loaded.split) if loaded.split is not None else None
        if split is not None and own is not None and split != own:
            raise ConfigError(
                f"dataset '{name}' holds only the split '{own}', not '{split}'. Drop the split."
            )
        return loaded, own or split or "train"
    splits = list(loaded.keys())
    if split is None and len(splits) == 1:
        return loaded[splits[0]], splits[0]
    if split is None or split not in loaded:
        what = "has several splits" if split is None else f"has no split '{split}'"
        raise ConfigError(
            f"dataset '{name}' {what}; choose one of {', '.join(map(repr, splits))} with split=."
        )
    return loaded[split], split


def _given_column(features: Any, column: str, name: str) -> str:
    """A column the user named, which the dataset must have."""
    if column not in features:
        raise ConfigError(f"dataset '{name}' has no column '{column}'. Columns: {', '.join(features)}.")
    return column


def pick_image_column(features: Any, image_column: str | None, name: str) -> str:
    import datasets

    columns = list(features)
    if image_column is not None:
        return _given_column(features, image_column, name)
    image_columns = [c for c, f in features.items() if isinstance(f, datasets.Image)]
    if len(image_columns) == 1:
        return image_columns[0]
    for fallback in ("image", "img"):
        if not image_columns and fallback in features:
            return fallback
    what = "several image columns" if image_columns else "no image column"
    raise ConfigError(
        f"dataset '{name}' has {what} (columns: {', '.join(columns)}). Pick one with image_column=."
    )


def pick_label_column(features: Any, label_column: str | None, name: str) -> str | None:
    import datasets

    if label_column is not None:
        return _given_column(features, label_column, name)
    class_label_columns = [c for c, f in features.items() if isinstance(f, datasets.ClassLabel)]
    if len(class_label_columns) == 1:
        return class_label_columns[0]
    return "label" if "label" in features else None


def label_names(values: list, feature: Any) -> list[str | None]:
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        # -1 is datasets' "no label" value
        return [feature.int2str(v) if v is not None and v >= 0 else None for v in values]
    return [None if v is None else str(v) for v in values]


class DatasetImages:
    """One image column of a dataset, read without decoding: vlmcls decodes it itself, with its guards."""

    def __init__(self, dataset: Any, column: str, base_dir: Path | None):
        import datasets

        images = dataset.select_columns([column])
        if isinstance(images.features[column], datasets.Image):
            images = images.cast_column(column, datasets.Image(decode=False))
        self._images = images
        self._column = column
        self._base_dir = base_dir

    def read(self, index: int) -> ImageData:
        return image_data_of(self._images[index][self._column], self._column, self._base_dir)


def image_data_of(value: Any, column: str, base_dir: str | os.PathLike | None) -> ImageData:
    """What one cell of a dataset's image column holds: encoded bytes, a file (a relative path is read from
    ``base_dir``) or a decoded image. Raises :class:`ImageError` for a cell without an image."""
    if isinstance(value, dict):  # the Image feature's storage: {"bytes": ..., "path": ...}
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, str) and value:
        path = Path(value).expanduser()
        return path if path.is_absolute() or base_dir is None else Path(base_dir) / path
    raise ImageError(f"no image in column '{column}' (found {type(value).__name__})")


def arrow_parts(dataset: Any, name: str) -> tuple[tuple[str, None, int], ...]:
    """The Arrow files holding a dataset's rows, in row order, with their row counts (read from the files'
    record batch headers; memory-mapped, so no image is read)."""
    import pyarrow as pa

    files = [entry["filename"] for entry in dataset.cache_files]
    parts = []
    if getattr(dataset, "_indices", None) is None:
        for file in files:
            with pa.memory_map(file) as source:
                parts.append((os.path.abspath(file), None, pa.ipc.open_stream(source).read_all().num_rows))
    if not parts or sum(rows for _, _, rows in parts) != len(dataset):
        raise ConfigError(
            f"the rows of dataset '{name}' are not its Arrow files in order (an in-memory dataset, or one with a "
            "select/shuffle applied), so Ray workers cannot read them. Save it with save_to_disk and give that folder."
        )
    return tuple(parts)
