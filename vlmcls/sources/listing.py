"""Image sources: folders, path-list files, single images and HF datasets, listed as :class:`ImageRecord` s.

Nothing is decoded here (see :mod:`vlmcls.encode.images`): a listed file that is missing or broken fails later, in
``load_image``, as an error row. :func:`read_image_data` is the one place an image's bytes are read: regular files
only, bounded in size, so a FIFO or a link to ``/dev/zero`` named ``*.png`` is an error row, not a hang.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ImageError
from ..gcpause import paused_gc

__all__ = ["IMAGE_EXTENSIONS", "DEFAULT_MAX_BYTES", "ImageRecord", "ImageData", "DatasetLocation", "list_images",
           "locate_dataset", "read_image_data", "read_file_bytes", "image_data_of"]

log = logging.getLogger(__name__)

from .columns import (  # noqa: F401  (image_data_of: what callers import from here)
    arrow_parts,
    dataset_columns,
    dataset_records,
    image_data_of,
    list_dataset_rows,
    load_hf,
)
from .hub_datasets import is_hub_dataset, open_hub_dataset
from .parquet_rows import read_parquet_rows
from .records import (  # noqa: F401  (what callers import from here)
    _ACCEPTED,
    DEFAULT_MAX_BYTES,
    IMAGE_EXTENSIONS,
    DatasetLocation,
    ImageData,
    ImageRecord,
    _listed_files,
    read_file_bytes,
    read_image_data,
)


def list_images(
    source: str | os.PathLike | Any,
    *,
    recursive: bool = True,
    image_column: str | None = None,
    label_column: str | None = None,
    split: str | None = None,
    follow_links: bool | None = None,
) -> list[ImageRecord]:
    """List the images of a folder, a path-list file, one image file or an HF dataset, in a stable order.

    Nothing is decoded here: a listed file that is missing or broken fails later, in ``load_image``. In a folder,
    a symlink to a folder is followed only when it stays inside the folder given (``follow_links`` True, or
    ``$VLMCLS_FOLLOW_LINKS=1``, follows any), and every folder is walked once, however many links lead to it.
    ``image_column``, ``label_column`` and ``split`` apply to datasets only; an in-memory
    ``datasets.Dataset`` / ``DatasetDict`` is accepted too.
    """
    if isinstance(source, str) and source.startswith("wds:"):
        from .shards import list_shards, refuse_columns

        refuse_columns(source, image_column, label_column)
        return list_shards(source, split).records
    if is_hub_dataset(source):
        return open_hub_dataset(source, split, image_column, label_column).records
    found = _dataset_source(source)
    if found is not None:
        loaded, name, base_dir = _load_dataset(*found, split)
        return list_dataset_rows(loaded, name, base_dir, image_column, label_column, split)
    text = os.fspath(source)
    path = Path(text).expanduser()
    dataset_options = {"image_column": image_column, "label_column": label_column, "split": split}
    given = [name for name, value in dataset_options.items() if value is not None]
    if given:
        raise ConfigError(f"'{given[0]}' applies to datasets only, but '{text}' is not a dataset. Drop it.")
    if path.is_dir():
        if follow_links is None:
            follow_links = os.environ.get("VLMCLS_FOLLOW_LINKS", "").strip().lower() in ("1", "true", "yes")
        return _list_folder(path, recursive, follow_links)
    if path.suffix.lower() == ".txt":
        return _list_path_file(path)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return [ImageRecord(id=str(path), path=path, label=None, source_index=0)]
    raise ConfigError(f"cannot read images from '{text}'. {_ACCEPTED}")


def locate_dataset(
    source: str | os.PathLike | Any,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    split: str | None = None,
) -> DatasetLocation | None:
    """Where the images of an HF dataset source are, found without reading one; None when ``source`` is no dataset.

    A ``.parquet`` file is listed from its metadata and label column; a ``save_to_disk`` folder (or an in-memory
    dataset backed by Arrow files) by its Arrow files; an ``imagefolder:`` dataset by its image files.
    """
    if isinstance(source, str) and source.startswith("wds:"):
        return _locate_shards(source, image_column, label_column, split)
    if is_hub_dataset(source):
        return open_hub_dataset(source, split, image_column, label_column, locate=True).location
    found = _dataset_source(source)
    if found is None:
        return None
    kind, where, text = found
    if kind == "parquet":
        return _locate_parquet(where, text, image_column, label_column, split)
    loaded, name, base_dir = _load_dataset(kind, where, text, split)
    dataset, split_name, column, labels = dataset_columns(loaded, name, image_column, label_column, split)
    records = dataset_records(name, split_name, labels, None)
    base = os.path.abspath(base_dir) if base_dir is not None else None
    if kind == "imagefolder":  # its image column holds paths only
        try:
            files = [image_data_of(v, column, base) for v in dataset.with_format("arrow")[column].to_pylist()]
        except ImageError:
            files = []
        if files and all(isinstance(f, Path) for f in files):
            return DatasetLocation(records, column, base, files=tuple(str(f) for f in files))
    return DatasetLocation(records, column, base, parts=arrow_parts(dataset, text or name))


def _locate_shards(source: str, image_column: str | None, label_column: str | None,
                   split: str | None) -> DatasetLocation:
    """A ``wds:`` source's records and the tar members its images are, shard by shard."""
    from .shards import list_shards, refuse_columns, shard_location

    refuse_columns(source, image_column, label_column)
    return shard_location(list_shards(source, split))


