"""`vlmcls classify IMAGES --classes …`: the main job."""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..encode.store import Store
from ..llm.descriptors import DescriptorSet
from ..engines import LocalEngine, RunRequest
from ..errors import ConfigError
from ..methods import DEFAULT_METHOD, spec_help
from ..report.page import REPORT_SUFFIXES
from ..output import OUTPUT_SUFFIXES, write_json, write_result, write_rows
from ..review.run_results import run_settings, run_settings_path
from .describe_cmd import (
    with_llm_options,
    DOMAIN_HINT_OPTION,
    DRY_RUN_OPTION,
    LLMSettings,
    render_estimate,
)
from .eval_cmd import REPORT_OPTION
from .prompts_cmd import PROMPTS_DIR_OPTION
from ._preflight import check_input_files, check_outputs
from ._render import EXIT_INPUT_ERRORS, console, console_err, handle_errors, key_value_table, progress_bar, quiet_libraries, safe
from ._benchmark import source_defaults
from ._options import ModelOptions, key_values, with_model_options, with_source_options
from ._settings import with_method_options

if TYPE_CHECKING:  # the model side (torch) is imported when a command runs, not for --help
    from ..api import ClassificationResult

_SHOWN_ROWS = 30


RAY_KEYS = {"address": str, "workers": int, "output_dir": str, "output_format": str, "collect": bool,
            "feature_store": str, "carry_scores": bool}  # the RayEngine's settings
RAY_OPTION = typer.Option(
    None, "--ray", help="KEY=VALUE for --engine ray (repeatable): address=auto (default: start Ray locally), workers=N "
    "(encoder actors; default one per GPU, else 7 in 8 CPUs), output_dir=DIR (sharded predictions), "
    "output_format=parquet|jsonl, collect=false (leave predictions in output_dir only), feature_store=DIR (image "
    "features for later runs; default <cache>/features), carry_scores=false (each pass re-runs the stages before it "
    "instead of the rows carrying their scores; keeps no [images × classes] logits in Ray's object store).",
    rich_help_panel="Scale out")
EXPORT_OPTION = typer.Option(
    None, "--export", help="Write the class texts the run used into this folder, one JSON file per kind: "
    "descriptors.json, pairs.json, cupl_sentences.json (each in the format its option reads back).")


