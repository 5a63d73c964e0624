"""Methods as declared pipelines: one registry of records, one spec grammar, one way to run them.

    spec ``cbd+fudd+tip`` ─▶ parse_spec ─▶ build_pipeline (text, LLM, gathers; on the driver)
                         ─▶ Pipeline.apply per batch (in this process, or on Ray workers) ─▶ logits, labels, notes

Records live beside their code: :mod:`.heads` (name, templates, cbd, waffle), :mod:`.cupl`, :mod:`.fudd`, :mod:`.refiners`
(tip, tfup, frechet), :mod:`.gda`, :mod:`.tda`, :mod:`.transclip`, :mod:`.openset` (unknown). A new method is one module and
one ``register(MethodRecord(...))``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..results import MethodOutput
from .options import MethodOptions, as_options
from .pipeline import BatchScores, Pipeline, RunContext, RunReport, TextSide, build_pipeline, run_spec
from .registry import (
    DEFAULT_COMPARISON,
    DEFAULT_DESCRIBER,
    DEFAULT_METHOD,
    HEAD,
    METHODS,
    REFINER,
    RERANK,
    MethodRecord,
    build_config,
    file_options,
    get_record,
    load_plugins,
    method_names,
    option,
    option_fields,
    parse_option,
    promoted_flags,
    register,
    renamed_flags,
    runs_on_numpy,
    summary_keys,
)
from .spec import MethodSpec, parse_spec, parse_specs, spec_help
from .import heads, cupl, fudd, refiners, gda, tda, transclip, openset  # noqa: E402,F401  (each registers its records)
from .cupl import CuplConfig  # noqa: E402
from .fudd import FuddConfig  # noqa: E402
from .heads import CbdConfig, NameConfig, TemplatesConfig, WaffleConfig  # noqa: E402
from .refiners import FrechetConfig, TfupConfig, TipConfig, with_label_support  # noqa: E402
from .gda import GdaConfig  # noqa: E402
from .tda import TdaConfig  # noqa: E402
from .transclip import TransclipConfig  # noqa: E402
from .openset import UnknownConfig  # noqa: E402

load_plugins()  # third-party methods (entry point group ``vlmcls.methods``), after the built-in ones

if TYPE_CHECKING:
    import torch

__all__ = [
    "with_label_support", "MethodOptions", "as_options", "MethodOutput", "MethodRecord", "METHODS", "HEAD", "RERANK", "REFINER",
    "register", "get_record", "method_names", "option", "option_fields", "build_config", "parse_option",
    "promoted_flags", "renamed_flags", "file_options", "load_plugins",
    "MethodSpec", "parse_spec", "parse_specs", "TextSide", "RunContext", "RunReport", "BatchScores", "Pipeline",
    "build_pipeline", "run_spec", "asks_llm", "estimate_llm_cost", "DEFAULT_METHOD", "DEFAULT_COMPARISON",
    "DEFAULT_DESCRIBER", "spec_help", "label_metric", "answers_beyond", "runs_on_numpy", "summary_keys",
    "NameConfig", "TemplatesConfig", "CbdConfig", "WaffleConfig", "CuplConfig", "FuddConfig", "TipConfig",
    "TfupConfig", "FrechetConfig", "GdaConfig", "TdaConfig", "TransclipConfig", "UnknownConfig",
]


def label_metric(context: RunContext) -> Any:
    """The label metric the frechet options name (hierarchy, distances or self_metric), or None: eval scores every
    method's answers with it (expected squared distance), whether or not a spec runs the Fréchet mean. The
    descriptors go in too: with self_metric they shape the metric, as +frechet runs build it."""
    from .refiners import load_label_metric

    options = context.options
    config = options.config("frechet")
    descriptors = options.descriptors or options.config("cbd").descriptors
    return load_label_metric(context, config, descriptors)[0] if config.has_metric else None


def answers_beyond(options: MethodOptions) -> set[str]:
    """Labels the methods whose options were given may answer with that are not classes (a Fréchet label space)."""
    found: set[str] = set()
    for name in options.methods:
        record = get_record(name)
        if record.answers_beyond is not None:
            found.update(record.answers_beyond(options.config(name)) or ())
    return found


def asks_llm(spec: MethodSpec | str, options: MethodOptions) -> bool:
    """Whether running ``spec`` with these options needs an LLM client (the records say, per config)."""
    spec = (parse_spec(spec) if isinstance(spec, str) else spec).resolve(options)
    return any(get_record(name).asks_llm(options.config(name)) for name in (spec.head, *spec.stages))


def estimate_llm_cost(spec: MethodSpec | str, context: RunContext, image_feats: torch.Tensor | None) -> dict[str, Any]:
    """What a run of ``spec`` would spend on the LLM now (--dry-run): per stage, calls and approximate tokens.

    A re-rank's pairs depend on the images: they are ranked with the head when its text needs no LLM call now (a
    descriptor file, or every answer cached), else with templates — an estimate, as the real run may rank a little
    differently.
    """
    options = context.options
    spec = (parse_spec(spec) if isinstance(spec, str) else spec).resolve(options)
    head_record = get_record(spec.head)
    stages: dict[str, Any] = {}
    if head_record.estimate is not None:
        stages.update(head_record.estimate(context, options.config(spec.head), image_feats, None))
    head = None
    for name in spec.stages:
        record = get_record(name)
        if record.estimate is None:
            continue
        if head is None:
            free = all(getattr(e, "to_call", 0) == 0 for e in stages.values())
            head_name = spec.head if free else "templates"
            head = get_record(head_name).prepare(context, options.config(head_name), None, None, RunReport())
        stages.update(record.estimate(context, options.config(name), image_feats, head))
    return stages
