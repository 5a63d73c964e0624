"""Safe decoding of one image: bytes in (read by :func:`vlmcls.sources.listing.read_image_data`), RGB out.

``load_image`` reads and decodes one source to an RGB ``PIL.Image`` or raises :class:`~vlmcls.errors.ImageError`
with a short human reason ("empty file", "truncated image", "not an image", "not found: /abs/path",
"not a regular file", "image too large: …"). ``decode_image`` does the decoding half for bytes already read, which
is how the batch pipeline (:mod:`vlmcls.encode.images`) hashes and decodes the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ConfigError, ImageError
from ..sources.listing import DEFAULT_MAX_BYTES, ImageRecord, read_file_bytes, read_image_data

__all__ = ["DEFAULT_MAX_PIXELS", "load_image", "decode_image", "content_key", "digest_of", "thumbnail_jpeg"]

log = logging.getLogger(__name__)

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
ImageSource = Union["ImageRecord", str, os.PathLike, bytes]


def load_image(
    source: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    min_side: int | None = None,
    heif_thumbnails: bool = False,
) -> Image.Image:
    """Decode one image to RGB: EXIF orientation applied, alpha composited on white, 16-bit scaled to 8.

    Raises ImageError with a short reason for missing, empty, truncated, corrupt, non-image, too-large files and
    files that are not regular files. ``max_pixels`` is checked against the header before any pixel is decoded;
    ``None`` leaves only PIL's hard limit (2 × ``PIL.Image.MAX_IMAGE_PIXELS``). ``min_side``: decode a JPEG at the
    smallest DCT scale (1/2, 1/4, 1/8) whose short side is still at least this many pixels (see
    :func:`decode_image`); None decodes every pixel. ``heif_thumbnails``: a HEIC/HEIF may decode its embedded
    thumbnail instead (see :func:`decode_image`).
    """
    data, _ = _read(source, max_bytes)
    return decode_image(data, max_pixels=max_pixels, min_side=min_side, heif_thumbnails=heif_thumbnails)


def decode_image(
    data: bytes | Image.Image, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, min_side: int | None = None,
    heif_thumbnails: bool = False,
) -> Image.Image:
    """Decode encoded bytes (or check and convert a PIL image) as :func:`load_image` does.

    With ``min_side``, libjpeg's DCT scaling decodes a large JPEG at 1/2, 1/4 or 1/8 size straight from the
    compressed data (the smallest scale keeping the short side ≥ ``min_side``): a 12 MP photo meant for a
    224-pixel model costs a quarter of the time and a sixtieth of the memory. With ``heif_thumbnails`` too, a
    HEIC/HEIF photo decodes its smallest embedded thumbnail with both sides ≥ ``min_side`` when it has one
    (:func:`_heif_thumbnail`; a separately compressed picture, so an option, not the default). Other formats decode
    in full.
    """
    if isinstance(data, Image.Image):
        _check_size(data.size, max_pixels)
        return _to_rgb(_oriented(data))
    if not data:
        raise ImageError("empty file")
    return _decode(data, max_pixels, min_side, heif_thumbnails)


def content_key(source: ImageSource, *, max_bytes: int | None = DEFAULT_MAX_BYTES) -> str:
    """sha256 of the image's bytes (hex): a renamed or re-listed image keeps its key."""
    data, _ = _read(source, max_bytes)
    return digest_of(data)


def digest_of(data: bytes | Image.Image) -> str:
    """The content key of bytes read by :func:`~vlmcls.sources.listing.read_image_data` (a decoded image a dataset
    holds is keyed by its pixels)."""
    if isinstance(data, Image.Image):
        digest = hashlib.sha256(f"{data.mode}:{data.size[0]}x{data.size[1]}:".encode())
        digest.update(data.tobytes())
        return digest.hexdigest()
    return hashlib.sha256(data).hexdigest()


def _read(source: ImageSource, max_bytes: int | None) -> tuple[bytes | Image.Image, os.stat_result | None]:
    if isinstance(source, ImageRecord):
        return read_image_data(source, max_bytes)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return read_image_data(ImageRecord(id="<bytes>", path=None, label=None, source_index=0,
                                           fetch=lambda: bytes(source)), max_bytes)
    if isinstance(source, (str, os.PathLike)):
        return read_file_bytes(Path(source), max_bytes)
    raise ConfigError(f"cannot load an image from a {type(source).__name__}; give a record, a path or bytes.")


