"""vlmcls: zero-shot image classification with vision-language models steered by an LLM.

The model-facing names (``Classifier``, ``load_model``, …) are imported on first use, so ``import vlmcls`` and the
CLI's help, cache and prompt commands start without loading torch.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
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
    from .encode.models import load_model

__version__ = "0.1.0"

_LAZY = {
    "Classifier": "api",
    "ClassificationResult": "api",
    "Prediction": "api",
    "load_classes": "api",
    "load_model": "encode.models",
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


# Modules that moved into packages (vlmcls.cache is vlmcls.encode.store, …): their old import paths keep working.
_MOVED = {
    "image_sources": "sources.listing",
    "snapshot": "sources.snapshot",
    "classes": "sources.classes",
    "textfiles": "sources.textfiles",
    "limits": "sources.limits",
    "models": "encode.models",
    "backend": "encode.backend",
    "lazy_model": "encode.lazy_model",
    "model_ids": "encode.model_ids",
    "quantize": "encode.quantize",
    "decoding": "encode.decoding",
    "device_decode": "encode.device_decode",
    "images": "encode.images",
    "embeddings": "encode.embeddings",
    "cache": "encode.store",
    "feature_store": "encode.feature_store",
    "llm_http": "llm.http",
    "prompting": "llm.prompts",
    "descriptors": "llm.descriptors",
    "distributed": "engines.ray",
    "ray_workers": "engines.ray_workers",
    "report_html": "report.html",
    "audit": "report.audit",
    "audit_report": "report.audit_page",
    "evaluate": "report.evaluate",
    "active": "review.active",
    "exports": "review.exports",
    "labels": "review.labels",
    "run_results": "review.run_results",
    "sorting": "review.sorting",
}


class _MovedModules(importlib.abc.MetaPathFinder):
    """Imports ``vlmcls.<old>`` as the module it became, the same object under both names."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        prefix, _, rest = fullname.partition(".")
        if prefix != "vlmcls" or rest not in _MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(f"vlmcls.{_MOVED[rest]}"))


class _AliasLoader(importlib.abc.Loader):
    """Puts the module that moved in the old name's place (the import system reads ``sys.modules`` back after
    ``exec_module``, so ``import vlmcls.cache`` gives ``vlmcls.encode.store`` itself)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: Any) -> Any:
        return None

    def exec_module(self, module: Any) -> None:
        sys.modules[module.__name__] = importlib.import_module(self.target)


sys.meta_path.insert(0, _MovedModules())  # before any path finder: an old name is never a file


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vlmcls' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
