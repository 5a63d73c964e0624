"""A parsed spec made runnable: stages prepared once (text, LLM, global passes), then applied batch by batch.

Every stage is prepared on the driver from what it declares it needs — the text side, the LLM, or a *gather*
over all images (FuDD's pair counts, the self-cache's features) that the engine runs its own way: in one go in
this process, as Ray tasks over the feature store on a cluster. A prepared :class:`Pipeline` holds only tensors
and plain data, so an engine can ship it to workers and apply it per batch; the same code then gives the same
rows on every engine.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from ..results import MethodOutput
from .options import MethodOptions
from .registry import get_record
from .spec import MethodSpec, parse_spec

if TYPE_CHECKING:  # torch is imported when a run starts, so the CLI can declare method flags without it
    import torch

__all__ = ["TextSide", "RunContext", "BatchScores", "Stage", "Pipeline", "RunReport", "build_pipeline",
           "run_spec", "Gather", "gather_in_process", "StagesSoFar", "apply_stage", "run_positions"]

log = logging.getLogger(__name__)


@dataclass
class TextSide:
    """What a method may use of the model: encode texts, and the scoring constants."""

    encode_texts: Callable[[Sequence[str]], torch.Tensor]  # texts (T) -> unit features [T, D]
    logit_scale: float
    logit_bias: float | None
    score_rule: str  # softmax | sigmoid


@dataclass
class RunContext:
    """The driver-side inputs every stage may read while it is prepared."""

    text: TextSide
    class_names: list[str]
    options: MethodOptions
    encode_images: Callable[[Any], Any] | None = None  # a support folder -> ImageFeatures (Tip-Adapter)

    @property
    def llm(self) -> Any:
        return self.options.llm


@dataclass
class BatchScores:
    """A stage's answer for a batch of B images."""

    logits: torch.Tensor  # [B, C]
    notes: list[dict] | None = None  # per image, explanation parts by stage (when asked for)
    labels: list[str] | None = None  # label-space answers (Fréchet mean); None = argmax of the logits
    counts: dict[str, float] = field(default_factory=dict)  # summable per-batch facts (images moved, …)
    unknown_score: torch.Tensor | None = None  # [B] how sure each image is that it shows a class (refiner unknown)
    label_sets: list[list[tuple[str, float]]] | None = None  # per image, (class, score) of its labels (multi-label)


class Stage(Protocol):
    """A prepared stage: pure tensors and data, applied to a batch of unit image features [B, D].

    A stage whose answer for an image depends on where the image is in the run (a transductive pass, a stream)
    sets ``by_position = True``; its ``apply`` then also takes ``positions`` [B], the images' rows in the run's
    order, and refuses images that are not the run's (``positions`` None).
    """

    def apply(self, feats: torch.Tensor, upstream: BatchScores | None, explain: bool) -> BatchScores: ...

    def summarize(self, counts: dict[str, float], images: int) -> dict[str, Any]: ...


@dataclass
class RunReport:
    """What preparing the stages cost and produced, for the run summary and exports."""

    llm_calls: int = 0
    llm_tokens: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[dict] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)
    label_metric: Any = None
    head: str | None = None  # the spec's head, resolved

    def add_usage(self, usage: Any) -> None:
        self.llm_calls += usage.calls
        self.llm_tokens += usage.total_tokens
        self.info["llm_cached_answers"] = self.info.get("llm_cached_answers", 0) + usage.cached
        self.info["llm_failed"] = self.info.get("llm_failed", 0) + usage.failed


@dataclass
class Pipeline:
    """Prepared stages in run order (head first) and how to turn the last logits into probabilities."""

    class_names: list[str]
    score_rule: str
    stages: list[Any]
    weights: torch.Tensor | None = None  # [C, D] the head's text weights
    text_feats: torch.Tensor | None = None  # [T, D] the head's sentences

    @property
    def calibration_temperature(self) -> float:
        """T of softmax(logits / T) for the run's probabilities: a stage that fitted one (tip.calibrate) sets it."""
        return float(math.prod(getattr(stage, "calibration_temperature", 1.0) for stage in self.stages))

    def probabilities(self, logits: Any) -> Any:
        """The run's probabilities of its final logits [N, C], with the fitted temperature if any."""
        from ..scoring import probabilities

        temperature = self.calibration_temperature
        return probabilities(logits / temperature if temperature != 1.0 else logits, self.score_rule)

    def extended(self, stage: Any) -> "Pipeline":
        return Pipeline(self.class_names, self.score_rule, [*self.stages, stage], self.weights, self.text_feats)

    def apply(self, feats: torch.Tensor, explain: bool = False, positions: Any = None) -> BatchScores:
        """image_feats [B, D] -> the last stage's BatchScores; notes merged per image, counts summed.
        ``positions`` [B]: the images' rows in the run's order (None for images that are not the run's)."""
        return StagesSoFar(feats, explain, positions).apply(self)  # one way to run stages, on any engine

    def _final_descriptors(self, feats: "torch.Tensor", scores: BatchScores) -> list[dict]:
        """The head's descriptor part redone for the final label and runner-up: a later stage (FuDD, a refiner)
        may have changed them, and the why of a label is about that label."""
        explainer = getattr(self.stages[0], "explainer", None)
        if explainer is None:
            return scores.notes
        final = explainer.explain(feats, self.probabilities(scores.logits))
        return [{**note, "descriptors": entry} if "descriptors" in note else note
                for note, entry in zip(scores.notes, final)]

    def summarize(self, counts: dict[str, float], images: int) -> dict[str, Any]:
        info: dict[str, Any] = {}
        for stage in self.stages:
            info.update(stage.summarize(counts, images))
        return info


