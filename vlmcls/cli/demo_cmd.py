"""`vlmcls demo images DIR`: render the offline demo world (class sub-folders of procedurally drawn objects)."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import App
from ._render import console, handle_errors, safe

app = App(help="The offline demo world: invented classes, a small trained CLIP, images drawn on demand.",
          no_args_is_help=True)

DEMO_DATA = Path(__file__).resolve().parents[1] / "data"


@app.command("images")
@handle_errors
def images(
    out_dir: Path = typer.Argument(..., help="Folder to write <class>/<i>.png into."),
    per_class: int = typer.Option(20, "--per-class", "-n", min=1, help="Images per class."),
    seed: int = typer.Option(1234, "--seed", help="Seed: the same seed draws the same images."),
) -> None:
    """Draw labelled demo images (never the seeds the demo model was trained on)."""
    from ..demo.render import render_dataset
    from ..demo.world import DEMO_CLASSES

    written = render_dataset(out_dir, list(DEMO_CLASSES), per_class, seed)
    console.print(f"wrote {len(written)} images of {len(DEMO_CLASSES)} classes to {safe(out_dir)}")


@app.command("paths")
def paths() -> None:
    """Where the shipped demo model, classes, descriptors and images are."""
    for name, path in {
        "model": DEMO_DATA / "demo_model",
        "classes": DEMO_DATA / "demo" / "classes.txt",
        "descriptors": DEMO_DATA / "demo" / "descriptors.json",
        "images": DEMO_DATA / "demo" / "images",
    }.items():
        console.print(f"{name:12s} {safe(path)}", highlight=False)