def _locate_parquet(path: Path, text: str, image_column: str | None, label_column: str | None,
                    split: str | None) -> DatasetLocation:
    """A Parquet file's rows as ``Dataset.from_parquet`` would list them, from its metadata and label column."""
    file = os.path.abspath(path)
    rows = read_parquet_rows([file], path.stem, split or "train", text, image_column, label_column,
                             os.path.dirname(file))
    return rows.location


def _dataset_source(source: str | os.PathLike | Any) -> tuple[str, Any, str] | None:
    """(kind, where, the source as given) when ``source`` names an HF dataset: ``memory`` (a Dataset/DatasetDict
    object), ``imagefolder`` (a folder), ``saved`` (a save_to_disk folder), ``parquet`` (a file); None for other
    sources."""
    if _is_hf_dataset(source):
        return "memory", source, ""
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError(f"cannot list images from a {type(source).__name__}. {_ACCEPTED}")
    text = os.fspath(source)
    if text.startswith("imagefolder:"):
        folder = Path(text[len("imagefolder:"):]).expanduser()
        if not folder.is_dir():
            raise ConfigError(
                f"'{text}': '{folder}' is not a folder. Write imagefolder:DIR with an existing DIR."
            )
        return "imagefolder", folder, text
    path = Path(text).expanduser()
    if not path.exists():
        raise ConfigError(f"image source '{text}' does not exist. {_ACCEPTED}")
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        return "saved", path, text
    if path.suffix.lower() == ".parquet" and path.is_file():
        return "parquet", path, text
    return None


def _load_dataset(kind: str, where: Any, text: str, split: str | None) -> tuple[Any, str, Path | None]:
    """(the loaded Dataset or DatasetDict, its name in row ids, the folder relative image paths are read from)."""
    if kind == "memory":
        return where, getattr(getattr(where, "info", None), "dataset_name", None) or "dataset", None
    if kind == "imagefolder":
        loaded = load_hf(lambda ds: ds.load_dataset("imagefolder", data_dir=str(where), split=split), text)
        return loaded, where.name, where
    if kind == "saved":
        return load_hf(lambda ds: ds.load_from_disk(str(where)), text), where.name, where
    loaded = load_hf(lambda ds: ds.Dataset.from_parquet(str(where), split=split or "train"), text)
    return loaded, where.stem, where.parent


@paused_gc()
def _list_folder(root: Path, recursive: bool, follow_links: bool = False) -> list[ImageRecord]:
    # Strings, not Path objects: at 48,000 images pathlib's parsing was most of a re-run's listing; each record
    # builds its Path when asked for it (_ListedFile).
    base = str(root)
    folders: list[tuple[tuple[str, ...], str, list[str]]] = []  # (parts relative to root, prefix, image names)
    mixed = False  # a folder holds images and sub-folders: those interleave by name
    visited: set[str] = set()  # real paths, so a symlink loop is walked once
    home = os.path.join(os.path.realpath(root), "")  # a link to '/' walked the whole filesystem, /proc included
    outside: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        if not follow_links and not os.path.join(real, "").startswith(home):
            outside.append(dirpath)
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")] if recursive else []
        relative = os.path.relpath(dirpath, base)
        folder_parts = () if relative == os.curdir else tuple(relative.split(os.sep))
        folder = os.path.join(base, *folder_parts) if base != os.curdir else os.path.join(*folder_parts, "")
        prefix = os.path.join(folder, "") if folder else ""
        names = [name for name in filenames if name[:1] != "." and name.lower().endswith(_IMAGE_SUFFIXES)]
        if names:
            folders.append((folder_parts, prefix, names))
            mixed = mixed or bool(dirnames)
    if outside:
        log.warning("skipped %d linked folders that lead out of '%s' (first: '%s'); set VLMCLS_FOLLOW_LINKS=1 to "
                    "follow them", len(outside), root, outside[0])
    if not folders:
        where = "in or below" if recursive else "directly in"
        raise ConfigError(
            f"no images found {where} '{root}' (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})."
        )
    # Sorted by the parts relative to the root (not strings: independent of the OS separator). An image directly
    # in the root has no class; deeper ones take their first-level folder's name.
    if mixed:
        found = [((*parts, name), prefix + name) for parts, prefix, names in folders for name in names]
        found.sort(key=lambda entry: entry[0])
        return _listed_files([(parts[0] if len(parts) > 1 else None, text) for parts, text in found])
    folders.sort(key=lambda folder: folder[0])  # no folder is inside another that has images: the same order
    listed: list[tuple[str | None, str]] = []
    for parts, prefix, names in folders:
        names.sort()
        label = parts[0] if parts else None
        listed += [(label, prefix + name) for name in names]
    return _listed_files(listed)


_IMAGE_SUFFIXES = tuple(IMAGE_EXTENSIONS)  # str.endswith takes a tuple: one call per file name


@paused_gc()
def _list_path_file(list_file: Path) -> list[ImageRecord]:
    try:
        lines = list_file.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the path list '{list_file}': {exc}. Save it as UTF-8 text.") from exc
    records: list[ImageRecord] = []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry).expanduser()
        if not path.is_absolute():
            path = list_file.parent / path  # relative to the list, so the list can travel with its images
        records.append(ImageRecord(id=str(path), path=path, label=None, source_index=len(records)))
    if not records:
        raise ConfigError(f"the path list '{list_file}' names no images. Write one image path per line.")
    return records


def _is_hf_dataset(obj: Any) -> bool:
    module = type(obj).__module__ or ""
    return module.startswith("datasets.") and type(obj).__name__ in {"Dataset", "DatasetDict"}
