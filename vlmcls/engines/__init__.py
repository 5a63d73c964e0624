"""Where a run request is carried out: in this process (:class:`LocalEngine`) or on Ray Data (:class:`RayEngine`).

    request = RunRequest("photos/", "classes.txt", method="cbd+fudd", options={"fudd": {"k": 5}})
    result = LocalEngine(Classifier("ViT-B-32:openai")).run(request)      # or RayEngine("ViT-B-32:openai").run(…)

Both take the same :class:`RunRequest` and give the same :class:`~vlmcls.results.ClassificationResult` (one result
table: the same rows, in input order, error rows included), so `classify`, `--watch`, `eval` and the API build a
request and hand it over instead of wiring encode → score → rows each on their own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

from ..methods import DEFAULT_METHOD, MethodOptions, as_options

from .watch import WatchedRun, watch_runs, watched_files

if TYPE_CHECKING:
    from ..api import Classifier
    from ..encode.embeddings import ImageFeatures
    from ..results import ClassificationResult

__all__ = ["RunRequest", "Engine", "LocalEngine", "RayEngine", "watch_runs", "watched_files", "WatchedRun"]

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


class LocalEngine:
    """This process: the classifier's model and cache, loaded once and reused for every request (``--watch``)."""

    def __init__(self, classifier: Classifier) -> None:
        self.classifier = classifier

    def run(self, request: RunRequest, progress: ProgressFn | None = None) -> ClassificationResult:
        return self.classifier.classify(request.images, request.classes, method=request.method,
                                        options=request.options, top_k=request.top_k, progress=progress,
                                        as_numpy=True, **dict(request.source_options))

    def encode(self, request: RunRequest, progress: ProgressFn | None = None) -> ImageFeatures:
        """The request's image features (from the store when cached), to score several times (``--watch``,
        ``eval``) with :meth:`score`."""
        return self.classifier.encode_images(request.images, progress=progress, **dict(request.source_options))

    def score(self, request: RunRequest, feats: ImageFeatures, as_numpy: bool = False) -> ClassificationResult:
        """The request's rows from features already computed (the class file is read again)."""
        from ..sources.classes import load_classes

        return self.classifier.predict(feats, load_classes(request.classes), request.method, request.options,
                                       request.top_k, as_numpy=as_numpy)

    def estimate(self, request: RunRequest, progress: ProgressFn | None = None) -> dict[str, Any]:
        """What the request would spend on the LLM now, sending nothing (a dry run): per stage, a
        :class:`~vlmcls.llm.client.CallEstimate` (calls and approximate tokens) or a line saying why it cannot be
        counted. The images are encoded only when a stage's questions depend on them (FuDD's pairs)."""
        from ..methods import RERANK, estimate_llm_cost, get_record, parse_spec
        from ..sources.classes import load_classes

        spec = parse_spec(request.method).resolve(request.options)
        feats = None
        if any(get_record(name).kind == RERANK for name in spec.stages):  # its pairs depend on the images
            feats = self.encode(request, progress).feats
        context = self.classifier.run_context(load_classes(request.classes), request.options)
        return estimate_llm_cost(spec, context, feats)

    def watch(self, request: RunRequest, files: Any = None, **kwargs: Any) -> Any:
        """Run, then re-run on every edit of the request's files: see :func:`vlmcls.engines.watch.watch_runs`."""
        return watch_runs(self, request, files, **kwargs)


@dataclass
class RayEngine:
    """Ray Data: the model loads once per encoder actor, features live in a shared feature store, the rows are
    the local engine's (see :func:`vlmcls.engines.ray.classify_with_ray` for what each setting does)."""

    model: str
    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int = 32
    workers: int | None = None  # encoder actors (default: one per GPU, else 7 in 8 CPUs)
    address: str | None = None  # an existing cluster ('auto'); default: start Ray locally
    output_dir: str | Path | None = None  # sharded rows written by the workers
    output_format: str = "parquet"
    collect: bool = True  # bring the rows back to the driver
    cache_dir: str | Path | None = None
    feature_store: str | Path | None = None
    heic_thumbnails: bool = False

    def run(self, request: RunRequest, progress: ProgressFn | None = None) -> ClassificationResult:
        from .ray import classify_with_ray

        return classify_with_ray(
            self.model, request.images, request.classes, method=request.method, options=request.options,
            top_k=request.top_k, batch_size=self.batch_size, device=self.device, precision=self.precision,
            num_workers=self.workers, ray_address=self.address, output_dir=self.output_dir,
            output_format=self.output_format, collect=self.collect, cache_dir=self.cache_dir,
            feature_store=self.feature_store, heic_thumbnails=self.heic_thumbnails, **dict(request.source_options))
