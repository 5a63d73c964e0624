"""JPEG decoding on the model's device: nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``) in batches, then the
model's resize and crop as tensor operations on that device.

On an H100 the ViT-B/32 forward pass does ~19,000 img/s while CPU decoding bounds ``classify`` near 560 img/s:
decoding where the model runs moves that bound. Decode workers still read and hash each file (the digest and the
pixels come from the same bytes) and look at its header: a baseline JPEG in RGB or grey within the pixel limit goes
to the device; CMYK/YCCK, progressive JPEGs, other formats and anything the device decoder rejects take the PIL path,
file by file, with the same error rows as ever.

The tensor steps are the model's own PIL steps (``Resize``, ``CenterCrop``) run on uint8 tensors with antialiasing,
so the pixels differ from PIL's slightly (agreement measured by ``bench/bench_gpu.py``); a preprocessing with any
other step keeps the PIL path. Library: torchvision's decoder, which ships with torch; torchvision 0.29 marks it
deprecated in favour of TorchCodec's ``decode_jpeg`` (same nvJPEG batch call), a one-function swap when torchvision
drops it.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from .decoding import DEFAULT_MAX_PIXELS

__all__ = ["DeviceJpegDecoder", "apply_orientation"]

log = logging.getLogger(__name__)

_ORIENTATION_TAG = 0x0112


def apply_orientation(pixels: torch.Tensor, orientation: int) -> torch.Tensor:
    """[C, H, W] turned upright as PIL's ``ImageOps.exif_transpose`` turns an image with this EXIF orientation."""
    if orientation == 2:
        return pixels.flip(-1)
    if orientation == 3:
        return pixels.flip(-2, -1)
    if orientation == 4:
        return pixels.flip(-2)
    if orientation == 5:  # PIL's TRANSPOSE
        return pixels.transpose(-2, -1)
    if orientation == 6:  # PIL's ROTATE_270 (a quarter turn clockwise)
        return torch.rot90(pixels, -1, dims=(-2, -1))
    if orientation == 7:  # PIL's TRANSVERSE
        return pixels.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:  # PIL's ROTATE_90 (a quarter turn anticlockwise)
        return torch.rot90(pixels, 1, dims=(-2, -1))
    return pixels


def _tensor_steps(pil_steps: Sequence[Callable]) -> list[Callable[[torch.Tensor], torch.Tensor]] | None:
    """The model's PIL steps as operations on uint8 [3, H, W] tensors, or None when a step has no such twin."""
    from torchvision import transforms
    from torchvision.transforms import functional as F

    steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
    for step in pil_steps:
        if type(step) is transforms.Resize:
            steps.append(lambda t, s=step: F.resize(t, s.size, s.interpolation, s.max_size, antialias=True))
        elif type(step) is transforms.CenterCrop:
            steps.append(lambda t, s=step: F.center_crop(t, s.size))
        elif getattr(step, "__name__", "") in ("_convert_to_rgb", "convert_to_rgb") or (
                type(step).__name__ == "MaybeConvertMode" and getattr(step, "mode", None) == "RGB"):
            continue  # open_clip's RGB conversions: the decoder already gives RGB
        else:
            log.info("device decoding off: preprocessing step %r has no tensor twin", step)
            return None
    return steps


class DeviceJpegDecoder:
    """Batches of JPEG bytes -> uint8 pixels [3, S, S] on ``device``, as the model's PIL steps would give them."""

    def __init__(self, pil_steps: Sequence[Callable], device: torch.device | str,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        steps = _tensor_steps(pil_steps)
        if steps is None:
            raise ValueError("this preprocessing has steps without a tensor twin")
        self.steps, self.device, self.max_pixels = steps, torch.device(device), max_pixels
        self._lock = threading.Lock()  # one decode call at a time; nvJPEG's handle is per process

    @classmethod
    def for_preprocess(cls, uint8_preprocess: Any, device: torch.device | str,
                       max_pixels: int | None = DEFAULT_MAX_PIXELS) -> "DeviceJpegDecoder | None":
        """A decoder giving what ``uint8_preprocess`` (the model's PIL steps then uint8) gives, or None."""
        steps = getattr(uint8_preprocess, "steps", None)
        if steps is None:
            return None
        try:
            return cls(steps, device, max_pixels)
        except (ValueError, ImportError) as exc:
            log.info("device decoding off: %s", exc)
            return None

    def accepts(self, data: bytes) -> int | None:
        """The file's EXIF orientation (1–8) when the device decoder takes these bytes; None sends them the PIL
        way. Reads the header only."""
        if not isinstance(data, (bytes, bytearray)) or data[:3] != b"\xff\xd8\xff":
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(io.BytesIO(data), formats=("JPEG", "MPO")) as image:
                    width, height = image.size
                    if image.mode not in ("RGB", "L") or image.info.get("progressive") or image.info.get("progression"):
                        return None
                    if self.max_pixels is not None and width * height > self.max_pixels:
                        return None  # the PIL path gives the error row
                    orientation = image.getexif().get(_ORIENTATION_TAG, 1)
        except Exception:
            return None  # damaged headers get the PIL path's error rows
        return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1

    def decode(self, items: Sequence[tuple[bytes, int]]) -> list[torch.Tensor | None]:
        """(bytes, orientation) -> uint8 [3, S, S] on the device, or None where the decoder failed on that file
        (one bad file costs its own device decode, not the batch's)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        if not items:
            return []
        encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data, _ in items]
        with self._lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision 0.29's deprecation notice
            try:
                decoded: list[torch.Tensor | None] = list(decode_jpeg(encoded, mode=ImageReadMode.RGB,
                                                                      device=self.device))
            except Exception as exc:  # one file the batch call rejects: try each alone
                log.info("batched device decode failed (%s); decoding %d files one by one", exc, len(items))
                decoded = []
                for one in encoded:
                    try:
                        decoded.append(decode_jpeg(one, mode=ImageReadMode.RGB, device=self.device))
                    except Exception:
                        decoded.append(None)
        out: list[torch.Tensor | None] = []
        for pixels, (_, orientation) in zip(decoded, items):
            if pixels is None:
                out.append(None)
                continue
            pixels = apply_orientation(pixels, orientation)
            for step in self.steps:
                pixels = step(pixels)
            out.append(pixels.contiguous())
        return out
