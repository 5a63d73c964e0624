"""Methods as declared pipelines: one registry of records, one spec grammar, one way to run them.

    spec ``cbd+fudd+tip`` ─▶ parse_spec ─▶ build_pipeline (text, LLM, gathers; on the driver)
                         ─▶ Pipeline.apply per batch (in this process, or on Ray workers) ─▶ logits, labels, notes

Records live beside their code: :mod:`.heads` (name, templates, cbd, waffle), :mod:`.cupl`, :mod:`.fudd`, :mod:`.refiners`
(tip, tfup, frechet). A new method is one module and one ``register(MethodRecord(...))``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..results import MethodOutput
from .options import MethodOptions, RefinerOptions
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
    check_settings,
    get_record,
    method_names,
    register,
    runs_on_numpy,
    setting_fields,
)
from .spec import MethodSpec, parse_spec, parse_specs, spec_help
from . import heads, cupl, fudd, refiners  # noqa: E402,F401  (each module registers its records, in this order)

if TYPE_CHECKING:
    import torch

__all__ = [
    "MethodOptions", "RefinerOptions", "MethodOutput", "MethodRecord", "METHODS", "HEAD", "RERANK", "REFINER",
    "register", "get_record", "method_names", "setting_fields", "build_config", "check_settings",
    "MethodSpec", "parse_spec", "parse_specs", "TextSide", "RunContext", "RunReport", "BatchScores", "Pipeline",
    "build_pipeline", "run_spec", "asks_llm", "estimate_llm_cost", "DEFAULT_METHOD", "DEFAULT_COMPARISON",
    "DEFAULT_DESCRIBER", "spec_help",
    "label_metric", "runs_on_numpy",
]


def label_metric(context: RunContext, descriptors: Any = None) -> Any:
    """The label metric the settings name (hierarchy, distances or self_metric), or None: eval scores every
    method's answers with it (expected squared distance), whether or not a spec runs the Fréchet mean."""
    from .refiners import load_label_metric

    config = build_config(get_record("frechet"), context.options.settings())
    return load_label_metric(context, config, descriptors)[0] if config.has_metric else None


def asks_llm(spec: MethodSpec | str, options: MethodOptions) -> bool:
    """Whether running ``spec`` with these settings needs an LLM client (the records say, per config)."""
    spec = (parse_spec(spec) if isinstance(spec, str) else spec).resolve(options)
    settings = options.settings()
    return any(get_record(name).asks_llm(build_config(get_record(name), settings)) for name in (spec.head, *spec.stages))


def estimate_llm_cost(spec: MethodSpec | str, context: RunContext, image_feats: torch.Tensor | None) -> dict[str, Any]:
    """What a run of ``spec`` would spend on the LLM now (--dry-run): per stage, calls and approximate tokens.

    A re-rank's pairs depend on the images: they are ranked with the head when its text needs no LLM call now (a
    descriptor file, or every answer cached), else with templates — an estimate, as the real run may rank a little
    differently.
    """
    spec = (parse_spec(spec) if isinstance(spec, str) else spec).resolve(context.options)
    settings = context.options.settings()
    head_record = get_record(spec.head)
    stages: dict[str, Any] = {}
    if head_record.estimate is not None:
        stages.update(head_record.estimate(context, build_config(head_record, settings), image_feats, None))
    head = None
    for name in spec.stages:
        record = get_record(name)
        if record.estimate is None:
            continue
        if head is None:
            free = all(getattr(e, "to_call", 0) == 0 for e in stages.values())
            head_name = spec.head if free else "templates"
            head_record_now = get_record(head_name)
            head = head_record_now.prepare(context, build_config(head_record_now, settings), None, None, RunReport())
        stages.update(record.estimate(context, build_config(record, settings), image_feats, head))
    return stages
