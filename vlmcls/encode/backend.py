"""The model side that needs no torch: what a backend is (:class:`ModelBackend`), how its weights and
precision are named, and the weights' fingerprint worked out without building the model.

Kept apart from :mod:`vlmcls.encode.models` so that a run whose features are all in the store (a re-run) can answer
without importing torch, open_clip or transformers (see :class:`vlmcls.encode.lazy_model.LazyModel`).
"""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from .store import Store, file_digest
from ..errors import ConfigError
from .model_ids import ModelSpec

if TYPE_CHECKING:
    import torch

__all__ = ["ModelBackend", "PRECISIONS", "known_weights_fingerprint", "precision_name", "preprocess_input_side"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def precision_name(precision: str) -> str:
    """The precision's canonical name (fp32, fp16, bf16, int8); a clear error for any other."""
    key = (precision or "fp32").strip().lower()
    if key not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'. Valid: {', '.join(PRECISIONS)}.")
    return key


def _files_fingerprint(paths: Sequence[Path], store: "Store | None" = None) -> str:
    """Content hash of weight/config files (memoised per process, and across processes when a store is given)."""
    digest = store.file_digest if store is not None else file_digest
    parts = []
    for p in sorted(paths):
        parts.append(f"{p.name}={digest(p)}")
    return hashlib.sha256(";".join(parts).encode()).hexdigest()[:32]


def known_weights_fingerprint(spec: ModelSpec, store: "Store | None" = None) -> str | None:
    """The weights' identity worked out without building the model (a tag, or a content hash of local files);
    None when only the built model can tell (random init, a transformers hub download)."""
    if spec.backend == "open_clip":
        if spec.source == "local-dir":
            folder = Path(spec.name)
            files = [p for p in folder.iterdir() if p.suffix in (".json", ".safetensors", ".bin", ".pth", ".pt")]
            return _files_fingerprint(files, store)
        if spec.source == "builtin" and spec.pretrained is None:
            return None
        if spec.source == "builtin" and Path(spec.pretrained).expanduser().is_file():
            return _files_fingerprint([Path(spec.pretrained).expanduser()], store)
        return f"{spec.source}:{spec.name}:{spec.pretrained}"
    if spec.source == "folder":
        files = [p for p in Path(spec.name).iterdir() if p.suffix in (".json", ".safetensors", ".bin")]
        return _files_fingerprint(files, store)
    return None


def preprocess_input_side(preprocess: Callable | None) -> int | None:
    """The short side a torchvision-style ``Compose`` resizes images to, or None when it cannot tell."""
    for step in getattr(preprocess, "transforms", []):
        size = getattr(step, "size", None)
        if isinstance(size, int):
            return size
        if isinstance(size, (tuple, list)) and size:
            return int(min(size))
    return None


class ModelBackend(ABC):
    """What the pipeline needs from a vision-language model."""

    spec: ModelSpec
    device: torch.device
    dtype: torch.dtype  # compute precision (autocast on accelerators)
    precision: str = "fp32"  # as asked: fp32, fp16, bf16 or int8 (int8: the image tower runs quantised)
    preprocess: Callable  # PIL image -> tensor [3, H, W]
    logit_scale: float  # multiplies cosine similarities (100 for CLIP)
    logit_bias: float | None  # SigLIP's bias; None for CLIP
    weights_fingerprint: str  # identifies the exact weights (tag, or a content hash of local files)
    preprocess_fingerprint: str  # identifies preprocessing (resize, crop, mean/std)

    @property
    def score_rule(self) -> str:
        """``softmax`` across classes (CLIP) or independent ``sigmoid`` per class (SigLIP)."""
        return "sigmoid" if self.logit_bias is not None else "softmax"

    @property
    def model_id(self) -> str:
        return self.spec.canonical

    @property
    def image_key_parts(self) -> dict:
        """Everything about the model that changes an image feature (for the embedding store key)."""
        parts = {"model": self.model_id, "weights": self.weights_fingerprint, "preprocess": self.preprocess_fingerprint}
        if self.precision == "int8":  # int8 features differ from fp32 ones (cosine ~0.999); fp32 keys stay as they were
            parts["precision"] = "int8"
        return parts

    @property
    def input_side(self) -> int | None:
        """The short side preprocessing resizes images to (224 for ViT-B/32); None when it cannot tell."""
        return preprocess_input_side(self.preprocess)

    @property
    def feature_dim(self) -> int:
        """D, the length of one feature (the store drops a cached array of another length as corrupted). Measured
        once by encoding one short text (milliseconds), since backends do not all declare it."""
        dim = self.__dict__.get("_feature_dim")
        if dim is None:
            dim = self.__dict__["_feature_dim"] = int(self.encode_texts(["a photo"]).shape[-1])
        return dim

    @property
    def text_key_parts(self) -> dict:
        return {"model": self.model_id, "weights": self.weights_fingerprint}

    def _autocast(self):
        from contextlib import nullcontext

        import torch

        if self.device.type == "cpu" or self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def uint8_preprocess(self) -> Callable | None:
        """The PIL part of ``preprocess`` (PIL image -> uint8 tensor [3, H, W]) when the rest of it (to float,
        normalise) can run inside :meth:`encode_images` with bit-identical results; None when it cannot.

        Shipping uint8 pixels moves a quarter of the bytes between decode workers and the model, and leaves the
        float conversion to the device: on an H100 box the decode pipeline was bound by that traffic, not by
        decoding. ``encode_images`` accepts both uint8 and float batches.
        """
        return None

    def _image_tower(self) -> torch.nn.Module:
        """A module mapping preprocessed pixels [B, 3, H, W] to image features [B, D] (what int8 exports)."""
        raise ConfigError(f"precision 'int8' is not available for '{self.model_id}'. Use --precision fp32.")

    def _encode_images_int8(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image features from the ONNX Runtime int8 tower, built (or found in the cache folder) on first use."""
        tower = getattr(self, "_int8_tower", None)
        if tower is None:
            from .quantize import int8_image_tower

            folder = Path(self._store.directory) if getattr(self, "_store", None) is not None else None
            tower = self._int8_tower = int8_image_tower(self._image_tower(), tuple(pixels.shape[1:]),
                                                        self.image_key_parts, folder)
        return tower(pixels)

    @abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, H, W] (float, preprocessed; or uint8 from :meth:`uint8_preprocess`) -> features [B, D]
        (float32, on CPU, not normalised)."""

    @abstractmethod
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """texts (T) -> features [T, D] (float32, on CPU, not normalised)."""