def _decode(data: bytes, max_pixels: int | None, min_side: int | None = None,
            heif_thumbnails: bool = False) -> Image.Image:
    head = data[:12]
    _register_heif_if_needed(head)
    try:
        # PIL warns above MAX_IMAGE_PIXELS: silenced here because the limit that counts is ours, checked
        # right below with the exact size in the message. PIL still raises above twice its limit.
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_safe_formats())  # reads the header only
    except Image.DecompressionBombError as exc:
        # PIL refused before we could see the size; its message still carries the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pil_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        limit = min(max_pixels, pil_limit) if max_pixels is not None else pil_limit
        count = found.group(1) if found else "too many"
        raise ImageError(f"image too large: {count} pixels exceeds limit {limit}") from None
    except UnidentifiedImageError:
        if _is_heif(head) and "HEIF" not in Image.OPEN:
            raise ImageError("HEIC/HEIF image, but the HEIF decoder is missing: pip install pillow-heif") from None
        if head.startswith(_IMAGE_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP") or _is_heif(head):
            # a damaged image rather than some other kind of file
            raise ImageError("corrupt image (unreadable header)") from None
        raise ImageError("not an image") from None
    except EOFError:
        raise ImageError("truncated image") from None
    except Exception as exc:  # a plugin choking on a malformed header
        raise ImageError(_failure_reason(exc)) from exc
    with image:  # closes PIL's hold on the handle; everything returned below is a fresh image
        _check_size(image.size, max_pixels)
        if min_side and image.format in ("JPEG", "MPO") and min(image.size) >= 2 * min_side:
            image.draft(image.mode, (min_side, min_side))  # picks the smallest scale with both sides ≥ min_side
        elif min_side and heif_thumbnails and image.format == "HEIF":
            _heif_thumbnail(image, min_side)
        try:
            image.load()
        except Exception as exc:  # hostile input makes decoders raise nearly anything; none may stop a run
            raise ImageError(_failure_reason(exc)) from exc
        return _to_rgb(_oriented(image))


def _heif_thumbnail(image: Image.Image, min_side: int) -> None:
    """Have a HEIC/HEIF image load its smallest embedded thumbnail whose both sides are ≥ ``min_side``, when it
    holds one that is a scaled copy of the picture (pillow-heif's ``draft`` checks the aspect ratio, crop,
    rotation, mirroring and colour profile). An iPhone photo carries a 320×240 one: that is ~10 ms to decode
    instead of ~1 s of CPU for the 12 MP grid of tiles. Without a fitting thumbnail every pixel is decoded."""
    try:
        image.draft(image.mode, (min_side, min_side))
    except Exception as exc:  # a thumbnail is only a shortcut; the picture itself still decodes (or fails) below
        log.debug("not using the HEIF thumbnail: %s", exc)


def _is_heif(head: bytes) -> bool:
    """ISO base media files (HEIC, HEIF, AVIF) start with a size and an ``ftyp`` box."""
    return head[4:8] == b"ftyp"


_HEIF_LOCK = threading.Lock()


def _register_heif_if_needed(head: bytes) -> None:
    """Load pillow-heif (~70 ms of imports) only when a HEIC/HEIF file turns up; AVIF is Pillow's own."""
    if "HEIF" in Image.OPEN or not _is_heif(head) or head[8:12] in (b"avif", b"avis"):
        return
    with _HEIF_LOCK:
        if "HEIF" in Image.OPEN:
            return
        try:
            import pillow_heif
        except ImportError:  # the error row says what to install
            return
        pillow_heif.register_heif_opener()


def _safe_formats() -> tuple[str, ...]:
    return _SAFE_FORMATS + (("HEIF",) if "HEIF" in Image.OPEN else ())


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


def thumbnail_jpeg(image: Image.Image, size: int) -> bytes:
    """A small JPEG (longest side ``size``) of a decoded image, for report galleries."""
    small = image.copy()
    small.thumbnail((size, size))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=75)
    return buffer.getvalue()
