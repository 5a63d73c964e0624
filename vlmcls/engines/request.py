"""A run request: which images, which classes, which method with which options; and the protocol every engine
(:class:`~vlmcls.engines.LocalEngine`, :class:`~vlmcls.engines.ray.RayEngine`) carries one out through."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

from ..methods import DEFAULT_METHOD, MethodOptions, as_options

if TYPE_CHECKING:
    from ..results import ClassificationResult

__all__ = ["RunRequest", "Engine", "ProgressFn"]

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class RunRequest:
    """One run: which images, which classes, which method with which options, how many classes per row."""

    images: Any  # a folder, a .txt list, an image, a dataset, or records
    classes: Any  # a file, a comma list, or names
    method: str = DEFAULT_METHOD  # a spec: cbd+fudd+tip
    options: MethodOptions | Mapping[str, Any] | None = None  # each method's options ({"fudd": {"k": 5}})
    top_k: int = 5
    source_options: Mapping[str, Any] = field(default_factory=dict)  # split, image/label columns of a dataset

    def __post_init__(self) -> None:  # options checked when the request is made, before anything loads
        object.__setattr__(self, "options", as_options(self.options))

    def but(self, **changes: Any) -> "RunRequest":
        """A copy with some fields changed (another method, other options)."""
        return dataclasses.replace(self, **changes)


class Engine(Protocol):
    """Carries out a run request; every engine gives the same rows."""

    def run(self, request: RunRequest, progress: ProgressFn | None = None) -> ClassificationResult: ...