@handle_errors
@with_llm_options
@with_source_options
@with_model_options
@with_method_options
def classify(
    images: str = typer.Argument(..., metavar="IMAGES", help="A folder (recursive), a .txt list of paths, an image, or an HF dataset (save_to_disk folder, .parquet, imagefolder:DIR)."),
    classes: Optional[str] = typer.Option(None, "--classes", "-c", help="A file with one class per line, or a comma-separated list. Default for wds: shards in CLIP_benchmark's layout: their classnames.txt; for hf-dataset: the ClassLabel names."),
    method: str = typer.Option(DEFAULT_METHOD, "--method", help=spec_help(), rich_help_panel="Methods"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write predictions to .jsonl, .csv, .json or .parquet."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="How many classes to keep per image."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no tables."),
    explain: bool = typer.Option(False, "--explain", help="Say what drove each decision (also in JSONL 'explanation')."),
    report: Optional[Path] = REPORT_OPTION,
    export: Optional[Path] = EXPORT_OPTION,
    domain_hint: Optional[str] = DOMAIN_HINT_OPTION,
    prompts: Optional[Path] = PROMPTS_DIR_OPTION,
    dry_run: bool = DRY_RUN_OPTION,
    watch: bool = typer.Option(False, "--watch", help="Keep the model loaded and re-run when the classes, a method's files, templates or prompt files change (Ctrl-C ends)."),
    watch_limit: Optional[int] = typer.Option(None, "--watch-limit", min=0, hidden=True, help="Stop watching after this many re-runs (for tests and scripts)."),
    engine: str = typer.Option("single", "--engine", help="single (this process) or ray (Ray Data, many workers or machines).", rich_help_panel="Scale out"),
    ray: Optional[List[str]] = RAY_OPTION,
    llm_settings: LLMSettings = None,  # from --llm KEY=VALUE (with_llm_options)
    source_options: dict = None,  # from --dataset KEY=VALUE (with_source_options)
    model_options: ModelOptions = None,  # from the model flags (with_model_options)
    method_options: dict = None,  # from --opt METHOD.KEY=VALUE and the promoted flags (with_method_options)
) -> None:
    """Classify every image into one of the classes; see the exit codes in `vlmcls --help`."""
    if engine not in ("single", "ray"):
        raise ConfigError(f"unknown engine '{engine}'. Valid: single, ray.")
    ray_options = key_values(ray, "--ray", RAY_KEYS)
    if engine == "single" and ray_options:
        raise ConfigError("--ray KEY=VALUE needs --engine ray.")
    if watch and (engine != "single" or dry_run):
        raise ConfigError("--watch runs the single-process engine; drop --engine ray / --dry-run to watch.")
    from ..api import as_records, load_classes
    from ..methods import MethodOptions, file_options, parse_spec

    if quiet:
        quiet_libraries()
    parse_spec(method)  # a misspelt method fails before the folder is listed
    options = MethodOptions(methods=method_options, explain=explain or report is not None, domain_hint=domain_hint,
                            prompts_dir=str(prompts) if prompts else None)
    classes, source_templates = source_defaults(images, source_options, classes, method_options, quiet)
    if source_templates is not None:
        options.templates = source_templates
    files = file_options(options.given())  # the options that name files, read from the records
    # Everything a user can get wrong is checked before the model loads (which can take a minute).
    load_classes(classes)
    check_input_files({name: path for name, kind, path in files if kind == "file"},
                      {**{name: path for name, kind, path in files if kind == "dir"}, "--prompts": prompts})
    records = None  # the single engine lists the source once, for the run and the report
    if engine == "single":
        records = as_records(images, **source_options)
    inputs = [images, *([classes] if isinstance(classes, str) else []),  # a list: a source's own class names
              *(path for _, _, path in files),
              *map(operator.attrgetter("path_text"), records or [])]  # None for dataset rows
    targets = check_outputs({
        "--output": (output, OUTPUT_SUFFIXES, None),
        "--report": (report, REPORT_SUFFIXES, "a report is one HTML file: use .html"),
    }, inputs)
    out_path = targets["--output"]
    if export is not None and export.exists() and not export.is_dir():
        raise ConfigError(f"--export '{export}' is a file; give a folder (it is created when missing).")

    clf = None  # the Ray engine loads the model in its workers (and once on the driver for the text side)
    if engine == "single" or dry_run:
        clf = model_options.classifier()
    # The client only connects when a stage asks the LLM something, so runs without one need no key.
    store = clf.store if clf is not None else (None if model_options.no_cache else Store(model_options.cache_dir))
    llm = options.llm = llm_settings.client(store)
    outputs = RunOutputs(out_path, report, export, images, source_options, model_options.model, quiet,
                         settings=run_settings(model_options.model, load_classes(classes), method,
                                               _absolute_files(method_options, files), images, source_options, top_k))
    if report is not None and engine == "single" and not dry_run:  # thumbnails from the decoded images
        from ..report.page import THUMBNAIL_SIZE

        clf.encoder.thumbnail_size = THUMBNAIL_SIZE
    # One request, carried out by the engine asked for (the single engine lists the source once, above).
    request = RunRequest(records if records is not None else images, classes, method, options, top_k,
                         source_options if records is None else {})
    try:
        if dry_run:
            _dry_run(LocalEngine(clf), request, method, quiet)
            return
        if engine == "ray":
            from ..engines.ray import RayEngine

            m = model_options
            runner = RayEngine(m.model, m.device, m.precision, m.batch_size, heic_thumbnails=m.heic_thumbnails,
                               cache_dir=m.cache_dir, **ray_options)
            result = runner.run(request)
        elif watch:
            from .watch import watch_and_rerun

            exit_code = watch_and_rerun(LocalEngine(clf), request, outputs, explain, max_reruns=watch_limit,
                                        render_result=render_result, exit_code_of=exit_code_of)
            raise typer.Exit(exit_code)
        else:
            with progress_bar("encoding images", enabled=not quiet) as progress:
                result = LocalEngine(clf).run(request, progress)  # the writers read the table, not tensors
    finally:
        llm.close()
    outputs.write(result, records)
    if not quiet:
        render_result(result, out_path, explain)
    raise typer.Exit(exit_code_of(result))


