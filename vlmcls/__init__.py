"""vlmcls: zero-shot image classification with vision-language models steered by an LLM."""

from .api import ClassificationResult, Classifier, Prediction, load_classes
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
from .models import load_model

__version__ = "0.1.0"

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
