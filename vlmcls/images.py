"""Image sources and safe decoding: folders, path lists and HF datasets in; RGB images or error rows out.

``list_images`` turns a source into :class:`ImageRecord` s without reading any pixels. ``load_image`` decodes
one record to an RGB ``PIL.Image`` or raises :class:`~vlmcls.errors.ImageError` with a short human reason
("empty file", "truncated image", "not an image", "file not found", "image too large: …").
``iter_decoded_batches`` decodes and preprocesses on a thread pool ahead of the consumer, so decoding overlaps
with encoding, and turns every bad image into an error row instead of stopping.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import re
import threading
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .cache import file_digest
from .errors import ConfigError, ImageError, MissingExtraError

if TYPE_CHECKING:
    import torch

__all__ = [
    "IMAGE_EXTENSIONS",
    "DEFAULT_MAX_PIXELS",
    "ImageRecord",
    "DecodedBatch",
    "list_images",
    "load_image",
    "content_key",
    "iter_decoded_batches",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# PIL's own default (1024**3 / 4 / 3 ≈ 89.5 Mpx, about 256 MiB as RGB); above it we refuse without decoding.
DEFAULT_MAX_PIXELS = 89_478_485

# Only raster formats are tried. PIL would otherwise also accept e.g. EPS (handed to Ghostscript) for a file
# that merely claims to be a .jpg.
Image.init()
_SAFE_FORMATS = tuple(
    f for f in ("JPEG", "MPO", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "PPM", "TGA", "ICO", "AVIF")
    if f in Image.OPEN
)

# `warnings.catch_warnings` swaps process-wide state; the lock keeps our decode threads from interleaving it.
_OPEN_LOCK = threading.Lock()

# The first bytes of the formats above, to tell a damaged image from a file that never was one.
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_ACCEPTED = (
    "Give a folder of images (class sub-folders allowed), a .txt file with one image path per line, "
    "an image file, a dataset folder written by datasets' save_to_disk, a .parquet file, or imagefolder:DIR."
)

# What a dataset row hands over: encoded bytes, a file it points at, or an already decoded PIL image.
ImageData = Union[bytes, Path, Image.Image]
ImageSource = Union["ImageRecord", str, os.PathLike, bytes]


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One image to classify: where it comes from and, when the source says so, its class."""

    id: str  # the path as given, or "dataset[split]/index" for dataset rows
    path: Path | None  # the file for folder, list and single-file sources; None for dataset rows
    label: str | None  # class sub-folder name or the dataset's label name; None when the source has none
    source_index: int  # position in the source listing (the row index for datasets)
    fetch: Callable[[], ImageData] | None = field(default=None, repr=False, compare=False)  # dataset rows


@dataclass
class DecodedBatch:
    """Up to ``batch_size`` decoded images ready to encode, plus the images that failed on the way."""

    records_ok: list[ImageRecord]
    pixels: "torch.Tensor"  # [B, 3, H, W], B = len(records_ok); [0, 3, 0, 0] when nothing decoded
    errors: list[tuple[ImageRecord, str]]  # (record, reason), in input order


# -- sources --------------------------------------------------------------------------------------------


def list_images(
    source: str | os.PathLike | Any,
    *,
    recursive: bool = True,
    image_column: str | None = None,
    label_column: str | None = None,
    split: str | None = None,
) -> list[ImageRecord]:
    """List the images of a folder, a path-list file, one image file or an HF dataset, in a stable order.

    Nothing is decoded here: a listed file that is missing or broken fails later, in ``load_image``.
    ``image_column``, ``label_column`` and ``split`` apply to datasets only; an in-memory
    ``datasets.Dataset`` / ``DatasetDict`` is accepted too.
    """
    if _is_hf_dataset(source):
        name = getattr(getattr(source, "info", None), "dataset_name", None) or "dataset"
        return _list_dataset_rows(source, name, None, image_column, label_column, split)
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError(f"cannot list images from a {type(source).__name__}. {_ACCEPTED}")
    text = os.fspath(source)
    if text.startswith("imagefolder:"):
        folder = Path(text[len("imagefolder:"):]).expanduser()
        if not folder.is_dir():
            raise ConfigError(
                f"'{text}': '{folder}' is not a folder. Write imagefolder:DIR with an existing DIR."
            )
        loaded = _load_hf(lambda ds: ds.load_dataset("imagefolder", data_dir=str(folder), split=split), text)
        return _list_dataset_rows(loaded, folder.name, folder, image_column, label_column, split)

    path = Path(text).expanduser()
    if not path.exists():
        raise ConfigError(f"image source '{text}' does not exist. {_ACCEPTED}")
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        loaded = _load_hf(lambda ds: ds.load_from_disk(str(path)), text)
        return _list_dataset_rows(loaded, path.name, path, image_column, label_column, split)
    if path.suffix.lower() == ".parquet" and path.is_file():
        loaded = _load_hf(lambda ds: ds.Dataset.from_parquet(str(path), split=split or "train"), text)
        return _list_dataset_rows(loaded, path.stem, path.parent, image_column, label_column, split)

    dataset_options = {"image_column": image_column, "label_column": label_column, "split": split}
    given = [name for name, value in dataset_options.items() if value is not None]
    if given:
        raise ConfigError(f"'{given[0]}' applies to datasets only, but '{text}' is not a dataset. Drop it.")
    if path.is_dir():
        return _list_folder(path, recursive)
    if path.suffix.lower() == ".txt":
        return _list_path_file(path)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return [ImageRecord(id=str(path), path=path, label=None, source_index=0)]
    raise ConfigError(f"cannot read images from '{text}'. {_ACCEPTED}")


