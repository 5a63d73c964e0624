"""vlmcls: zero-shot image classification with vision-language models steered by an LLM.

The model-facing names (``Classifier``, ``load_model``, …) are imported on first use, so ``import vlmcls`` and the
CLI's help, cache and prompt commands start without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    CacheError,
    ConfigError,
    ImageError,
    LLMError,
    LLMResponseError,
    MissingExtraError,
    ModelLoadError,
    PromptError,
    VlmclsError,
)

if TYPE_CHECKING:
    from .api import ClassificationResult, Classifier, Prediction, load_classes
    from .models import load_model

__version__ = "0.1.0"

_LAZY = {
    "Classifier": "api",
    "ClassificationResult": "api",
    "Prediction": "api",
    "load_classes": "api",
    "load_model": "models",
}

__all__ = [
    "Classifier",
    "ClassificationResult",
    "Prediction",
    "load_classes",
    "load_model",
    "VlmclsError",
    "ConfigError",
    "PromptError",
    "ModelLoadError",
    "ImageError",
    "LLMError",
    "LLMResponseError",
    "CacheError",
    "MissingExtraError",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vlmcls' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
