"""Image sources: folders, path-list files, single images and HF datasets, listed as :class:`ImageRecord` s.

Nothing is decoded here (see :mod:`vlmcls.encode.images`): a listed file that is missing or broken fails later, in
``load_image``, as an error row. :func:`read_image_data` is the one place an image's bytes are read: regular files
only, bounded in size, so a FIFO or a link to ``/dev/zero`` named ``*.png`` is an error row, not a hang.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import stat
from dataclasses import FrozenInstanceError, dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

from PIL import Image

from ..errors import ConfigError, ImageError, MissingExtraError, SourceUnreachableError
from ..gcpause import paused_gc

__all__ = ["IMAGE_EXTENSIONS", "DEFAULT_MAX_BYTES", "ImageRecord", "ImageData", "DatasetLocation", "list_images",
           "locate_dataset", "read_image_data", "read_file_bytes", "image_data_of"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)
# The most bytes one image file may hold: far above any photo (a 12 MP phone JPEG is 3-5 MB, an 89 Mpx 16-bit TIFF
# ~540 MB), low enough that a few decode threads reading at once cannot exhaust memory.
DEFAULT_MAX_BYTES = 1 << 30
_ACCEPTED = (
    "Give a folder of images (class sub-folders allowed), a .txt file with one image path per line, "
    "an image file, a dataset folder written by datasets' save_to_disk, a .parquet file, imagefolder:DIR, "
    "wds:SHARDS (webdataset tar shards) or hf-dataset:ORG/NAME."
)

# What a dataset row hands over: encoded bytes, a file it points at, or an already decoded PIL image.
ImageData = Union[bytes, Path, Image.Image]


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One image to classify: where it comes from and, when the source says so, its class."""

    id: str  # the path as given, or "dataset[split]/index" for dataset rows
    path: Path | None  # the file for folder, list and single-file sources; None for dataset rows
    label: str | None  # class sub-folder name or the dataset's label name; None when the source has none
    source_index: int  # position in the source listing (the row index for datasets)
    fetch: Callable[[], ImageData] | None = field(default=None, repr=False, compare=False)  # dataset rows

    @property
    def path_text(self) -> str | None:
        """``path`` as a string (None without a path)."""
        return os.fspath(self.path) if self.path is not None else None


class _ListedFile(ImageRecord):
    """An :class:`ImageRecord` of a file found by listing a folder, equal to the one built with its Path; the
    Path is built when first asked for (a cached re-run of 48,000 files needs only the text: building the Paths
    was a third of its listing)."""

    __slots__ = ("path_text", "_built")  # path_text: a plain slot here (read once per file on a re-run)

    def __init__(self, id: str, path: str | os.PathLike, label: str | None, source_index: int,
                 fetch: Callable[[], ImageData] | None = None):
        init = object.__setattr__  # frozen, as ImageRecord
        init(self, "id", id)
        init(self, "label", label)
        init(self, "source_index", source_index)
        init(self, "fetch", fetch)
        init(self, "path_text", os.fspath(path))
        init(self, "_built", path if isinstance(path, Path) else None)

    @property
    def path(self) -> Path:  # type: ignore[override]
        built = self._built
        if built is None:
            built = Path(self.path_text)
            object.__setattr__(self, "_built", built)
        return built

    def __setattr__(self, name: str, value: object) -> None:  # frozen like ImageRecord, its own slots too
        raise FrozenInstanceError(f"cannot assign to field '{name}'")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field '{name}'")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageRecord):
            return NotImplemented
        return ((self.id, self.path, self.label, self.source_index)
                == (other.id, other.path, other.label, other.source_index))

    __hash__ = ImageRecord.__hash__

    def __repr__(self) -> str:
        return (f"ImageRecord(id={self.id!r}, path={self.path!r}, label={self.label!r}, "
                f"source_index={self.source_index!r})")

    def __reduce__(self):  # pickles and copies as the plain record
        return ImageRecord, (self.id, self.path, self.label, self.source_index, self.fetch)


def _listed_files(found: list[tuple[str | None, str]]) -> list[ImageRecord]:
    """``_ListedFile(text, text, label, index)`` for each (label, text) of a listing, with the slots set straight
    (half the cost of calling ``__init__`` per file)."""
    new, slots = object.__new__, (ImageRecord.id, ImageRecord.label, ImageRecord.source_index, ImageRecord.fetch,
                                  _ListedFile.path_text, _ListedFile._built)
    set_id, set_label, set_index, set_fetch, set_text, set_built = (slot.__set__ for slot in slots)
    records = []
    append = records.append
    for index, (label, text) in enumerate(found):
        record = new(_ListedFile)
        set_id(record, text)
        set_label(record, label)
        set_index(record, index)
        set_fetch(record, None)
        set_text(record, text)
        set_built(record, None)
        append(record)
    return records


