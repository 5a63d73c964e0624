"""Eval results in CLIP_benchmark's output format, so a script can set the two side by side.

CLIP_benchmark (``clip_benchmark eval --output``) writes one JSON object per dataset and model::

    {"dataset": "wds/imagenet1k", "model": "ViT-B-32", "pretrained": "openai",
     "task": "zeroshot_classification", "language": "en",
     "metrics": {"acc1": 0.63, "acc5": 0.88, "mean_per_class_recall": 0.63}}

with the metrics as fractions. vlmcls adds ``vlmcls_method`` (which method gave them) and nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..output import write_json

__all__ = ["clip_benchmark_record", "write_clip_benchmark_json"]


def clip_benchmark_record(report: Any, run: Any, dataset: str | None = None) -> dict[str, Any]:
    """One method's run of an eval report as CLIP_benchmark's result object."""
    from ..encode.model_ids import parse_model_id

    # CLIP_benchmark's --model and --pretrained, both strings: its `build` joins them (model + ' ' + pretrained),
    # so a null pretrained breaks it. An id without a named checkpoint (local-dir:, hf-hub:) is open_clip's model
    # name whole, with pretrained "", as CLIP_benchmark is called for such a model.
    model, pretrained = report.model or "", ""
    if report.model:
        try:
            spec = parse_model_id(report.model)
            if spec.pretrained:
                model, pretrained = spec.name, spec.pretrained
        except Exception:  # an id only the API's own backend knows: keep it whole
            pass
    metrics = run.metrics
    acc5 = metrics.top_k if metrics.k == 5 else None  # CLIP_benchmark's acc5 is top-5 exactly
    return {
        "dataset": dataset or report.data,
        "model": model,
        "pretrained": pretrained,
        "task": "zeroshot_classification",
        "metrics": {"acc1": float(metrics.top1), "acc5": None if acc5 is None else float(acc5),
                    "mean_per_class_recall": None if metrics.mean_recall is None else float(metrics.mean_recall)},
        "language": "en",
        "vlmcls_method": run.method,
    }


def write_clip_benchmark_json(report: Any, path: str | Path, dataset: str | None = None) -> list[Path]:
    """Write each scored method's CLIP_benchmark object: ``path`` for one method, ``STEM-METHOD.json`` for several."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        raise ConfigError(f"CLIP_benchmark results file '{path}' must end in .json.")
    runs = [run for run in report.runs if run.ok and run.metrics is not None]
    if not runs:
        raise ConfigError("no method was scored, so there is nothing to write in CLIP_benchmark's format.")
    written = []
    for run in runs:
        target = path if len(runs) == 1 else path.with_name(f"{path.stem}-{_safe(run.method)}.json")
        written.append(write_json(target, clip_benchmark_record(report, run, dataset)))
    return written


def _safe(method: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in method)
