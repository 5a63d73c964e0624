"""`vlmcls export RESULTS --to FORMAT`: a run's labels (corrections applied) for Label Studio, FiftyOne, CSV, Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._render import console, handle_errors, safe

__all__ = ["register", "export_command"]

_HOW_TO_IMPORT = {
    "labelstudio": "Label Studio: new project → Labeling Setup → Code: paste label_config.xml; Import: tasks.json "
                   "(serve the images with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and "
                   "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT set to --files-root, default /).",
    "fiftyone": "FiftyOne: fo.Dataset.from_dir(dataset_dir=DIR, dataset_type=fo.types."
                "FiftyOneImageClassificationDataset, data_path='data.json')",
}


@handle_errors
def export_command(
    results: Path = typer.Argument(..., help="The .jsonl/.json/.parquet `vlmcls classify -o` wrote."),
    to: str = typer.Option(..., "--to", help="labelstudio, fiftyone (folders), csv or parquet (one file)."),
    output: Path = typer.Option(..., "--output", "-o", help="The folder (labelstudio, fiftyone) or file (csv, "
                                "parquet) to write."),
    files_root: Optional[str] = typer.Option(None, "--files-root", help="labelstudio: the folder Label Studio "
                                             "serves local files from (image URLs are relative to it)."),
) -> None:
    """Export a run's predictions with the review's corrections applied."""
    from ..review.exports import export_results
    from ..review.run_results import load_results

    run = load_results(results)
    written = export_results(run, to, output, files_root)
    console.print(f"{safe(to)}: {len(run.rows)} rows ({len(run.corrections)} corrected) → {safe(written)}",
                  highlight=False)
    if to in _HOW_TO_IMPORT:
        console.print(_HOW_TO_IMPORT[to], highlight=False, markup=False)


def register(root: typer.Typer) -> None:
    root.command("export", help="Export a run's labels for Label Studio, FiftyOne, CSV or Parquet.")(export_command)
