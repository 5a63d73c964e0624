"""Write good, odd and broken image files for tests.

Every ``write_*`` helper takes the path to write and returns it, so tests read as
``path = write_cmyk_jpeg(tmp_path / "c.jpg")``. Colours are chosen so that a wrong conversion shows up in
the pixel values (e.g. a transparent pixel that must come out white, not black). Nothing here touches the
network; dataset helpers import ``datasets`` lazily.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

__all__ = [
    "RED",
    "BLUE",
    "WHITE",
    "solid",
    "write_solid",
    "write_noise_jpeg",
    "write_exif_rotated_jpeg",
    "write_cmyk_jpeg",
    "write_palette_png_with_transparency",
    "write_rgba_png",
    "write_la_png",
    "write_16bit_gray_png",
    "write_1bit_png",
    "write_gray_png",
    "write_png_header_only",
    "write_empty",
    "write_truncated_jpeg",
    "write_random_bytes",
    "write_text_as_image",
    "make_class_tree",
    "make_hf_dataset",
]

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)

# EXIF tag 0x0112: how a viewer must turn the stored pixels to show the picture upright.
_ORIENTATION_TAG = 0x0112


def _parent(path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def solid(color: tuple[int, int, int], size: tuple[int, int] = (16, 12)) -> Image.Image:
    """An in-memory RGB image of one colour (size is width, height)."""
    return Image.new("RGB", size, color)


def write_solid(path: Path, color: tuple[int, int, int] = RED, size: tuple[int, int] = (16, 12)) -> Path:
    """One-colour RGB image; the format follows the suffix (PNG keeps the colour exact)."""
    path = _parent(path)
    solid(color, size).save(path)
    return path


def write_noise_jpeg(path: Path, size: tuple[int, int] = (96, 64), seed: int = 0) -> Path:
    """A JPEG of random pixels: many bytes of entropy-coded data, so cutting it really truncates it."""
    path = _parent(path)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)  # [H, W, 3]
    Image.fromarray(pixels).save(path, "JPEG", quality=95)
    return path


def write_exif_rotated_jpeg(path: Path, size: tuple[int, int] = (40, 20), orientation: int = 6) -> Path:
    """A landscape JPEG stored with an EXIF orientation tag (6 = show it turned 90° clockwise).

    The stored image is blue with a red block in its top-left corner; after orientation 6 the picture is
    portrait and the red block sits in the top-right corner.
    """
    path = _parent(path)
    image = solid(BLUE, size)
    image.paste(RED, (0, 0, size[0] // 4, size[1] // 4))
    exif = Image.Exif()
    exif[_ORIENTATION_TAG] = orientation
    image.save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


def write_cmyk_jpeg(path: Path, cmyk: tuple[int, int, int, int] = (0, 255, 255, 0)) -> Path:
    """A CMYK JPEG; the default ink (no cyan, full magenta and yellow) is red."""
    path = _parent(path)
    Image.new("CMYK", (16, 12), cmyk).save(path, "JPEG", quality=95)
    return path


def write_palette_png_with_transparency(path: Path) -> Path:
    """A palette ("P") PNG: left half palette entry 0 (transparent), right half entry 1 (red)."""
    path = _parent(path)
    image = Image.new("P", (16, 12), 0)
    image.putpalette([0, 0, 0, *RED] + [0, 0, 0] * 254)
    image.paste(1, (8, 0, 16, 12))
    image.save(path, "PNG", transparency=0)
    return path


def write_rgba_png(path: Path) -> Path:
    """RGBA PNG with three columns: fully transparent black, opaque blue, half-transparent black."""
    path = _parent(path)
    image = Image.new("RGBA", (12, 4), (0, 0, 0, 0))
    image.paste((*BLUE, 255), (4, 0, 8, 4))
    image.paste((0, 0, 0, 128), (8, 0, 12, 4))
    image.save(path, "PNG")
    return path


def write_la_png(path: Path) -> Path:
    """Grayscale + alpha PNG, fully transparent black everywhere."""
    path = _parent(path)
    Image.new("LA", (8, 8), (0, 0)).save(path, "PNG")
    return path


def write_16bit_gray_png(path: Path, values: Sequence[int] = (0, 32768, 65535)) -> Path:
    """A 16-bit grayscale PNG of vertical stripes, one per value (default black, mid-gray, white)."""
    path = _parent(path)
    stripes = np.repeat(np.asarray(values, dtype=np.uint16), 4)[None, :].repeat(4, axis=0)  # [4, 4*len]
    Image.fromarray(stripes).save(path, "PNG")  # uint16 -> mode "I;16"
    return path


def write_1bit_png(path: Path) -> Path:
    """A 1-bit PNG: left half black, right half white."""
    path = _parent(path)
    image = Image.new("1", (16, 8), 0)
    image.paste(1, (8, 0, 16, 8))
    image.save(path, "PNG")
    return path


def write_gray_png(path: Path, level: int = 100) -> Path:
    """An 8-bit grayscale ("L") PNG of one level."""
    path = _parent(path)
    Image.new("L", (8, 8), level).save(path, "PNG")
    return path


def write_png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid PNG signature and IHDR claiming ``width`` × ``height`` 8-bit RGB, then almost no data.

    A decompression-bomb stand-in: tiny on disk, enormous once decoded. Decoding it would allocate
    width × height × 3 bytes before finding out the data is missing.
    """
    path = _parent(path)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # depth 8, colour type 2 (RGB)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    path.write_bytes(data + chunk(b"IEND", b""))
    return path


def write_empty(path: Path) -> Path:
    """A zero-byte file."""
    path = _parent(path)
    path.write_bytes(b"")
    return path


def write_truncated_jpeg(path: Path, keep: float = 0.5) -> Path:
    """A real JPEG cut after ``keep`` of its bytes (the header survives, the scan data does not)."""
    path = _parent(path)
    buffer = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)  # [H, W, 3]
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    full = buffer.getvalue()
    path.write_bytes(full[: int(len(full) * keep)])
    return path


def write_random_bytes(path: Path, size: int = 4096, seed: int = 0) -> Path:
    """Random bytes under an image name. The first bytes are fixed so they can match no image format."""
    path = _parent(path)
    noise = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(b"\x00noise\x00" + noise)
    return path


def write_text_as_image(path: Path, text: str = "this is not a picture\n") -> Path:
    """A text file wearing an image suffix (e.g. ``notes.jpg``)."""
    path = _parent(path)
    path.write_text(text, encoding="utf-8")
    return path


def make_class_tree(
    root: Path, classes: dict[str, Sequence[tuple[int, int, int]]], suffix: str = ".png"
) -> list[Path]:
    """``root/<class>/<i><suffix>`` for each colour listed under each class; returns the paths written."""
    written = []
    for name, colors in classes.items():
        for index, color in enumerate(colors):
            written.append(write_solid(Path(root) / name / f"{index}{suffix}", color))
    return written


def make_hf_dataset(colors: Sequence[tuple[int, int, int]], labels: Sequence[int], names: Sequence[str]):
    """An in-memory ``datasets.Dataset``: an ``Image()`` column "image", a ClassLabel column "label"."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))})
    return datasets.Dataset.from_dict(
        {"image": [solid(c) for c in colors], "label": list(labels)}, features=features
    )