def exit_code_of(result: ClassificationResult) -> int:
    """0 when every input was classified and nothing fell back, else 1 (the README's exit codes)."""
    return EXIT_INPUT_ERRORS if result.errors or result.warnings or result.stats.get("errors") else 0


@dataclass
class RunOutputs:
    """The files one classify run writes (all checked before the model loaded), rewritten on every --watch re-run."""

    predictions: Optional[Path]
    report: Optional[Path]
    export: Optional[Path]  # a folder: one JSON file per kind of class text the run used
    images: Any
    source_options: dict
    model: str
    quiet: bool
    # image id -> report thumbnail: those made while decoding and those the report read, so a --watch re-run
    # reads no image file again
    thumbnails: dict = field(default_factory=dict)
    settings: Optional[dict] = None  # the run's settings, written beside the predictions (out.run.json) for review

    def write(self, result: ClassificationResult, records: list | None) -> None:
        if self.export is not None:
            export_artifacts(result.artifacts, self.export)
        if self.predictions is not None:
            write_result(result, self.predictions)  # from the result table's columns
            warnings_path = self.predictions.with_name(self.predictions.stem + ".warnings.jsonl")
            if result.warnings:
                write_rows(result.warnings, warnings_path)
            else:  # a sidecar left by an earlier run would describe warnings this run did not have
                warnings_path.unlink(missing_ok=True)
            if self.settings is not None:
                write_json(run_settings_path(self.predictions), self.settings)
        if self.report is not None:
            write_classify_report(result, self.report, self.images, self.source_options, self.model, self.quiet,
                                  records=records, thumbnails=self.thumbnails)


def _absolute_files(method_options: dict | None, files: list) -> dict:
    """The options as given, those naming files made absolute (the sidecar is read from other folders)."""
    options = {name: dict(values) for name, values in (method_options or {}).items()}
    for dotted, _, path in files:
        name, key = dotted.split(".", 1)
        if key in options.get(name, {}):
            options[name][key] = str(Path(path).expanduser().absolute())
    return options


