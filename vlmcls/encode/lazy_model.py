"""A model backend built on first use, whose cache identity is known before it is built.

Through the CLI a re-run of an already-classified folder spent most of its time importing open_clip (which pulls in
transformers) and building the model, only to find every feature in the store. :class:`LazyModel` answers the
store's questions (model id, weights fingerprint, preprocessing, logit scale and bias) from a record the first load
left in the store, and builds the real backend only when something must be encoded.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Callable, Sequence

from .backend import ModelBackend, known_weights_fingerprint, precision_name
from .store import Store, cache_key
from .model_ids import ModelSpec, parse_model_id

if TYPE_CHECKING:  # imported with the model: a run that needs no model imports no torch
    import torch

__all__ = ["LazyModel"]

log = logging.getLogger(__name__)

# What a backend must know to look up its features in the store, recorded by the first load.
# input_side: reduced-size JPEG decoding is part of the image feature key (vlmcls.encode.embeddings).
# feature_dim: cached arrays of another length are dropped as corrupted (vlmcls.encode.store), so it must be known too.
_IDENTITY_FIELDS = ("weights_fingerprint", "preprocess_fingerprint", "logit_scale", "logit_bias", "input_side",
                    "feature_dim")


def _identity_key(spec: ModelSpec, weights_fingerprint: str) -> str | None:
    """Store key of a model's recorded identity. The backend library's version is part of it: an upgrade may
    change preprocessing, so the first run after one builds the model and records it again."""
    from importlib.metadata import PackageNotFoundError, version

    package = "open_clip_torch" if spec.backend == "open_clip" else "transformers"
    try:
        library = f"{package}=={version(package)}"
    except PackageNotFoundError:
        return None
    return cache_key("model-identity", model=spec.canonical, weights=weights_fingerprint, library=library)


def _identity_of(backend: ModelBackend) -> dict:
    return {name: getattr(backend, name) for name in _IDENTITY_FIELDS}


class LazyModel(ModelBackend):
    """A backend built on first encode: its cache identity (model id, weights fingerprint, preprocessing, logit
    scale) is known before that, so a run whose features are all in the store never imports open_clip or
    transformers, nor reads the weights.

    The identity is recorded in the store by the first load of these exact weights;
    until then, and for weights only a load can identify (random init, transformers hub ids), the model is
    built at once.
    """

    def __init__(self, model_id: str, device: str = "auto", precision: str = "fp32", store: "Store | None" = None):
        self.spec = parse_model_id(model_id)
        self.precision = precision_name(precision)
        self._model_id, self._device_name, self._store = model_id, device, store
        self._backend: ModelBackend | None = None
        self._load_lock = threading.Lock()
        self._device: torch.device | None = None
        self._dtype: torch.dtype | None = None
        if (device or "auto").strip().lower() not in ("auto", "cpu"):
            self._resolve()  # a device named outright (cuda:1, mps) is checked now, before anything else runs
        identity = self._recorded_identity()
        if identity is None:
            self._load()
        else:  # weights and preprocessing fingerprints, logit scale and bias, input side: known without the model
            self.__dict__.update(identity)

    def _resolve(self) -> None:
        """Resolve the device and compute dtype (imports torch): on first use for ``auto`` and ``cpu``, so a run
        that needs no model never imports it."""
        if self._device is None:
            from .models import resolve_device, resolve_precision

            device = resolve_device(self._device_name)
            self._dtype, self._device = resolve_precision(self.precision, device), device

    @property
    def device(self) -> torch.device:
        self._resolve()
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        self._resolve()
        return self._dtype

    def _recorded_identity(self) -> dict | None:
        if self._store is None:
            return None
        fingerprint = known_weights_fingerprint(self.spec, self._store)
        key = _identity_key(self.spec, fingerprint) if fingerprint is not None else None
        found = self._store.get_json(key) if key is not None else None
        if not isinstance(found, dict) or set(found) != set(_IDENTITY_FIELDS):
            return None
        return found

    def _load(self) -> ModelBackend:
        with self._load_lock:  # decode threads may ask for preprocessing at the same moment
            if self._backend is None:
                from .models import load_model

                self._resolve()  # a bad device or precision fails before the weights are read
                log.info("loading model '%s'", self.spec.canonical)
                backend = load_model(self._model_id, self._device_name, self.precision, self._store)
                self.__dict__.update(_identity_of(backend))
                self._backend = backend
                self._record_identity()
        return self._backend

    def _record_identity(self) -> None:
        """Kept in the store so that a later run with these weights needs no load (only for weights identified
        without a load: random init and hub downloads are not)."""
        fingerprint = known_weights_fingerprint(self.spec, self._store) if self._store is not None else None
        if fingerprint is None or fingerprint != self.weights_fingerprint:
            return
        key = _identity_key(self.spec, fingerprint)
        if key is not None:
            self._store.set_json(key, _identity_of(self._backend))

    @property
    def is_loaded(self) -> bool:
        return self._backend is not None

    @property
    def backend(self) -> ModelBackend:
        """The real backend (built now if it was not yet)."""
        return self._load()

    @property
    def input_side(self) -> int | None:
        # ModelBackend's property would ask preprocess (and build the model): the recorded value comes first.
        return self.__dict__["input_side"] if "input_side" in self.__dict__ else self._load().input_side

    @property
    def feature_dim(self) -> int:
        return self.__dict__["feature_dim"] if "feature_dim" in self.__dict__ else self._load().feature_dim

    # -- work: needs the model ----------------------------------------------------------------------
    @property
    def preprocess(self) -> Callable:
        """The backend's preprocessing (built now if it was not yet; the encoder asks for it only when the first
        image decodes, so a run whose only uncached images fail to decode still needs no model)."""
        return self._load().preprocess

    @property
    def tokenizer(self):
        return self._load().tokenizer

    def uint8_preprocess(self) -> Callable | None:
        return self._load().uint8_preprocess()

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._load().encode_images(pixels)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        return self._load().encode_texts(texts, batch_size=batch_size)

    def __getattr__(self, name: str):
        # Anything else a caller reaches for (the nn.Module as .model, .processor, …) lives on the real backend.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._load(), name)

