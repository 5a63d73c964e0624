"""`vlmcls classify IMAGES --classes …`: the main job."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..api import Classifier, ClassificationResult
from ..methods import MethodOptions
from ..refine import RefinerOptions
from ..output import check_output_path, write_rows
from ._render import EXIT_INPUT_ERRORS, console, console_err, handle_errors, key_value_table, progress_bar

_SHOWN_ROWS = 30


@handle_errors
def classify(
    images: str = typer.Argument(..., help="A folder (recursive), a .txt list of paths, an image, or an HF dataset (save_to_disk folder, .parquet, imagefolder:DIR)."),
    classes: str = typer.Option(..., "--classes", "-c", help="A file with one class per line, or a comma-separated list."),
    model: str = typer.Option("ViT-B-32:openai", "--model", "-m", help="Model id: ARCH[:TAG], hf-hub:ORG/REPO, local-dir:DIR, hf:ORG/REPO or hf:DIR."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write predictions to .jsonl, .csv or .json."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="How many classes to keep per image."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1, help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, fp16 or bf16 (fp32 on CPU)."),
    method: str = typer.Option("templates", "--method", help="name (class names alone) or templates."),
    templates: Optional[str] = typer.Option(None, "--templates", "-t", help="name, photo, small (default), imagenet80, or a file with one '{}' template per line."),
    aggregation: Optional[str] = typer.Option(None, "--aggregation", help="mean_similarity (CbD) or mean_embedding (CLIP ensembles); default per method."),
    image_column: Optional[str] = typer.Option(None, "--image-column", help="Dataset column holding images."),
    label_column: Optional[str] = typer.Option(None, "--label-column", help="Dataset column holding labels."),
    split: Optional[str] = typer.Option(None, "--split", help="Dataset split (for a DatasetDict)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decoding threads (default: by CPU count)."),
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="Cache folder (default: $VLMCLS_CACHE or cache/)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the embedding cache."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no tables."),
    explain: bool = typer.Option(False, "--explain", help="Say what drove each decision (also in JSONL 'explanation')."),
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
) -> None:
    """Classify every image into one of the classes; see the exit codes in `vlmcls --help`."""
    out_path = check_output_path(output) if output is not None else None
    clf = Classifier(model, device=device, precision=precision, cache_dir=cache_dir, use_cache=not no_cache,
                     batch_size=batch_size, num_workers=workers)
    source_options = {k: v for k, v in {"image_column": image_column, "label_column": label_column, "split": split}.items() if v}
    refiners = RefinerOptions(
        support=support, tip_alpha=tip_alpha, tip_beta=tip_beta, tune=tune, self_cache=self_cache,
        label_space=label_space, hierarchy=hierarchy, distances=distances, self_metric=self_metric,
        frechet_top_k=frechet_top_k,
    )
    options = MethodOptions(templates=templates, aggregation=aggregation, explain=explain, refiners=refiners)
    with progress_bar("encoding images", enabled=not quiet) as progress:
        result = clf.classify(images, classes, method=method, options=options, top_k=top_k, progress=progress,
                              **source_options)
    if out_path is not None:
        write_rows(result.rows(), out_path)
    if not quiet:
        render_result(result, out_path, explain)
    if result.errors:
        raise typer.Exit(EXIT_INPUT_ERRORS)


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
    if out_path is not None:
        summary["output"] = str(out_path)
    counts = Counter(p.label for p in result.ok)
    summary.update({f"  {label}": n for label, n in counts.most_common(10)})
    console_err.print(key_value_table("summary", summary))
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