def export_artifacts(artifacts: dict, folder: Path) -> list[Path]:
    """Every class text a run's methods made (``RunReport.artifacts``: descriptors, pairs, CuPL sentences, …) as
    ``folder/<kind>.json``; what is not JSON data (thumbnails) is skipped."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, value in artifacts.items():
        if isinstance(value, dict) and kind != "thumbnails":
            path = folder / f"{kind}.json"
            if kind == "descriptors":
                DescriptorSet(value).to_json(path)
            else:
                write_json(path, value)
            written.append(path)
    return written


def write_classify_report(result, report_path: Path, images: Any = None, source_options: dict | None = None,
                          model: str | None = None, quiet: bool = False, records: list | None = None,
                          thumbnails: dict | None = None) -> Path:
    """For `classify --report`: the same HTML report without labels (summary, predicted classes, gallery, errors).

    ``records``: the run's image records, for thumbnails (dataset rows have no path). Without them ``images``, the
    classify source, is listed again (no decoding). Call ``vlmcls.report.page.check_report_path`` before the run to fail
    early on a bad path. ``thumbnails``: see :func:`vlmcls.report.page.write_report`.
    """
    from ..api import as_records
    from ..report.page import write_report

    if records is None and images is not None:
        try:
            records = as_records(images, **(source_options or {}))
        except ConfigError:  # the run already read this source; without records, thumbnails come from paths
            records = None
    path = write_report(result, report_path, records=records, data=str(images) if images is not None else None,
                        model=model, thumbnails=thumbnails)
    if not quiet:
        console_err.print(f"report: {escape(str(path))}", highlight=False)
    return path


def _dry_run(engine: LocalEngine, request: RunRequest, method: str, quiet: bool) -> None:
    """Print what the run would spend on the LLM (the engine encodes images only when FuDD's pairs depend on them)."""
    from ..llm.client import CallEstimate

    with progress_bar("encoding images", enabled=not quiet) as progress:
        stages = engine.estimate(request, progress)
    if not stages:
        console.print(f"dry run: method '{safe(method)}' makes no LLM calls with these options.")
    for stage, estimate in stages.items():
        if isinstance(estimate, CallEstimate):
            render_estimate(estimate, stage)
        else:
            console.print(f"{safe(stage)}: {safe(estimate)}")


def render_result(result: ClassificationResult, out_path: Path | None, explain: bool = False) -> None:
    """Predictions (when not written to a file), then the run summary."""
    if out_path is None:
        table = Table(title="predictions", title_justify="left")
        for col in ("image", "label", "prob", "runner-up"):
            table.add_column(col)
        for pred in result.predictions[:_SHOWN_ROWS]:
            if pred.error:
                table.add_row(safe(pred.id), "[red]error[/red]", "", safe(pred.error))
            else:
                runner = f"{pred.top_k[1][0]} ({pred.top_k[1][1]:.2f})" if len(pred.top_k) > 1 else ""
                table.add_row(safe(pred.id), safe(pred.label), f"{pred.top_k[0][1]:.3f}", safe(runner))
        console.print(table)
        if len(result.predictions) > _SHOWN_ROWS:
            console.print(f"… {len(result.predictions) - _SHOWN_ROWS} more rows: use --output to keep them all.")
    if explain:
        render_explanations(result)
    stats = result.stats
    seconds = stats.get("seconds", 0) or 0
    table = result.table
    ok = table.ok_mask()
    summary = {
        "images": stats.get("images"),
        "classified": int(ok.sum()),
        "errors": int(len(ok) - ok.sum()),
        "encoded now / cached": f"{stats.get('encoded')} / {stats.get('cached')}",
        "classes": len(result.class_names),
        "time": f"{seconds:.2f} s ({stats.get('images', 0) / seconds:.1f} img/s)" if seconds else "-",
    }
    summary.update(accuracy_summary(result))
    if stats.get("llm_calls") or stats.get("llm_tokens") or stats.get("llm_cached_answers"):
        summary["LLM calls / cached"] = f"{stats.get('llm_calls', 0)} / {stats.get('llm_cached_answers', 0)}"
        summary["LLM tokens"] = f"{stats.get('llm_tokens', 0):,}"
    from ..methods import parse_spec, summary_keys

    spec = parse_spec(stats["method"]) if stats.get("method") else None
    for key in summary_keys((spec.head, *spec.stages) if spec else ()):  # each record names the facts to show
        if key in stats:
            summary[key.replace("_", " ")] = stats[key]
    if out_path is not None:
        summary["output"] = str(out_path)
    counts = Counter(label for label, good in zip(table.labels, ok) if good)
    if counts:
        shown = min(10, len(counts))
        summary[f"predicted per class (top {shown} of {len(counts)})" if len(counts) > shown else "predicted per class"] = ""
        summary.update({f"  {label}": n for label, n in counts.most_common(shown)})
    console_err.print(key_value_table("summary", summary))
    for row in result.warnings[:10]:
        console_err.print(f"[yellow]{safe(row.get('severity', 'warning'))}[/yellow] {safe(row.get('item', ''))}: "
                          f"{safe(row.get('message', row))}", highlight=False)
    for pred in result.errors[:10]:
        console_err.print(f"[red]error[/red] {safe(pred.id)}: {safe(pred.error)}", highlight=False)
    if len(result.errors) > 10:
        console_err.print(f"… and {len(result.errors) - 10} more errors (all are in the output file)")


def accuracy_summary(result: ClassificationResult, confusions: int = 3) -> dict[str, str]:
    """Top-1 accuracy and the worst confusions, when the images carry true labels (class sub-folders, a label
    column); nothing otherwise."""
    known = set(result.class_names)  # folder names that are not classes say nothing about accuracy
    table = result.table
    labelled = [(true, label) for true, label, error in zip(table.true_labels, table.labels, table.errors)
                if error is None and true is not None and true in known]
    if not labelled:
        return {}
    correct = sum(label == true for true, label in labelled)
    lines = {"top-1 accuracy": f"{100 * correct / len(labelled):.1f} % ({correct} of {len(labelled)} labelled)"}
    mistakes = Counter((true, label) for true, label in labelled if label != true)
    if mistakes:
        lines["worst confusions (true → predicted)"] = ", ".join(
            f"{true} → {pred} ({n})" for (true, pred), n in mistakes.most_common(confusions))
    return lines


def render_explanations(result: ClassificationResult, limit: int = _SHOWN_ROWS) -> None:
    """One readable block per image: the descriptors behind its label and runner-up, with their scores, and the
    differential captions that moved it."""
    for pred in result.ok[:limit]:
        if not pred.explanation:
            continue
        console.print(f"[bold]{safe(pred.id)}[/bold] → {safe(pred.label)}", highlight=False)
        for part, detail in pred.explanation.items():
            lines = _explanation_lines(detail)
            if len(lines) == 1:
                console.print(f"  {safe(part)}: {safe(lines[0])}", highlight=False)
                continue
            console.print(f"  {safe(part)}:", highlight=False)
            for line in lines[:12]:
                console.print(f"    {safe(line)}", highlight=False)


def _explanation_lines(detail: Any) -> list[str]:
    """An explanation part as short readable lines: 'class: descriptor 0.376 · …' for scored descriptors, 'moved
    a → b: attribute (margin m)' for a differential move, 'key: value' for anything else."""
    if isinstance(detail, dict):
        if "descriptors" in detail and isinstance(detail["descriptors"], list):
            scored = " · ".join(_scored(d) for d in detail["descriptors"])
            return [f"{detail.get('class', '')}: {scored}" if "class" in detail else scored]
        if "moved_from" in detail and "moved_to" in detail:
            return _move_lines(detail)
        if isinstance(detail.get("top"), dict) and "descriptors" in detail["top"]:  # the label against the runner-up
            roles = {"top": "label", "runner_up": "runner-up"}
            return [f"{_explanation_lines(entry)[0]}  ({roles.get(role, role.replace('_', ' '))})"
                    if isinstance(entry, dict) and "descriptors" in entry else f"{role}: {_value(entry)}"
                    for role, entry in detail.items()]
        lines: list[str] = []
        for key, value in detail.items():
            inner = _explanation_lines(value)
            if len(inner) == 1:
                lines.append(f"{key.replace('_', ' ')}: {inner[0]}")
            else:
                lines.append(f"{key.replace('_', ' ')}:")
                lines.extend("  " + line for line in inner)
        return lines
    if isinstance(detail, (list, tuple)):
        if all(not isinstance(x, (dict, list, tuple)) for x in detail):
            return [", ".join(_value(x) for x in detail)]
        return [line for item in detail for line in _explanation_lines(item)]
    return [_value(detail)]


def _move_lines(detail: dict) -> list[str]:
    """A differential move: which captions decided it, each with its score beside the other class's caption."""
    head = f"moved {detail['moved_from']} → {detail['moved_to']}"
    because = detail.get("because")
    items = because if isinstance(because, list) else [because] if because else []
    if not all(isinstance(item, dict) and "caption" in item for item in items):
        reason = _reason(because)
        return [head + (f" ({reason})" if reason else "")]
    lines = [head + ", by the differential captions:"] if items else [head]
    for item in items:
        lines += [f"  {item.get('attribute', '')} (margin {_value(item.get('margin'))}):",
                  f"    {detail['moved_to']}: {_value(item.get('score'))} \"{item['caption']}\"",
                  f"    {detail['moved_from']}: {_value(item.get('other_score'))} \"{item.get('other_caption', '')}\""]
    return lines


def _reason(because: Any) -> str:
    """What decided a differential move: 'attribute shape, margin 0.245' per entry, entries joined by '; '."""
    items = because if isinstance(because, list) else [because] if because else []
    return "; ".join(", ".join(f"{k} {_value(v)}" for k, v in item.items()) if isinstance(item, dict) else _value(item)
                     for item in items)


def _scored(item: Any) -> str:
    if isinstance(item, dict):
        text = item.get("descriptor") or item.get("text") or item.get("caption")
        score = item.get("similarity", item.get("score"))
        if text is not None and isinstance(score, (int, float)):
            return f"{text} {score:.3f}"
    return _value(item)


def _value(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
