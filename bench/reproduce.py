"""Reproduce published zero-shot numbers with vlmcls: one recipe per seed method (needs network and a GPU).

    python bench/reproduce.py --dry-run        # offline: every command parses, every dataset id is well formed
    python bench/reproduce.py [NAME ...]       # runs the recipes; prints only what the runs measured

Each recipe is the exact vlmcls command, the dataset it reads, the published figure it should reproduce, the
tolerance and where the figure comes from. A published figure that was not checked against its paper here is
left as None ("not filled"): the runnable part never prints a number it did not measure, and this file never
states one it could not source. Nothing here has been run in this repository's sandbox (no network, no GPU).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# CLIP_benchmark's ImageNet-1k shards on the hub, read as `wds:` reads them (its classnames.txt gives the labels);
# the shard list comes from the dataset's own files, so no shard range is guessed here.
IMAGENET = "hf-dataset:clip-benchmark/wds_imagenet1k"
SPLIT = "--dataset split=test"


@dataclass(frozen=True)
class Recipe:
    name: str
    args: str  # the vlmcls arguments, after `vlmcls`; {out} is the CLIP_benchmark JSON this run writes
    dataset: str
    expected_acc1: float | None  # the published top-1 (fraction); None: not filled, see `source`
    tolerance: float  # absolute, on acc1
    source: str


RECIPES = [
    Recipe("clip-b32-imagenet-templates",
           f"eval {IMAGENET} {SPLIT} --model ViT-B-32:openai --methods templates --templates imagenet80 "
           "--clip-benchmark-json {out}",
           IMAGENET, 0.6332, 0.005,
           "CLIP_benchmark's results table, ViT-B-32 openai, imagenet1k acc1 (80 templates)"),
    Recipe("cbd-b32-imagenet",
           f"eval {IMAGENET} {SPLIT} --model ViT-B-32:openai --methods cbd --clip-benchmark-json {{out}}",
           IMAGENET, None, 0.01,
           "Menon & Vondrick 2023 (Classification by Description), Table 1, ViT-B/32 ImageNet: not filled here"),
    Recipe("fudd-b32-imagenet",
           f"eval {IMAGENET} {SPLIT} --model ViT-B-32:openai --methods cbd+fudd --clip-benchmark-json {{out}}",
           IMAGENET, None, 0.01,
           "Esfandiarpoor & Bach 2024 (FuDD), ImageNet with ViT-B/32: not filled here"),
    Recipe("waffle-b32-imagenet",
           f"eval {IMAGENET} {SPLIT} --model ViT-B-32:openai --methods waffle --clip-benchmark-json {{out}}",
           IMAGENET, None, 0.01,
           "Roth et al. 2023 (WaffleCLIP), ImageNet with ViT-B/32: not filled here"),
    Recipe("tip-rn50-imagenet-16shot",
           f"eval {IMAGENET} {SPLIT} --model RN50:openai --methods templates+tip --templates imagenet80 "
           "--opt tip.support=IMAGENET_16SHOT_DIR --clip-benchmark-json {out}",
           IMAGENET, None, 0.01,
           "Zhang et al. 2022 (Tip-Adapter), 16-shot ImageNet, RN50; IMAGENET_16SHOT_DIR: 16 train images per "
           "class in class sub-folders, drawn by you: not filled here"),
]

_DATASET_ID = re.compile(r"^hf-dataset:[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def check(recipe: Recipe) -> list[str]:
    """What is wrong with a recipe, found offline: its command must parse and its dataset id be well formed."""
    import typer.main

    from vlmcls.cli import app

    problems = []
    if not _DATASET_ID.match(recipe.dataset):
        problems.append(f"dataset id '{recipe.dataset}' is not hf-dataset:ORG/NAME")
    argv = shlex.split(recipe.args.replace("{out}", "out.json"))
    group = typer.main.get_command(app)
    try:
        with group.make_context("vlmcls", [argv[0], "--help"], resilient_parsing=True) as context:
            command = group.get_command(context, argv[0])
            command.make_context(argv[0], argv[1:], parent=context)
    except Exception as exc:  # click's UsageError and its kin
        problems.append(f"command does not parse: {exc}")
    return problems


def run(recipe: Recipe) -> dict:
    """Run one recipe; the measured acc1 beside the published one (None when the run gave none)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "cb.json"
        argv = [sys.executable, "-m", "vlmcls", *shlex.split(recipe.args.replace("{out}", str(out)))]
        proc = subprocess.run(argv, cwd=ROOT)
        measured = json.loads(out.read_text())["metrics"]["acc1"] if out.is_file() else None
    verdict = None
    if measured is not None and recipe.expected_acc1 is not None:
        verdict = abs(measured - recipe.expected_acc1) <= recipe.tolerance
    return {"recipe": recipe.name, "exit_code": proc.returncode, "measured_acc1": measured,
            "published_acc1": recipe.expected_acc1, "within_tolerance": verdict}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="recipes to run (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="check every recipe offline; run nothing")
    args = parser.parse_args(argv)
    chosen = [r for r in RECIPES if not args.names or r.name in args.names]
    if args.dry_run:
        failed = 0
        for recipe in chosen:
            problems = check(recipe)
            failed += bool(problems)
            print(f"{'ok' if not problems else 'FAIL':4} {recipe.name}: vlmcls {recipe.args}")
            for problem in problems:
                print(f"     {problem}")
        return 1 if failed else 0
    for recipe in chosen:
        print(json.dumps(run(recipe)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
