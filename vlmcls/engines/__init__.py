"""Where a run request is carried out: in this process (:class:`LocalEngine`) or on Ray Data (:class:`RayEngine`).

    request = RunRequest("photos/", "classes.txt", method="cbd+fudd", options={"fudd": {"k": 5}})
    result = LocalEngine(Classifier("ViT-B-32:openai")).run(request)      # or RayEngine("ViT-B-32:openai").run(…)

Both take the same :class:`RunRequest` and give the same :class:`~vlmcls.results.ClassificationResult` (one result
table: the same rows, in input order, error rows included), so `classify`, `--watch`, `eval` and the API build a
request and hand it over instead of wiring encode → score → rows each on their own. The local engine also watches
a request's files and re-runs it (:func:`watch_runs`) and says what it would spend (:meth:`LocalEngine.estimate`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .request import Engine, ProgressFn, RunRequest
from .watch import WatchedRun, watch_runs, watched_files

if TYPE_CHECKING:
    from ..api import Classifier
    from ..encode.embeddings import ImageFeatures
    from ..results import ClassificationResult
    from .ray import RayEngine, classify_with_ray  # noqa: F401

__all__ = ["RunRequest", "Engine", "LocalEngine", "RayEngine", "classify_with_ray", "watch_runs", "watched_files",
           "WatchedRun"]


def __getattr__(name: str) -> Any:
    """The Ray engine is imported when first asked for: it brings torch and pyarrow, which `--help` need not load."""
    if name in ("RayEngine", "classify_with_ray"):
        from . import ray

        return getattr(ray, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
