"""`vlmcls classify IMAGES --classes …`: the main job."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..cache import Store
from ..descriptors import DescriptorSet
from ..errors import ConfigError
from ..llm import LLMClient, LLMConfig
from ..report import check_report_path
from ..output import check_output_path, write_json, write_rows
from .describe_cmd import (
    with_llm_config,
    DOMAIN_HINT_OPTION,
    DRY_RUN_OPTION,
    REFRESH_OPTION,
    render_estimate,
)
from .eval_cmd import REPORT_OPTION
from .prompts_cmd import PROMPTS_DIR_OPTION
from ._render import EXIT_INPUT_ERRORS, console, console_err, handle_errors, key_value_table, progress_bar
from ._options import WORKER_TYPE_OPTION, WORKERS_OPTION, with_source_options

if TYPE_CHECKING:  # the model side (torch) is imported when a command runs, not for --help
    from ..api import ClassificationResult, Classifier
    from ..methods import MethodOptions

_SHOWN_ROWS = 30


@handle_errors
@with_llm_config
@with_source_options
def classify(
    images: str = typer.Argument(..., help="A folder (recursive), a .txt list of paths, an image, or an HF dataset (save_to_disk folder, .parquet, imagefolder:DIR)."),
    classes: str = typer.Option(..., "--classes", "-c", help="A file with one class per line, or a comma-separated list."),
    model: str = typer.Option("ViT-B-32:openai", "--model", "-m", help="Model id: ARCH[:TAG], hf-hub:ORG/REPO, local-dir:DIR, hf:ORG/REPO or hf:DIR."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write predictions to .jsonl, .csv or .json."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="How many classes to keep per image."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1, help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, fp16 or bf16 (fp32 on CPU); int8: CPU only, image tower quantised (needs vlmcls[int8])."),
    method: str = typer.Option("templates", "--method", help="name, templates, cbd (descriptors), waffle (random descriptors), fudd (differential follow-ups), tip, tfup."),
    templates: Optional[str] = typer.Option(None, "--templates", "-t", help="name, photo, small (default), imagenet80, or a file with one '{}' template per line."),
    aggregation: Optional[str] = typer.Option(None, "--aggregation", help="mean_similarity (CbD) or mean_embedding (CLIP ensembles); default per method."),
    workers: Optional[int] = WORKERS_OPTION,
    worker_type: str = WORKER_TYPE_OPTION,
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="Cache folder (default: $VLMCLS_CACHE or cache/)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the embedding cache."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no tables."),
    explain: bool = typer.Option(False, "--explain", help="Say what drove each decision (also in JSONL 'explanation')."),
    report: Optional[Path] = REPORT_OPTION,
    descriptors: Optional[Path] = typer.Option(None, "--descriptors", help="CbD descriptor JSON {class: [descriptor, …]} (no LLM needed).", rich_help_panel="LLM"),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="FuDD pair JSON to use instead of asking the LLM.", rich_help_panel="LLM"),
    export_descriptors: Optional[Path] = typer.Option(None, "--export-descriptors", help="Write the descriptors used to this JSON file.", rich_help_panel="LLM"),
    export_pairs: Optional[Path] = typer.Option(None, "--export-pairs", help="Write the FuDD pair descriptions used to this JSON file.", rich_help_panel="LLM"),
    fudd_k: int = typer.Option(10, "--fudd-k", min=2, help="FuDD: size of each image's ambiguous set.", rich_help_panel="LLM"),
    fudd_rank: str = typer.Option("base", "--fudd-rank", help="FuDD: rank the ambiguous set by 'base' (the run's best first scores) or 'template' (the reference's single template).", rich_help_panel="LLM"),
    fudd_base: Optional[str] = typer.Option(None, "--fudd-base", help="FuDD: first-stage method (default cbd when descriptors or an LLM exist, else templates).", rich_help_panel="LLM"),
    max_pairs: Optional[int] = typer.Option(None, "--max-pairs", min=1, help="FuDD: ask about at most this many pairs (most frequent first).", rich_help_panel="LLM"),
    token_budget: Optional[int] = typer.Option(None, "--token-budget", min=1, help="FuDD: stop asking about pairs once this many tokens are spent.", rich_help_panel="LLM"),
    domain_hint: Optional[str] = DOMAIN_HINT_OPTION,
    prompts: Optional[Path] = PROMPTS_DIR_OPTION,
    refresh: bool = REFRESH_OPTION,
    dry_run: bool = DRY_RUN_OPTION,
    engine: str = typer.Option("single", "--engine", help="single (this process) or ray (Ray Data, many workers or machines).", rich_help_panel="Scale out"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address (e.g. auto); default: start Ray locally.", rich_help_panel="Scale out"),
    ray_workers: Optional[int] = typer.Option(None, "--ray-workers", min=1, help="Encoder actors (default: one per GPU, else 7 in 8 CPUs).", rich_help_panel="Scale out"),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Ray: write sharded predictions into this folder.", rich_help_panel="Scale out"),
    output_format: str = typer.Option("parquet", "--output-format", help="Ray shards: parquet or jsonl.", rich_help_panel="Scale out"),
    no_collect: bool = typer.Option(False, "--no-collect", help="Ray: leave predictions in --output-dir only (for very large runs).", rich_help_panel="Scale out"),
    support: Optional[Path] = typer.Option(None, "--support", help="Tip-Adapter: a folder of labelled shots (class sub-folders).", rich_help_panel="Refiners"),
    tip_alpha: Optional[float] = typer.Option(None, "--tip-alpha", help="Tip-Adapter residual weight α (default 1).", rich_help_panel="Refiners"),
    tip_beta: Optional[float] = typer.Option(None, "--tip-beta", help="Tip-Adapter sharpness β (default 1).", rich_help_panel="Refiners"),
    tune: bool = typer.Option(False, "--tune", help="Pick α and β by leave-one-out on the support set.", rich_help_panel="Refiners"),
    self_cache: bool = typer.Option(False, "--self-cache", help="TFUP-style cache built from the images themselves.", rich_help_panel="Refiners"),
    label_space: Optional[str] = typer.Option(None, "--label-space", help="Fréchet mean: labels that may be predicted (file or comma list; default all labels of the metric).", rich_help_panel="Refiners"),
    hierarchy: Optional[Path] = typer.Option(None, "--hierarchy", help="Fréchet mean metric: parent/child edges file.", rich_help_panel="Refiners"),
    distances: Optional[Path] = typer.Option(None, "--distances", help="Fréchet mean metric: named distance matrix (.csv, .npy).", rich_help_panel="Refiners"),
    self_metric: bool = typer.Option(False, "--self-metric", help="Fréchet mean metric from the labels' text embeddings.", rich_help_panel="Refiners"),
    frechet_top_k: Optional[int] = typer.Option(None, "--frechet-top-k", min=1, help="Keep each image's k most probable classes in the Fréchet sum.", rich_help_panel="Refiners"),
    frechet_scale: Optional[float] = typer.Option(None, "--frechet-scale", min=0.0, help="Fréchet mean: P = softmax(scale·cos) (default: the model's logit scale).", rich_help_panel="Refiners"),
    llm_config: LLMConfig = None,  # from the LLM flags (with_llm_config)
    source_options: dict = None,  # from the dataset flags (with_source_options)
) -> None:
    """Classify every image into one of the classes; see the exit codes in `vlmcls --help`."""
    out_path = check_output_path(output) if output is not None else None
    if report is not None:
        check_report_path(report)
    if engine not in ("single", "ray"):
        raise ConfigError(f"unknown engine '{engine}'. Valid: single, ray.")
    if engine == "single" and (ray_address or ray_workers or output_dir or no_collect):
        raise ConfigError("--ray-address, --ray-workers, --output-dir and --no-collect need --engine ray.")
    from ..api import Classifier, as_records
    from ..methods import MethodOptions
    from ..refine import RefinerOptions

    records = None  # the single engine lists the source once, for the run and the report
    clf = None  # the Ray engine loads the model in its workers (and once on the driver for the text side)
    if engine == "single" or dry_run:
        clf = Classifier(model, device=device, precision=precision, cache_dir=cache_dir, use_cache=not no_cache,
                         batch_size=batch_size, num_workers=workers, worker_type=worker_type)
    refiners = RefinerOptions(
        support=support, tip_alpha=tip_alpha, tip_beta=tip_beta, tune=tune, self_cache=self_cache,
        label_space=label_space, hierarchy=hierarchy, distances=distances, self_metric=self_metric,
        frechet_top_k=frechet_top_k, frechet_scale=frechet_scale,
    )
    extra = {"fudd_k": fudd_k, "fudd_rank": fudd_rank, "fudd_base": fudd_base, "max_pairs": max_pairs,
             "token_budget": token_budget, "pairs_file": pairs}
    options = MethodOptions(templates=templates, aggregation=aggregation, explain=explain or report is not None, refiners=refiners,
                            descriptors=descriptors, prompts_dir=str(prompts) if prompts else None,
                            domain_hint=domain_hint, extra=extra)
    needs_llm = method == "cbd" and descriptors is None or method == "fudd" and (pairs is None or (descriptors is None and fudd_base in (None, "cbd")))
    llm = None
    if needs_llm:
        store = clf.store if clf is not None else (None if no_cache else Store(cache_dir))
        llm = options.llm = LLMClient(llm_config, store, refresh=refresh)
    try:
        if dry_run:
            _dry_run(clf, images, classes, method, options, source_options, quiet)
            return
        if engine == "ray":
            from ..distributed import classify_with_ray

            result = classify_with_ray(
                model, images, classes, method=method, options=options, top_k=top_k, batch_size=batch_size,
                device=device, precision=precision, num_workers=ray_workers, ray_address=ray_address,
                output_dir=output_dir, output_format=output_format, collect=not no_collect,
                cache_dir=cache_dir, **source_options,
            )
        else:
            records = as_records(images, **source_options)  # listed once: the run and the report's thumbnails
            if report is not None:  # thumbnails from the decoded images: no file is read twice
                from ..report import THUMBNAIL_SIZE

                clf.encoder.thumbnail_size = THUMBNAIL_SIZE
            with progress_bar("encoding images", enabled=not quiet) as progress:
                result = clf.classify(records, classes, method=method, options=options, top_k=top_k,
                                      progress=progress)
    finally:
        if llm is not None:
            llm.close()
    if export_descriptors is not None and "descriptors" in result.artifacts:
        DescriptorSet(result.artifacts["descriptors"]).to_json(export_descriptors)
    if export_pairs is not None and "pairs" in result.artifacts:
        write_json(export_pairs, result.artifacts["pairs"])
    if out_path is not None:
        write_rows(result.rows(), out_path)
    if report is not None:
        write_classify_report(result, report, images, source_options, model, quiet, records=records)
    if not quiet:
        render_result(result, out_path, explain)
    if out_path is not None and result.warnings:
        write_rows(result.warnings, out_path.with_name(out_path.stem + ".warnings.jsonl"))
    if result.errors or result.warnings or result.stats.get("errors"):
        raise typer.Exit(EXIT_INPUT_ERRORS)


def write_classify_report(result, report_path: Path, images: Any = None, source_options: dict | None = None,
                          model: str | None = None, quiet: bool = False, records: list | None = None) -> Path:
    """For `classify --report`: the same HTML report without labels (summary, predicted classes, gallery, errors).

    ``records``: the run's image records, for thumbnails (dataset rows have no path). Without them ``images``, the
    classify source, is listed again (no decoding). Call ``vlmcls.report.check_report_path`` before the run to fail
    early on a bad path.
    """
    from ..api import as_records
    from ..report import write_report

    if records is None and images is not None:
        try:
            records = as_records(images, **(source_options or {}))
        except ConfigError:  # the run already read this source; without records, thumbnails come from paths
            records = None
    path = write_report(result, report_path, records=records, data=str(images) if images is not None else None,
                        model=model)
    if not quiet:
        console_err.print(f"report: {escape(str(path))}", highlight=False)
    return path


def _dry_run(clf: Classifier, images, classes, method: str, options: MethodOptions, source_options: dict, quiet: bool) -> None:
    """Print what the run would spend on the LLM, encoding images only when FuDD's pairs depend on them."""
    from ..api import load_classes
    from ..llm import CallEstimate
    from ..methods_llm import estimate_llm_cost

    class_names = load_classes(classes)
    feats = None
    if method == "fudd":
        with progress_bar("encoding images", enabled=not quiet) as progress:
            feats = clf.encode_images(images, progress=progress, **source_options).feats
    stages = estimate_llm_cost(clf, feats, class_names, method, options)
    if not stages:
        console.print(f"dry run: method '{method}' makes no LLM calls with these options.")
    for stage, estimate in stages.items():
        if isinstance(estimate, CallEstimate):
            render_estimate(estimate, stage)
        else:
            console.print(f"{stage}: {estimate}")