@dataclass(frozen=True)
class DatasetLocation:
    """An HF dataset on disk as a reader in another process sees it (the Ray engine): its rows as records (ids and
    labels as :func:`list_images` gives them, without ``fetch``) and where each row's image is."""

    records: list[ImageRecord]
    column: str  # the image column
    base_dir: str | None  # relative image paths in the column are read from this folder
    # (file, Parquet row group or None for one of datasets' Arrow files, rows), in row order
    parts: tuple[tuple[str, int | None, int], ...] = ()
    files: tuple[str, ...] = ()  # or, for an imagefolder: dataset, each row's image file
    # or, for wds: shards, per shard (tar file, ((row, member offset, member size), ...)): one Ray task each
    shards: tuple[tuple[str, tuple[tuple[int, int, int], ...]], ...] = ()
    failed: dict[int, str] = field(default_factory=dict)  # rows known bad at listing (a missing shard): reasons

# -- reading --------------------------------------------------------------------------------------------


def read_image_data(record: ImageRecord, max_bytes: int | None = DEFAULT_MAX_BYTES
                    ) -> tuple[bytes | Image.Image, os.stat_result | None]:
    """The encoded bytes of one record (a decoded image for dataset rows that hold one), and the file's stat as
    read (None for bytes and images held by a dataset). Raises :class:`ImageError` with a short reason."""
    data: ImageData
    if record.fetch is not None:
        try:
            data = record.fetch()
        except ImageError:
            raise
        except Exception as exc:  # an arrow or file-system error inside datasets
            raise ImageError(f"cannot read the dataset row ({type(exc).__name__}: {exc})") from exc
    elif record.path is not None:
        data = record.path
    else:
        raise ImageError("the record has neither a path nor a dataset row")
    if isinstance(data, Path):
        return read_file_bytes(data, max_bytes)
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        if not data:
            raise ImageError("empty file")
        if max_bytes is not None and len(data) > max_bytes:
            raise ImageError(f"file too large: {len(data)} bytes exceeds limit {max_bytes}")
    return data, None


