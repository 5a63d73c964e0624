"""`vlmcls audit DATA --classes … --descriptors F`: which descriptors help, which are neutral, which hurt."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import ConfigError
from ._benchmark import source_defaults
from ._options import ModelOptions, with_model_options, with_source_options
from ._settings import with_opt
from ._render import EXIT_INPUT_ERRORS, console, console_err, handle_errors, key_value_table, progress_bar
from .describe_cmd import DOMAIN_HINT_OPTION, LLMSettings, render_error_rows, with_llm_options
from .prompts_cmd import PROMPTS_DIR_OPTION

__all__ = ["register", "audit_command", "render_audit"]

_VERDICT_COLOUR = {"helps": "green", "neutral": "yellow", "hurts": "red"}


@handle_errors
@with_llm_options
@with_source_options
@with_model_options
@with_opt
def audit_command(
    data: str = typer.Argument(..., help="Labelled images: a folder with one sub-folder per class, or an HF dataset (save_to_disk folder, .parquet, imagefolder:DIR), wds:SHARDS (labels from their .cls members) or hf-dataset:ORG/NAME|DIR."),
    classes: Optional[str] = typer.Option(None, "--classes", "-c", help="A file with one class per line, or a comma-separated list; matched to the labels by name. Default for wds: shards in CLIP_benchmark's layout: their classnames.txt; for hf-dataset: the ClassLabel names."),
    descriptors: Optional[Path] = typer.Option(None, "--descriptors", help="The CbD descriptor JSON to audit; without it the LLM writes the descriptors (--llm model=…, base_url=…)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Save every descriptor's audit as .json: {class: [{descriptor, delta_recall, delta_top1, separation, verdict}, …]}, worst first."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the audit as one self-contained HTML page, in the eval report's style."),
    write_pruned: Optional[Path] = typer.Option(None, "--write-pruned", help="Write the descriptors without the 'hurts' ones here (.json, the format --descriptors reads)."),
    prune_neutral: bool = typer.Option(False, "--prune-neutral", help="With --write-pruned: drop the 'neutral' descriptors too."),
    holdout: Optional[float] = typer.Option(None, "--holdout", help="Keep this share of each class's images out of the audit (e.g. 0.5) and report the accuracy before and after pruning on them."),
    seed: int = typer.Option(0, "--seed", help="Seed of the --holdout split."),
    show: int = typer.Option(15, "--show", min=0, help="Rows of the terminal table (the worst descriptors)."),
    domain_hint: Optional[str] = DOMAIN_HINT_OPTION,
    prompts: Optional[Path] = PROMPTS_DIR_OPTION,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no tables."),
    llm_settings: LLMSettings = None,  # from --llm KEY=VALUE (with_llm_options)
    source_options: dict = None,  # from --dataset KEY=VALUE (with_source_options)
    model_options: ModelOptions = None,  # from the model flags (with_model_options)
    method_options: dict = None,  # from --opt METHOD.KEY=VALUE (with_opt): the describer's options
) -> None:
    """Score every descriptor by what leaving it out does to recall and top-1; exit code 1 when images failed."""
    from ..api import load_classes
    from ..report.audit import audit_descriptors
    from ..report.audit_page import write_audit_report
    from ..llm.descriptors import ErrorRow
    from ..methods import DEFAULT_DESCRIBER, METHODS, MethodOptions
    from ..output import check_output_path, write_json
    from ..report.page import check_report_path

    # Everything a user can get wrong is checked before the model loads or any image is encoded.
    classes, _ = source_defaults(data, source_options, classes, None, quiet)  # the audit keeps CbD's own texts
    class_names = load_classes(classes)
    options = MethodOptions(methods=method_options)
    for path, what in ((output, "output"), (write_pruned, "pruned descriptor file")):
        if path is not None:
            check_output_path(path, (".json",), what, "it is written as .json")
    report_path = check_report_path(report) if report is not None else None
    if descriptors is not None and not descriptors.is_file():
        raise ConfigError(f"descriptor file '{descriptors}' does not exist. Write one with `vlmcls describe`.")
    if holdout is not None and not 0.0 < holdout < 1.0:
        raise ConfigError(f"--holdout '{holdout}' must lie strictly between 0 and 1, e.g. 0.5.")
    if prune_neutral and write_pruned is None:
        raise ConfigError("--prune-neutral only changes the file --write-pruned writes; add --write-pruned FILE.")

    clf = model_options.classifier()
    llm_rows: list[dict] = []
    if descriptors is not None:
        source = str(descriptors)
    else:  # the client only connects for answers that are not cached
        with llm_settings.client(clf.store) as client:
            record = METHODS[DEFAULT_DESCRIBER]  # the method that writes descriptors with the LLM (CbD)
            source, rows, _usage = record.describe(class_names, options.config(DEFAULT_DESCRIBER), client,
                                                   str(prompts) if prompts else None, domain_hint)
            llm_rows = [r.to_dict() for r in rows]
    with progress_bar("encoding images", enabled=not quiet) as progress:
        result = audit_descriptors(clf, data, class_names, source, holdout=holdout, prune_neutral=prune_neutral,
                                   seed=seed, progress=progress, **source_options)
    if output is not None:
        write_json(output, result.to_dict(), indent=2)
    if write_pruned is not None:
        result.pruned.to_json(write_pruned)
    if report_path is not None:
        write_audit_report(result, report_path, data=str(data), model=model_options.model)
    if not quiet:
        render_audit(result, show)
        for what, where in {"audit": output, "pruned descriptors": write_pruned, "report": report_path}.items():
            if where is not None:
                console_err.print(f"{what}: {escape(str(where))}", highlight=False)
    render_error_rows([ErrorRow(**row) for row in llm_rows + result.warnings], "descriptors fell back")
    for row in result.image_errors[:10]:
        console_err.print(f"[red]error[/red] {escape(row['id'])}: {escape(row['error'])}", highlight=False)
    if result.image_errors:
        raise typer.Exit(EXIT_INPUT_ERRORS)


def render_audit(result, limit: int = 15) -> None:
    """The worst descriptors as a table, then the accuracy before and after pruning, and the warnings that apply."""
    rows = result.worst(limit)
    wide = console.width >= 100  # the rival's name fits beside the rest only on a wide terminal
    table = Table(title=f"descriptors, worst first ({len(rows)} of {sum(result.counts.values())})",
                  title_justify="left", box=None, pad_edge=False, header_style="bold underline",
                  caption_justify="left",
                  caption=_AUDIT_LEGEND)
    columns = ["class", "descriptor", "Δ exp.", "±", "verdict", "Δ top-1", "Δ rec.", "sep."] + (
        ["rival"] if wide else [])
    for col in columns:
        numeric = col.startswith(("Δ", "±", "sep"))
        table.add_column(col, justify="right" if numeric else "left", no_wrap=col != "descriptor",
                         overflow="fold", min_width=len("descriptor") if col == "descriptor" else None,
                         ratio=1 if col == "descriptor" else None)
    for v in rows:
        colour = _VERDICT_COLOUR[v.verdict]
        delta, margin = v.shown_expected()
        cells = [escape(v.class_name), escape(v.descriptor), delta, margin, f"[{colour}]{v.verdict}[/{colour}]",
                 _signed(v.delta_top1), _signed(v.delta_recall), "-" if v.separation is None else f"{v.separation:.2f}"]
        table.add_row(*cells, *([escape(v.rival or "-")] if wide else []))
    console.print(table)
    where = (f"the {result.report_images} held-out images" if result.holdout
             else f"the {result.report_images} audited images")
    without = f"without the {' and '.join(result.dropped)} ones"
    facts = {
        "images audited": result.audited_images,
        "verdicts": ", ".join(f"{verdict} {count}" for verdict, count in result.counts.items()),
        "before → after pruning, on": where,
        "top-1 %": f"{100 * result.accuracy_before:.2f} with all descriptors → {100 * result.accuracy_after:.2f} "
                   f"{without}",
    }
    if result.expected_before is not None:
        facts["expected accuracy %"] = f"{100 * result.expected_before:.2f} → {100 * result.expected_after:.2f}"
    console.print(key_value_table("audit", facts))
    if result.pruning_lowers_top1:
        console_err.print(
            f"[red]warning:[/red] pruning lowers top-1 on {where}: {100 * result.accuracy_before:.2f} → "
            f"{100 * result.accuracy_after:.2f} %. Keep the full descriptor file, or prune by hand.", highlight=False)
    if result.optimistic:
        console_err.print("[yellow]warning:[/yellow] the accuracy after pruning is measured on the images the pruning "
                          "was decided on, so it is optimistic; use --holdout 0.5 to prune on one half and report on "
                          "the other.", highlight=False)


_AUDIT_LEGEND = (
    "Δ: change in points when the descriptor is left out; + means leaving it out helps (the descriptor hurts), "
    "− means it helps. exp.: expected accuracy (mean probability of the true class); it decides the verdict: "
    "hurts when Δ exp. ≥ ±, helps when Δ exp. ≤ −±, else neutral; ± is 0.01 or two standard errors, if more. "
    "rec.: recall of the descriptor's class. sep.: separation from the rival class (0.5 separates nothing)."
)


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.2f}"


def register(root: typer.Typer) -> None:
    """Add `audit` to the root app as a plain command."""
    root.command("audit", help="Which descriptors help, which are neutral, which hurt: measured on labelled images.")(
        audit_command
    )