def render_result(result: ClassificationResult, out_path: Path | None, explain: bool = False) -> None:
    """Predictions (when not written to a file), then the run summary."""
    if out_path is None:
        table = Table(title="predictions", title_justify="left")
        for col in ("image", "label", "prob", "runner-up"):
            table.add_column(col)
        for pred in result.predictions[:_SHOWN_ROWS]:
            if pred.error:
                table.add_row(pred.id, "[red]error[/red]", "", pred.error)
            else:
                runner = f"{pred.top_k[1][0]} ({pred.top_k[1][1]:.2f})" if len(pred.top_k) > 1 else ""
                table.add_row(pred.id, pred.label, f"{pred.top_k[0][1]:.3f}", runner)
        console.print(table)
        if len(result.predictions) > _SHOWN_ROWS:
            console.print(f"… {len(result.predictions) - _SHOWN_ROWS} more rows: use --output to keep them all.")
    if explain:
        render_explanations(result)
    stats = result.stats
    seconds = stats.get("seconds", 0) or 0
    summary = {
        "images": stats.get("images"),
        "classified": len(result.ok),
        "errors": len(result.errors),
        "encoded now / cached": f"{stats.get('encoded')} / {stats.get('cached')}",
        "classes": len(result.class_names),
        "time": f"{seconds:.2f} s ({stats.get('images', 0) / seconds:.1f} img/s)" if seconds else "-",
    }
    if stats.get("llm_calls") or stats.get("llm_tokens") or stats.get("llm_cached_answers"):
        summary["LLM calls / cached"] = f"{stats.get('llm_calls', 0)} / {stats.get('llm_cached_answers', 0)}"
        summary["LLM tokens"] = f"{stats.get('llm_tokens', 0):,}"
    for key in ("unique_pairs", "pairs_asked", "pairs_answered", "images_moved", "tip_alpha", "tip_beta", "label_space_size"):
        if key in stats:
            summary[key.replace("_", " ")] = stats[key]
    if out_path is not None:
        summary["output"] = str(out_path)
    counts = Counter(p.label for p in result.ok)
    summary.update({f"  {label}": n for label, n in counts.most_common(10)})
    console_err.print(key_value_table("summary", summary))
    for row in result.warnings[:10]:
        console_err.print(f"[yellow]{row.get('severity', 'warning')}[/yellow] {row.get('item', '')}: {row.get('message', row)}", highlight=False)
    for pred in result.errors[:10]:
        console_err.print(f"[red]error[/red] {pred.id}: {pred.error}", highlight=False)
    if len(result.errors) > 10:
        console_err.print(f"… and {len(result.errors) - 10} more errors (all are in the output file)")


def render_explanations(result: ClassificationResult, limit: int = _SHOWN_ROWS) -> None:
    """One block per image: what each part of the pipeline contributed to its decision."""
    for pred in result.ok[:limit]:
        if not pred.explanation:
            continue
        console.print(f"[bold]{pred.id}[/bold] → {pred.label}", highlight=False)
        for part, detail in pred.explanation.items():
            console.print(f"  {part}: {_short(detail)}", highlight=False, markup=False)


def _short(detail) -> str:
    import json

    text = json.dumps(detail, ensure_ascii=False, default=str)
    return text if len(text) < 400 else text[:400] + "…"
