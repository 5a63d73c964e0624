"""Defaults a benchmark source brings along: CLIP_benchmark's class names and templates beside its shards, a hub
dataset's ClassLabel names."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ._render import console_err


def source_defaults(images: Any, source_options: dict, classes: str | None, method_options: dict | None,
                    quiet: bool = False) -> tuple[Any, list[str] | None]:
    """(the classes to use, the templates to use when --templates is not given) for ``images``.

    A ``wds:`` source in CLIP_benchmark's layout supplies both; an ``hf-dataset:`` source its label column's
    ClassLabel names. The run says where they came from.
    """
    templates_given = bool((method_options or {}).get("templates", {}).get("templates"))
    if isinstance(images, str) and images.startswith("hf-dataset:"):
        return _hub_dataset_defaults(images, source_options, classes, templates_given, quiet)
    if not (isinstance(images, str) and images.startswith("wds:")):
        if classes is None:
            raise ConfigError("no classes given. Pass --classes FILE or a comma-separated list.")
        return classes, None
    from ..sources.shards import CLASSNAMES_FILE, TEMPLATES_FILE, list_shards

    listing = list_shards(images, source_options.get("split"))
    templates = None
    if classes is None:
        if listing.classnames is None:
            raise ConfigError(f"no classes given and no {CLASSNAMES_FILE} beside the shards of '{images}'. "
                              "Pass --classes FILE or a comma-separated list.")
        classes = listing.classnames
        if not quiet:
            console_err.print(f"classes: {len(classes)} from {listing.layout_files[CLASSNAMES_FILE]}",
                              highlight=False)
    if not templates_given and listing.templates is not None:
        templates = listing.templates
        if not quiet:
            console_err.print(f"templates: {len(templates)} from {listing.layout_files[TEMPLATES_FILE]} "
                              "(give --templates to use others)", highlight=False)
    return classes, templates


def _hub_dataset_defaults(images: str, source_options: dict, classes: str | None, templates_given: bool,
                          quiet: bool) -> tuple[Any, list[str] | None]:
    """An hf-dataset: source's ClassLabel names (or, for webdataset shards, their classnames.txt and templates)."""
    from ..sources.hub_datasets import open_hub_dataset

    dataset = open_hub_dataset(images, source_options.get("split"), source_options.get("image_column"),
                               source_options.get("label_column"))
    templates = dataset.templates if not templates_given else None
    if classes is None:
        if not dataset.class_names:
            raise ConfigError(f"no classes given, and '{images}' names none (no ClassLabel column, no "
                              "classnames.txt). Pass --classes FILE or a comma-separated list.")
        classes = dataset.class_names
        if not quiet:
            console_err.print(f"classes: {len(classes)} from {dataset.classes_from} of '{images}'", highlight=False)
    if templates is not None and not quiet:
        console_err.print(f"templates: {len(templates)} from the shards' templates file (give --templates to use "
                          "others)", highlight=False)
    return classes, templates