# A gather runs ``collect(positions [B], feats [B, D], scores)`` of the pipeline so far over every batch of the
# run's images and returns the partial results; ``positions`` are the images' rows in the run's order.
Gather = Callable[[Pipeline, Callable[..., Any]], list[Any]]


class StagesSoFar:
    """One pass of a pipeline's stages over one batch, kept as it grows: applying a pipeline that extends the one
    applied last runs only the new stages. So preparing a stage that needs a global pass (FuDD's pair counts, the
    self-cache) and then scoring the run evaluate each stage once per image batch, not once per later stage."""

    def __init__(self, feats: Any, explain: bool, positions: Any = None) -> None:
        self.feats, self.explain, self.positions = feats, explain, positions
        self.stages: list[Any] = []
        self.scores: BatchScores | None = None
        self.counts: dict[str, float] = {}

    def apply(self, pipeline: Pipeline) -> BatchScores:
        done = len(self.stages)
        if done > len(pipeline.stages) or any(a is not b for a, b in zip(pipeline.stages, self.stages)):
            # not an extension of what ran: start over
            self.stages, self.scores, self.counts, done = [], None, {}, 0
        for stage in pipeline.stages[done:]:
            self.scores = apply_stage(stage, self.feats, self.scores, self.explain, self.positions)
            for key, value in self.scores.counts.items():
                self.counts[key] = self.counts.get(key, 0) + value
            self.stages.append(stage)
        assert self.scores is not None
        scores = dataclasses.replace(self.scores, counts=dict(self.counts))
        if self.explain and len(pipeline.stages) > 1 and scores.notes is not None:  # kept scores stay the head's
            scores.notes = pipeline._final_descriptors(self.feats, scores)
        return scores


def gather_in_process(image_feats: torch.Tensor, run: StagesSoFar | None = None) -> Gather:
    """The single engine's gather: one batch holding every image (through ``run``, so no stage runs twice)."""
    run = run or StagesSoFar(image_feats, False, run_positions(image_feats))

    def gather(upstream: Pipeline, collect):
        return [collect(run_positions(image_feats), image_feats, run.apply(upstream))]

    return gather


def run_positions(image_feats: Any) -> Any:
    """0 … N−1, the rows of a run's features, of the features' kind (numpy runs import no torch)."""
    import numpy as np

    positions = np.arange(image_feats.shape[0])
    if not isinstance(image_feats, np.ndarray):
        import torch

        positions = torch.from_numpy(positions)
    return positions


def apply_stage(stage: Any, feats: Any, upstream: BatchScores | None, explain: bool, positions: Any) -> BatchScores:
    """One stage on one batch; a stage that answers by position (see :class:`Stage`) gets the positions too."""
    if getattr(stage, "by_position", False):
        return stage.apply(feats, upstream, explain, positions=positions)
    return stage.apply(feats, upstream, explain)


def build_pipeline(spec: MethodSpec | str, context: RunContext, gather: Gather) -> tuple[Pipeline, RunReport]:
    """Prepare every stage of ``spec`` in order; each later stage sees the pipeline before it."""
    spec = (parse_spec(spec) if isinstance(spec, str) else spec).resolve(context.options)
    report = RunReport(head=spec.head)
    pipeline: Pipeline | None = None
    for name in (spec.head, *spec.stages):
        record = get_record(name)
        config = context.options.config(name)  # typed once, when the options were made
        stage = record.prepare(context, config, pipeline, gather, report)
        if pipeline is None:  # the head: its text weights and sentences stay at hand for exports and probes
            pipeline = Pipeline(context.class_names, context.text.score_rule, [stage], stage.weights, stage.text_feats)
        else:
            pipeline = pipeline.extended(stage)
    assert pipeline is not None
    return pipeline, report


def run_spec(spec: MethodSpec | str, context: RunContext, image_feats: torch.Tensor) -> MethodOutput:
    """Run a spec on image features in this process: image_feats [N, D] -> MethodOutput."""

    started = time.perf_counter()
    run = StagesSoFar(image_feats, context.options.explain, run_positions(image_feats))
    pipeline, report = build_pipeline(spec, context, gather_in_process(image_feats, run))
    scores = run.apply(pipeline)  # only the stages no gather needed yet
    info = {**report.info, **pipeline.summarize(scores.counts, image_feats.shape[0])}
    return MethodOutput(
        scores.logits, pipeline.probabilities(scores.logits), explanations=_explanations(scores),
        llm_calls=report.llm_calls, llm_tokens=report.llm_tokens, seconds=time.perf_counter() - started,
        warnings=report.warnings, info=info, weights=pipeline.weights, text_feats=pipeline.text_feats,
        artifacts=report.artifacts, labels=scores.labels, label_metric=report.label_metric,
        unknown_scores=scores.unknown_score, label_sets=scores.label_sets,
    )


def _explanations(scores: BatchScores) -> list[dict | None] | None:
    if scores.notes is None:
        return None
    return [note or None for note in scores.notes]


def merge_notes(upstream: list[dict] | None, part: str, own: list[dict | None] | None) -> list[dict] | None:
    """Each image's explanation parts so far plus this stage's ``part`` (skipped where it has nothing to say)."""
    if own is None:
        return upstream
    base = upstream if upstream is not None else [{} for _ in own]
    return [{**b, part: o} if o else b for b, o in zip(base, own)]
