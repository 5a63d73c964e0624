"""`vlmcls eval DATA --classes … --methods name,templates`: score methods on labelled images, side by side.

The images are encoded once and every method runs on the same features. Prints the comparison table and the
per-class table of the best method; ``--output`` saves everything as JSON, ``--report`` as one HTML file.
Exit code 1 when some images could not be read or some method failed (the others are still reported).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..methods import DEFAULT_COMPARISON, spec_help
from ._preflight import check_outputs
from ._render import EXIT_INPUT_ERRORS, console, console_err, handle_errors, key_value_table, progress_bar, quiet_libraries
from .describe_cmd import DOMAIN_HINT_OPTION, LLMSettings, with_llm_options
from .prompts_cmd import PROMPTS_DIR_OPTION
from ._benchmark import source_defaults
from ._options import ModelOptions, with_model_options, with_source_options
from ._preflight import check_input_files
from ._settings import with_method_options

__all__ = ["register", "eval_command", "REPORT_OPTION",
           "render_comparison", "render_per_class"]

# The --report flag, shared with `vlmcls classify --report` so both commands spell it the same.
REPORT_OPTION = typer.Option(
    None, "--report", help="Write one self-contained HTML report (tables, charts, a gallery, the error rows) here."
)
_PER_CLASS_ROWS = 40


@handle_errors
@with_llm_options
@with_source_options
@with_model_options
@with_method_options
def eval_command(
    data: str = typer.Argument(..., help="Labelled images: a folder with one sub-folder per class, or an HF dataset (save_to_disk folder, .parquet, imagefolder:DIR), wds:SHARDS (webdataset tar shards, brace ranges, CLIP_benchmark's layout) or hf-dataset:ORG/NAME (or hf-dataset:DIR, a local copy; Parquet datasets are streamed)."),
    classes: Optional[str] = typer.Option(None, "--classes", "-c", help="A file with one class per line, or a comma-separated list; matched to the labels by name. Default for wds: shards in CLIP_benchmark's layout: their classnames.txt; for hf-dataset: the ClassLabel names."),
    methods: str = typer.Option(DEFAULT_COMPARISON, "--methods", help="Comma-separated method specs to compare on the same image features. " + spec_help(), rich_help_panel="Methods"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Save metrics, costs and predictions of every method as .json."),
    report: Optional[Path] = REPORT_OPTION,
    clip_benchmark_json: Optional[Path] = typer.Option(None, "--clip-benchmark-json", help="Also save each method's acc1, acc5 and mean per-class recall in CLIP_benchmark's output format (.json; STEM-METHOD.json per method when several)."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="k of the top-k accuracy (clipped to the number of classes)."),
    domain_hint: Optional[str] = DOMAIN_HINT_OPTION,
    prompts: Optional[Path] = PROMPTS_DIR_OPTION,
    unknown_labels: str = typer.Option("error", "--unknown-labels", help="Labels not among the classes: error (stop), or keep (score those images; only a label-space method can get them right)."),
    unknown_folder: Optional[Path] = typer.Option(None, "--unknown-folder", help="Images known to be none of the classes: eval adds open-set metrics (AUROC, FPR at 95 % TPR, in-list accuracy with and without rejection, achieved in-list recall)."),
    truth: Optional[Path] = typer.Option(None, "--truth", help="Several labels per image: a .jsonl ({\"path\", \"labels\": [...]}) or .csv (path, labels separated by ';') file; eval adds mAP and per-class F1 (use with --multi-label)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no tables."),
    llm_settings: LLMSettings = None,  # from --llm KEY=VALUE (with_llm_options)
    source_options: dict = None,  # from --dataset KEY=VALUE (with_source_options)
    model_options: ModelOptions = None,  # from the model flags (with_model_options)
    method_options: dict = None,  # from --opt METHOD.KEY=VALUE and the promoted flags (with_method_options)
) -> None:
    """Compare methods on labelled images: top-1, top-k, mean per-class recall, LLM calls, tokens and time.

    Each method is a spec: a head, then stages after '+': templates+tip, cbd+fudd+frechet, name+tfup.
    """
    from ..api import load_classes
    from ..report.evaluate import evaluate, options_for_spec, parse_methods
    from ..methods import MethodOptions, file_options, label_metric
    from ..output import write_json
    from ..report.page import REPORT_SUFFIXES, THUMBNAIL_SIZE, write_report

    if quiet:
        quiet_libraries()
    # Everything a user can get wrong is checked before the model loads or any image is encoded.
    names = parse_methods(methods)
    classes, source_templates = source_defaults(data, source_options, classes, method_options, quiet)
    class_names = load_classes(classes)
    options = MethodOptions(methods=method_options, prompts_dir=str(prompts) if prompts else None,
                            domain_hint=domain_hint, explain=report is not None)
    if source_templates is not None:
        options.templates = source_templates
    files = file_options(options.given())  # the options that name files, read from the records
    check_input_files({name: path for name, kind, path in files if kind == "file"},
                      {**{name: path for name, kind, path in files if kind == "dir"}, "--unknown-folder": unknown_folder})
    if truth is not None:
        check_input_files({"--truth": truth}, {})
    targets = check_outputs({
        "--output": (output, (".json",), "eval results are saved as .json"),
        "--report": (report, REPORT_SUFFIXES, "a report is one HTML file: use .html"),
        "--clip-benchmark-json": (clip_benchmark_json, (".json",), "CLIP_benchmark's results are .json"),
    }, [data, *([classes] if isinstance(classes, str) else []), *(path for _, _, path in files)])
    report_path = targets["--report"]
    for spec in names:  # a refiner without its input (tip without --support) fails here, before the model loads
        options_for_spec(spec, options)

    clf = model_options.classifier()
    if report_path is not None:  # thumbnails from the decoded images: no file is read twice
        clf.encoder.thumbnail_size = THUMBNAIL_SIZE
    # One label metric scores every method's answers (E[d²]), so a baseline and its +frechet run compare fairly.
    # The descriptors go in too: with --self-metric they shape the metric, and +frechet runs build it with them.
    metric = label_metric(clf.run_context(class_names, options))
    # The client only connects when a method asks the LLM something, so methods without one need no key.
    with llm_settings.client(clf.store) as client:  # the store stays the Classifier's
        options.llm = client
        with progress_bar("encoding images", enabled=not quiet) as progress:
            result = evaluate(clf, data, class_names, names, options, top_k, label_metric=metric,
                              unknown_labels=unknown_labels, unknown_folder=unknown_folder, truth=truth, progress=progress,
                              **source_options)
    results = result.to_dict() if output is not None or report_path is not None else None  # built once for both
    if output is not None:
        write_json(output, results)
    if clip_benchmark_json is not None:
        from ..report.clip_benchmark import write_clip_benchmark_json

        write_clip_benchmark_json(result, targets["--clip-benchmark-json"])
    if report_path is not None:
        write_report(results, report_path, records=result.records, thumbnails=result.thumbnails)
    if not quiet:
        render_comparison(result)
        render_per_class(result)
        written = {"results": output, "report": report_path}
        for what, where in written.items():
            if where is not None:
                console_err.print(f"{what}: {escape(str(where))}", highlight=False)
    _render_failures(result)
    if result.error_rows or any(not run.ok for run in result.runs):
        raise typer.Exit(EXIT_INPUT_ERRORS)


def render_comparison(result) -> None:
    """The one table of every method: accuracy, costs and status."""
    best = result.best
    k = next((run.metrics.k for run in result.runs if run.metrics is not None), result.top_k)
    squared = any(run.expected_squared_distance is not None for run in result.runs)
    table = Table(title=f"methods on {result.images['labelled']} labelled images (accuracy and recall in %)",
                  title_justify="left")
    any_cached = any(run.info.get("llm_cached_answers") for run in result.runs)
    for col in ("method", "top-1", f"top-{k}", "mean recall", *(["E[d²]"] if squared else []),
                "LLM calls", *(["cached"] if any_cached else []), "tokens", "time s"):
        table.add_column(col, justify="left" if col == "method" else "right", no_wrap=col == "method")
    for run in result.runs:
        name = escape(run.method) + (" *" if best is not None and run is best and len(result.runs) > 1 else "")
        if not run.ok:
            cells = ["[red]failed[/red]", "", ""] + ([""] if squared else [])
        else:
            m = run.metrics
            cells = [_pct(m.top1), _pct(m.top_k), _pct(m.mean_recall)]
            if squared:
                cells.append("-" if run.expected_squared_distance is None else f"{run.expected_squared_distance:.3f}")
        # Answers read from the cache cost nothing this time; their column shows what a fresh run would ask.
        cached = [f"{run.info.get('llm_cached_answers') or 0:,}"] if any_cached else []
        table.add_row(name, *cells, f"{run.llm_calls:,}", *cached, f"{run.llm_tokens:,}", f"{run.seconds:.2f}")
    if best is not None and len(result.runs) > 1:
        table.caption = f"* {escape(best.method)}: the best top-1; the per-class table and confusions below are its."
        table.caption_justify = "left"
    console.print(table)
    calibrated = [run for run in result.runs if run.ok and run.ece is not None]
    if calibrated:  # its own line, so the comparison table keeps its width
        console.print("calibration, ECE (15 bins, % ; lower is better): " + ", ".join(
            f"{escape(run.method)} {_pct(run.ece)}" for run in calibrated), highlight=False)
    _render_open_set(result)
    _render_multi_label(result)
    images = result.images
    console_err.print(key_value_table("images", {
        "total": images["total"],
        "scored (labelled)": images["labelled"],
        "without a label (left out)": images["unlabelled"],
        "errors": images["errors"],
        "encoded now / cached": f"{images['encoded']} / {images['cached']} (once, shared by every method)",
        "encoding time": f"{images['encode_seconds']:.2f} s",
    }))


def _render_open_set(result) -> None:
    """AUROC, FPR95 and accuracy with and without rejection, when the run held images that are none of the classes."""
    runs = [run for run in result.runs if run.ok and run.open_set]
    if not runs:
        return
    table = Table(title="open set: in-list images against images that are none of the classes (in %)",
                  title_justify="left")
    for col in ("method", "score", "AUROC", "FPR95", "top-1 no rejection", "top-1 with rejection",
                "in-list recall", "others rejected"):
        table.add_column(col, justify="left" if col in ("method", "score") else "right")
    for run in runs:
        o = run.open_set
        table.add_row(escape(run.method), escape(o["score"]), _pct(o["auroc"]), _pct(o["fpr_at_95_tpr"]),
                      _pct(o["in_list_top1_without_rejection"]), _pct(o["in_list_top1_with_rejection"]),
                      _pct(o["achieved_in_list_recall"]), _pct(o["others_rejected"]))
    console.print(table)


def _render_multi_label(result) -> None:
    """mAP, F1 and exact match per method, then the per-class F1 of every method, with a multi-label truth file."""
    runs = [run for run in result.runs if run.ok and run.multi_label]
    if not runs:
        return
    table = Table(title=f"several labels per image: {runs[0].multi_label['images']} images of the truth file (in %)",
                  title_justify="left")
    for col in ("method", "labels from", "mAP", "macro F1", "micro F1", "exact match", "labels / image"):
        table.add_column(col, justify="left" if col in ("method", "labels from") else "right")
    for run in runs:
        m = run.multi_label
        table.add_row(escape(run.method), escape(m["labels_from"]), _pct(m["map"]), _pct(m["macro_f1"]),
                      _pct(m["micro_f1"]), _pct(m["exact_match"]), f"{m['labels_per_image']:.2f}")
    console.print(table)
    per_class = Table(title="per-class F1 % (classes with a true image)", title_justify="left")
    per_class.add_column("class")
    for run in runs:
        per_class.add_column(escape(run.method), justify="right")
    for c, score in enumerate(runs[0].multi_label["per_class"]):
        if score["support"]:
            per_class.add_row(escape(score["name"]), *(_pct(run.multi_label["per_class"][c]["f1"]) for run in runs))
    console.print(per_class)


def render_per_class(result) -> None:
    """Per-class recall and precision of the best method, lowest recall first when there are many classes."""
    best = result.best
    if best is None:
        return
    scores = list(best.metrics.per_class)
    note = ""
    if len(scores) > _PER_CLASS_ROWS:
        scores = sorted(scores, key=lambda s: (s.recall is None, s.recall or 0.0))[:_PER_CLASS_ROWS]
        note = f" (the {_PER_CLASS_ROWS} lowest recalls of {len(best.metrics.per_class)})"
    table = Table(title=f"per class: {escape(best.method)}{note}", title_justify="left")
    for col in ("class", "recall %", "precision %", "support", "predicted"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for s in scores:
        table.add_row(escape(s.name), _pct(s.recall), _pct(s.precision), str(s.support), str(s.predicted))
    console.print(table)
    for pair in best.metrics.worst_confusions[:5]:
        console.print(f"confused: {escape(pair.true)} → {escape(pair.predicted)} ({pair.count})", highlight=False)
    if best.metrics.unknown_labels:
        shown = ", ".join(f"'{escape(k)}' ({v})" for k, v in best.metrics.unknown_labels.items())
        console_err.print(f"[yellow]counted as wrong[/yellow] (labels not among the classes): {shown}", highlight=False)


def _render_failures(result) -> None:
    for run in result.runs:
        if not run.ok:
            console_err.print(f"[red]method {escape(run.method)} failed:[/red] {escape(run.error or '')}", highlight=False)
    for pred in result.error_rows[:10]:
        console_err.print(f"[red]error[/red] {escape(pred.id)}: {escape(pred.error or '')}", highlight=False)
    if len(result.error_rows) > 10:
        console_err.print(f"… and {len(result.error_rows) - 10} more errors (all are in the results and the report)")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def register(root: typer.Typer) -> None:
    """Add `eval` to the root app as a plain command."""
    root.command("eval", help="Compare methods on labelled images: accuracy, per-class recall, confusions, costs.")(
        eval_command
    )