def read_file_bytes(path: str | os.PathLike, max_bytes: int | None = DEFAULT_MAX_BYTES) -> tuple[bytes, os.stat_result]:
    """All bytes of a regular file, read through one descriptor, and that descriptor's stat.

    Opened non-blocking, so a FIFO without a writer cannot hang the open; anything but a regular file (FIFO, device,
    socket, folder) is refused before a byte is read; at most ``max_bytes + 1`` bytes are ever read, so a file that
    grows while it is read (or lies about its size) is refused too.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        # The absolute path: a list file's relative entries are read from the list's folder, not the working one.
        raise ImageError(f"not found: {os.path.abspath(path)}") from None
    except IsADirectoryError:
        raise ImageError("is a folder, not an image file") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as exc:  # a dangling link loop, a name too long, an I/O error
        raise ImageError(f"cannot read file ({exc.strerror or exc})") from exc
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ImageError("is a folder, not an image file")
        if not stat.S_ISREG(info.st_mode):
            raise ImageError("not a regular file (a pipe, device or socket); give image files only")
        if info.st_size == 0:
            raise ImageError("empty file")
        limit = max_bytes if max_bytes is not None else info.st_size + (1 << 30)
        if info.st_size > limit:
            raise ImageError(f"file too large: {info.st_size} bytes exceeds limit {limit}")
        chunks, total, want = [], 0, info.st_size + 1  # +1: sees a file that grew since fstat
        while want > 0:
            block = os.read(fd, min(want, limit + 1 - total))
            if not block:
                break
            chunks.append(block)
            total += len(block)
            if total > limit:
                raise ImageError(f"file too large: more than {limit} bytes")
            want = 1 << 20
        if total == 0:
            raise ImageError("empty file")
        return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), info
    except OSError as exc:
        raise ImageError(f"cannot read file ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)


# -- sources --------------------------------------------------------------------------------------------


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
        from .shards import list_shards

        _only_split(source, image_column, label_column)
        return list_shards(source, split).records
    if isinstance(source, str) and source.startswith(HUB_DATASET_PREFIX):
        loaded, name = _load_hub_dataset(source, split)
        return _list_dataset_rows(loaded, name, None, image_column, label_column, split)
    found = _dataset_source(source)
    if found is not None:
        loaded, name, base_dir = _load_dataset(*found, split)
        return _list_dataset_rows(loaded, name, base_dir, image_column, label_column, split)
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


def _only_split(source: str, image_column: str | None, label_column: str | None) -> None:
    """Shards name their members by extension: the column flags do not apply."""
    given = "image_column" if image_column is not None else "label_column" if label_column is not None else None
    if given:
        raise ConfigError(f"'{given}' applies to datasets with columns, not to the shards of '{source}' (images are "
                          "their image members, labels their .cls members). Drop it.")


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
    found = _dataset_source(source)
    if found is None:
        return None
    kind, where, text = found
    if kind == "parquet":
        return _locate_parquet(where, text, image_column, label_column, split)
    loaded, name, base_dir = _load_dataset(kind, where, text, split)
    dataset, split_name, column, labels = _dataset_columns(loaded, name, image_column, label_column, split)
    records = _dataset_records(name, split_name, labels, None)
    base = os.path.abspath(base_dir) if base_dir is not None else None
    if kind == "imagefolder":  # its image column holds paths only
        try:
            files = [image_data_of(v, column, base) for v in dataset.with_format("arrow")[column].to_pylist()]
        except ImageError:
            files = []
        if files and all(isinstance(f, Path) for f in files):
            return DatasetLocation(records, column, base, files=tuple(str(f) for f in files))
    return DatasetLocation(records, column, base, parts=_arrow_parts(dataset, text or name))


def _locate_shards(source: str, image_column: str | None, label_column: str | None,
                   split: str | None) -> DatasetLocation:
    """A ``wds:`` source's records and the tar members its images are, shard by shard."""
    from .shards import list_shards

    _only_split(source, image_column, label_column)
    listing = list_shards(source, split)
    in_shards = {row for _, members in listing.shards for row, _, _ in members}
    failed = {}
    for row, record in enumerate(listing.records):
        if row not in in_shards:
            try:
                record.fetch()
                failed[row] = "no image"
            except ImageError as exc:
                failed[row] = str(exc)
    records = [ImageRecord(r.id, None, r.label, r.source_index) for r in listing.records]
    return DatasetLocation(records, "", None, shards=listing.shards, failed=failed)


def _locate_parquet(path: Path, text: str, image_column: str | None, label_column: str | None,
                    split: str | None) -> DatasetLocation:
    """A Parquet file's rows as ``Dataset.from_parquet`` would list them, from its metadata and label column."""
    import pyarrow.parquet as pq

    def read(what: Callable[[Any, Any], Any]) -> Any:  # what(the open file, the datasets module)
        def load(datasets):
            with pq.ParquetFile(str(path)) as parquet:
                return what(parquet, datasets)
        return _load_hf(load, text)

    meta, features = read(lambda parquet, ds: (parquet.metadata, ds.Features.from_arrow_schema(parquet.schema_arrow)))
    name = path.stem
    column = _pick_image_column(features, image_column, name)
    label_column = _pick_label_column(features, label_column, name)
    if label_column is None:
        labels = [None] * meta.num_rows
    else:
        values = read(lambda parquet, _: parquet.read(columns=[label_column]).column(label_column).to_pylist())
        labels = _label_names(values, features[label_column])
    records = _dataset_records(name, split or "train", labels, None)
    file = os.path.abspath(path)
    parts = tuple((file, group, meta.row_group(group).num_rows) for group in range(meta.num_row_groups))
    return DatasetLocation(records, column, os.path.dirname(file), parts=parts)


def _arrow_parts(dataset: Any, name: str) -> tuple[tuple[str, None, int], ...]:
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
        loaded = _load_hf(lambda ds: ds.load_dataset("imagefolder", data_dir=str(where), split=split), text)
        return loaded, where.name, where
    if kind == "saved":
        return _load_hf(lambda ds: ds.load_from_disk(str(where)), text), where.name, where
    loaded = _load_hf(lambda ds: ds.Dataset.from_parquet(str(where), split=split or "train"), text)
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


# -- HF datasets --------------------------------------------------------------------------------------

