"""The one exception hierarchy of vlmcls.

    VlmclsError                 base: catch this to catch everything vlmcls raises on purpose
    ├── ConfigError             bad user input: flags, class lists, files, model ids
    │   └── PromptError         a prompt file is missing, malformed, or has bad placeholders
    ├── ModelLoadError          weights or configs could not be found or loaded
    ├── SourceUnreachableError  a hub dataset cannot be fetched (offline, no network): exit 3, one line
    ├── ImageError              one image could not be read (becomes an error row, never stops a run)
    ├── LLMError                the LLM endpoint failed after retries, or answered nothing usable
    │   ├── LLMResponseError    an answer came back but could not be parsed
    │   └── LLMUnreachableError no connection to the endpoint at all (refused, unknown host): the run stops
    ├── CacheError              the cache could not be read or written
    ├── OutputError             an output file could not be written (disk full, file-size limit, read-only)
    ├── WorkerError             a Ray worker or task failed (the message ends with the worker's own error)
    └── MissingExtraError       an optional dependency is not installed (the message names the pip command)
"""

from __future__ import annotations

__all__ = [
    "VlmclsError",
    "ConfigError",
    "PromptError",
    "ModelLoadError",
    "ImageError",
    "SourceUnreachableError",
    "LLMError",
    "LLMResponseError",
    "LLMUnreachableError",
    "CacheError",
    "OutputError",
    "WorkerError",
    "MissingExtraError",
]


class VlmclsError(Exception):
    """Base class of every error vlmcls raises on purpose."""


class ConfigError(VlmclsError, ValueError):
    """Bad user input: a flag value, a class list, a file, a model id."""


class PromptError(ConfigError):
    """A prompt file is missing, malformed, or its placeholders are wrong."""


class ModelLoadError(VlmclsError):
    """Model weights or configuration could not be found or loaded."""


class SourceUnreachableError(VlmclsError):
    """An image source that must come from the network (an HF hub dataset) cannot be reached."""


class ImageError(VlmclsError):
    """One image could not be decoded; reported as an error row."""


class LLMError(VlmclsError):
    """The LLM endpoint failed after all retries."""


class LLMResponseError(LLMError):
    """The LLM answered, but nothing usable could be parsed from the answer."""


class LLMUnreachableError(LLMError):
    """No connection could be made to the LLM endpoint; retrying or asking about other classes cannot help."""


class CacheError(VlmclsError):
    """The cache could not be read or written."""


class OutputError(VlmclsError):
    """An output file could not be written; the old file, if any, is kept whole. ``errno``: the OS's code."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


class WorkerError(VlmclsError):
    """A Ray worker or task failed; the message ends with the error the worker raised."""


class MissingExtraError(VlmclsError, ImportError):
    """An optional dependency is missing; the message names the install command."""
