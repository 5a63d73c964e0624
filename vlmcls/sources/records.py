"""What a listed image is (:class:`ImageRecord`, a dataset's :class:`DatasetLocation`) and the one safe read of its
bytes: regular files only, size-limited, read once (the content hash and the pixels come from the same bytes)."""

from __future__ import annotations

import os
import stat
from dataclasses import FrozenInstanceError, dataclass, field
from pathlib import Path
from typing import Callable, Union

from PIL import Image

from ..errors import ImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)
# The most bytes one image file may hold: far above any photo (a 12 MP phone JPEG is 3-5 MB, an 89 Mpx 16-bit TIFF
# ~540 MB), low enough that a few decode threads reading at once cannot exhaust memory.
DEFAULT_MAX_BYTES = 1 << 30
_ACCEPTED = (
    "Give a folder of images (class sub-folders allowed), a .txt file with one image path per line, "
    "an image file, a dataset folder written by datasets' save_to_disk, a .parquet file, imagefolder:DIR, "
    "wds:SHARDS (webdataset tar shards) or hf-dataset:ORG/NAME (or hf-dataset:DIR, a local copy)."
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