HUB_DATASET_PREFIX = "hf-dataset:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_hub_dataset_id(source: str) -> str:
    """The ``ORG/NAME`` of an ``hf-dataset:ORG/NAME`` source; ConfigError when it is not one."""
    name = source[len(HUB_DATASET_PREFIX):]
    if not _HUB_ID.match(name):
        raise ConfigError(f"'{source}' is no hub dataset id. Write hf-dataset:ORG/NAME, e.g. hf-dataset:"
                          "clip-benchmark/wds_cifar10.")
    return name


def _load_hub_dataset(source: str, split: str | None) -> tuple[Any, str]:
    """A hub dataset through ``datasets.load_dataset`` (downloaded once into datasets' cache). Offline and not
    cached: fails in seconds, where datasets would retry for most of a minute."""
    name = check_hub_dataset_id(source)
    from huggingface_hub import constants

    from ..encode.models import _hub_unreachable_reason  # the one probe hub models use too

    cached = (Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}").is_dir()
    if not cached:
        endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
        reason = _hub_unreachable_reason(endpoint)
        if reason is not None:
            raise SourceUnreachableError(
                f"dataset '{name}' must be downloaded from the HF hub ({endpoint}), but {reason} and it is not in "
                "the local hub cache. Where you have network, save it with datasets' save_to_disk (or download its "
                "shards) and give that folder here, or wds:DIR."
            )
    loaded = _load_hf(lambda ds: ds.load_dataset(name, split=split), source)
    return loaded, name.split("/")[-1]



def _is_hf_dataset(obj: Any) -> bool:
    module = type(obj).__module__ or ""
    return module.startswith("datasets.") and type(obj).__name__ in {"Dataset", "DatasetDict"}


def _load_hf(load: Callable[[Any], Any], source: str) -> Any:
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


def _list_dataset_rows(
    loaded: Any,
    name: str,
    base_dir: Path | None,
    image_column: str | None,
    label_column: str | None,
    split: str | None,
) -> list[ImageRecord]:
    dataset, split_name, image_column, labels = _dataset_columns(loaded, name, image_column, label_column, split)
    return _dataset_records(name, split_name, labels, _DatasetImages(dataset, image_column, base_dir).read)


def _dataset_columns(loaded: Any, name: str, image_column: str | None, label_column: str | None,
                     split: str | None) -> tuple[Any, str, str, list[str | None]]:
    """(the split's Dataset, the split's name, the image column, each row's label)."""
    dataset, split_name = _pick_split(loaded, name, split)
    features = dataset.features
    image_column = _pick_image_column(features, image_column, name)
    label_column = _pick_label_column(features, label_column, name)
    if label_column is None:
        return dataset, split_name, image_column, [None] * len(dataset)
    values = dataset.with_format("arrow")[label_column].to_pylist()  # arrow: ~1000x faster than a row loop
    return dataset, split_name, image_column, _label_names(values, features[label_column])


def _dataset_records(name: str, split_name: str, labels: list[str | None],
                     read: Callable[[int], ImageData] | None) -> list[ImageRecord]:
    """One record per row, ``name[split]/index``; ``read(index)`` fetches a row's image (None: read elsewhere)."""
    with paused_gc():  # 48,000 records would trigger full collections that walk every object alive
        return [
            ImageRecord(id=f"{name}[{split_name}]/{index}", path=None, label=label, source_index=index,
                        fetch=functools.partial(read, index) if read is not None else None)
            for index, label in enumerate(labels)
        ]


def _pick_split(loaded: Any, name: str, split: str | None) -> tuple[Any, str]:
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


def _pick_image_column(features: Any, image_column: str | None, name: str) -> str:
    import datasets

    columns = list(features)
    if image_column is not None:
        if image_column not in features:
            raise ConfigError(
                f"dataset '{name}' has no column '{image_column}'. Columns: {', '.join(columns)}."
            )
        return image_column
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


def _pick_label_column(features: Any, label_column: str | None, name: str) -> str | None:
    import datasets

    if label_column is not None:
        if label_column not in features:
            raise ConfigError(
                f"dataset '{name}' has no column '{label_column}'. Columns: {', '.join(features)}."
            )
        return label_column
    class_label_columns = [c for c, f in features.items() if isinstance(f, datasets.ClassLabel)]
    if len(class_label_columns) == 1:
        return class_label_columns[0]
    return "label" if "label" in features else None


def _label_names(values: list, feature: Any) -> list[str | None]:
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        # -1 is datasets' "no label" value
        return [feature.int2str(v) if v is not None and v >= 0 else None for v in values]
    return [None if v is None else str(v) for v in values]


class _DatasetImages:
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


