"""Prompt templates for zero-shot classification: named sets and user files."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

__all__ = ["TEMPLATE_SETS", "load_templates", "apply_templates", "wordify"]

# The 80 prompts CLIP used for ImageNet (Radford et al. 2021).
IMAGENET_80 = [
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
]

# The 7-prompt subset the CLIP authors found to work about as well as all 80.
SMALL_7 = [
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
]

TEMPLATE_SETS: dict[str, list[str]] = {
    "name": ["{}"],
    "photo": ["a photo of a {}."],
    "small": SMALL_7,
    "imagenet80": IMAGENET_80,
}


def load_templates(name_or_file: str | None) -> list[str]:
    """A named set (name, photo, small, imagenet80) or a file with one template per line containing '{}'."""
    if name_or_file is None:
        return TEMPLATE_SETS["photo"]
    if name_or_file in TEMPLATE_SETS:
        return list(TEMPLATE_SETS[name_or_file])
    path = Path(name_or_file).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"templates '{name_or_file}' is neither a named set ({', '.join(TEMPLATE_SETS)}) nor a file."
        )
    from .sources.textfiles import read_text_file  # size-limited, BOM/UTF-16 aware: a ConfigError, never a crash

    lines = [ln.strip() for ln in read_text_file(path, "template file").splitlines()]
    templates = [ln for ln in lines if ln and not ln.startswith("#")]
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates:
        raise ConfigError(f"template file '{path}' holds no templates (one per line, each with '{{}}').")
    if bad:
        raise ConfigError(f"template file '{path}': each line needs exactly one '{{}}' for the class name; bad: '{bad[0]}'.")
    return templates


def wordify(class_name: str) -> str:
    """A class name as text for the model: ``_`` becomes a space (CbD's ``wordify``: ``Laysan_Albatross`` ->
    ``Laysan Albatross``). Only texts change; outputs keep the class name exactly as the user listed it."""
    return class_name.replace("_", " ")


def apply_templates(templates: list[str], class_name: str) -> list[str]:
    return [t.replace("{}", wordify(class_name)) for t in templates]