def _list_folder(root: Path, recursive: bool) -> list[ImageRecord]:
    relative_paths: list[Path] = []
    visited: set[str] = set()  # real paths, so a symlink loop is walked once
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")] if recursive else []
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                relative_paths.append(Path(dirpath, name).relative_to(root))
    if not relative_paths:
        where = "in or below" if recursive else "directly in"
        raise ConfigError(
            f"no images found {where} '{root}' (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})."
        )
    relative_paths.sort(key=lambda rel: rel.parts)  # parts, not strings: independent of the OS separator
    return [
        # An image directly in the root has no class; deeper ones take their first-level folder's name.
        ImageRecord(id=str(root / rel), path=root / rel, label=rel.parts[0] if len(rel.parts) > 1 else None,
                    source_index=index)
        for index, rel in enumerate(relative_paths)
    ]


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
    dataset, split_name = _pick_split(loaded, name, split)
    features = dataset.features
    image_column = _pick_image_column(features, image_column, name)
    label_column = _pick_label_column(features, label_column, name)
    labels = _label_names(dataset, features, label_column) if label_column else [None] * len(dataset)
    rows = _DatasetImages(dataset, image_column, base_dir)
    return [
        ImageRecord(id=f"{name}[{split_name}]/{index}", path=None, label=labels[index], source_index=index,
                    fetch=functools.partial(rows.read, index))
        for index in range(len(dataset))
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


def _label_names(dataset: Any, features: Any, column: str) -> list[str | None]:
    import datasets

    values = dataset.with_format("arrow")[column].to_pylist()  # arrow: ~1000x faster than a row loop
    feature = features[column]
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
        value = self._images[index][self._column]
        if isinstance(value, dict):  # the Image feature's storage: {"bytes": ..., "path": ...}
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        if isinstance(value, Image.Image):
            return value
        if isinstance(value, str) and value:
            path = Path(value).expanduser()
            return path if path.is_absolute() or self._base_dir is None else self._base_dir / path
        raise ImageError(f"no image in column '{self._column}' (found {type(value).__name__})")


# -- decoding -------------------------------------------------------------------------------------------


def load_image(source: ImageSource, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode one image to RGB: EXIF orientation applied, alpha composited on white, 16-bit scaled to 8.

    Raises ImageError with a short reason for missing, empty, truncated, corrupt, non-image and too-large
    files. ``max_pixels`` is checked against the header before any pixel is decoded; ``None`` leaves only
    PIL's hard limit (2 × ``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    data = _resolve(source)
    if isinstance(data, Image.Image):
        _check_size(data.size, max_pixels)
        return _to_rgb(_oriented(data))
    if isinstance(data, bytes):
        if not data:
            raise ImageError("empty file")
        return _decode(io.BytesIO(data), max_pixels)
    try:
        if data.stat().st_size == 0:
            raise ImageError("empty file")
        with open(data, "rb") as handle:
            return _decode(handle, max_pixels)
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except IsADirectoryError:
        raise ImageError("is a folder, not an image file") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as exc:  # I/O errors of the file system itself, not of the image
        raise ImageError(f"cannot read file ({exc.strerror or exc})") from exc


def content_key(source: ImageSource) -> str:
    """sha256 of the image's bytes (hex): a renamed or re-listed image keeps its key."""
    data = _resolve(source)
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest()
    if isinstance(data, Image.Image):  # a dataset that hands out decoded images: hash the pixels
        digest = hashlib.sha256(f"{data.mode}:{data.size[0]}x{data.size[1]}:".encode())
        digest.update(data.tobytes())
        return digest.hexdigest()
    try:
        return file_digest(data)
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except OSError as exc:
        raise ImageError(f"cannot read file ({exc.strerror or exc})") from exc


def _resolve(source: ImageSource) -> ImageData:
    if isinstance(source, ImageRecord):
        if source.fetch is not None:
            try:
                return source.fetch()
            except ImageError:
                raise
            except Exception as exc:  # an arrow or file-system error inside datasets
                raise ImageError(f"cannot read the dataset row ({type(exc).__name__}: {exc})") from exc
        if source.path is None:
            raise ImageError("the record has neither a path nor a dataset row")
        return source.path
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        return Path(source)
    raise ConfigError(f"cannot load an image from a {type(source).__name__}; give a record, a path or bytes.")


def _decode(handle: io.BufferedIOBase, max_pixels: int | None) -> Image.Image:
    try:
        # PIL warns above MAX_IMAGE_PIXELS: silenced here because the limit that counts is ours, checked
        # right below with the exact size in the message. PIL still raises above twice its limit.
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(handle, formats=_SAFE_FORMATS)  # reads the header only
    except Image.DecompressionBombError as exc:
        # PIL refused before we could see the size; its message still carries the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pil_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        limit = min(max_pixels, pil_limit) if max_pixels is not None else pil_limit
        count = found.group(1) if found else "too many"
        raise ImageError(f"image too large: {count} pixels exceeds limit {limit}") from None
    except UnidentifiedImageError:
        handle.seek(0)
        head = handle.read(12)
        if head.startswith(_IMAGE_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
            # a damaged image rather than some other kind of file
            raise ImageError("corrupt image (unreadable header)") from None
        raise ImageError("not an image") from None
    except EOFError:
        raise ImageError("truncated image") from None
    except Exception as exc:  # a plugin choking on a malformed header
        raise ImageError(_failure_reason(exc)) from exc
    with image:  # closes PIL's hold on the handle; everything returned below is a fresh image
        _check_size(image.size, max_pixels)
        try:
            image.load()
        except Exception as exc:  # hostile input makes decoders raise nearly anything; none may stop a run
            raise ImageError(_failure_reason(exc)) from exc
        return _to_rgb(_oriented(image))


def _check_size(size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(f"image too large: {width}×{height} pixels exceeds limit {max_pixels}")


def _failure_reason(exc: BaseException) -> str:
    message = str(exc)
    if isinstance(exc, EOFError) or "truncated" in message.lower():
        return "truncated image"
    if isinstance(exc, MemoryError):
        return "image too large: out of memory while decoding"
    if isinstance(exc, Image.DecompressionBombError):
        return "image too large: a frame exceeds PIL's pixel limit"
    detail = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return f"corrupt image ({detail[:200]})"


def _oriented(image: Image.Image) -> Image.Image:
    """A new image turned upright by its EXIF orientation tag (a copy when there is none)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception as exc:  # broken EXIF should cost the orientation, not the image
        log.debug("ignoring unreadable EXIF data: %s", exc)
        return image.copy()


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_rgb(image)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in _ALPHA_MODES:
        # Composite on white: transparent regions of logos and icons are meant to be background, and black
        # (what a plain convert gives) changes what the model sees.
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    try:
        return image.convert("RGB")  # L, 1, CMYK, YCbCr, RGBX, …
    except ValueError as exc:
        raise ImageError(f"unsupported colour mode '{mode}'") from exc


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """Scale 16-bit, 32-bit and float single-channel images to 8 bit (clipping would turn them white)."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))  # [H, W]
    low = float(values.min()) if values.size else 0.0
    high = float(values.max()) if values.size else 0.0
    if image.mode.startswith("I;16"):
        scaled = values / 257.0  # 65535 -> 255, exactly
    elif image.mode == "I" and low >= 0 and high <= 255:
        scaled = values  # 8-bit data in a 32-bit container
    elif image.mode == "I" and low >= 0 and high <= 65535:
        scaled = values / 257.0  # 16-bit data (PGM/TIFF) in a 32-bit container
    elif image.mode == "F" and low >= 0 and high <= 1:
        scaled = values * 255.0
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))  # unknown range: stretch
    else:
        scaled = np.zeros_like(values)
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


# -- batches --------------------------------------------------------------------------------------------


def iter_decoded_batches(
    records: Iterable[ImageRecord],
    preprocess: Callable[[Image.Image], "torch.Tensor"],
    batch_size: int,
    num_workers: int | None = None,
    *,
    prefetch_batches: int = 2,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Iterator[DecodedBatch]:
    """Decode and preprocess ``records`` on threads, ahead of the consumer; yield batches in input order.

    Each batch holds ``batch_size`` decoded images (the last may hold fewer) and the records that failed
    since the previous batch, with their reasons. A failure never stops the iteration. ``num_workers``
    threads decode (default: one per CPU, at most 8; 0 decodes in the calling thread). At most
    ``batch_size * (prefetch_batches + 1)`` records are in flight.
    """
    import torch

    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)

    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got '{batch_size}'.")
    if num_workers < 0 or prefetch_batches < 0:
        raise ConfigError(
            "num_workers and prefetch_batches must be 0 or more, "
            f"got '{num_workers}' and '{prefetch_batches}'."
        )
    decode = functools.partial(_decode_and_preprocess, preprocess=preprocess, max_pixels=max_pixels)
    window = batch_size * (prefetch_batches + 1)
    records_ok: list[ImageRecord] = []
    tensors: list[torch.Tensor] = []
    errors: list[tuple[ImageRecord, str]] = []
    item_shape: tuple[int, ...] = (3, 0, 0)

    def take_batch() -> DecodedBatch:
        nonlocal records_ok, tensors, errors
        pixels = torch.stack(tensors) if tensors else torch.empty((0, *item_shape))  # [B, 3, H, W]
        batch = DecodedBatch(records_ok=records_ok, pixels=pixels, errors=errors)
        records_ok, tensors, errors = [], [], []
        return batch

    for record, outcome in _in_order(records, decode, num_workers, window):
        if isinstance(outcome, str):
            errors.append((record, outcome))
            continue
        records_ok.append(record)
        tensors.append(outcome)
        item_shape = tuple(outcome.shape)
        if len(records_ok) == batch_size:
            yield take_batch()
    if records_ok or errors:
        yield take_batch()


def _decode_and_preprocess(
    record: ImageRecord, *, preprocess: Callable[[Image.Image], Any], max_pixels: int | None
) -> Any:
    """The preprocessed tensor of one record, or the reason it failed (never raises)."""
    try:
        image = load_image(record, max_pixels=max_pixels)
    except ImageError as exc:
        return str(exc)
    except Exception as exc:  # a bug here must not end a long run; it is logged with its traceback
        log.warning("unexpected error decoding '%s'", record.id, exc_info=True)
        return f"unexpected error ({type(exc).__name__}: {exc})"
    try:
        return preprocess(image)
    except Exception as exc:
        log.warning("preprocessing failed for '%s'", record.id, exc_info=True)
        return f"preprocessing failed ({type(exc).__name__}: {exc})"


def _in_order(
    records: Iterable[ImageRecord], work: Callable[[ImageRecord], Any], num_workers: int, window: int
) -> Iterator[tuple[ImageRecord, Any]]:
    """``(record, work(record))`` in input order, computed by a thread pool up to ``window`` records ahead.

    Threads, not processes: PIL releases the GIL while decoding and resizing, and threads need no pickling
    and no start-up. Measured on 2 busy cores, 256 JPEGs of 500×375 through open_clip's ViT-B-32 transform,
    consumer standing in for a GPU (0.3 s per batch of 32, 2.4 s in all): sequential 5.2 s; threads 1 / 2 / 4:
    3.4 / 3.9 / 3.1 s; torch DataLoader worker processes 1 / 2: 3.9 / 4.6 s.
    """
    if num_workers == 0:
        for record in records:
            yield record, work(record)
        return
    pool = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="vlmcls-decode")
    pending: deque[tuple[ImageRecord, Future]] = deque()
    try:
        for record in records:
            pending.append((record, pool.submit(work, record)))
            if len(pending) >= window:
                done_record, future = pending.popleft()
                yield done_record, future.result()
        while pending:
            done_record, future = pending.popleft()
            yield done_record, future.result()
    finally:  # also runs when the consumer stops early: drop queued work, wait for the running few
        pool.shutdown(wait=True, cancel_futures=True)
