"""The one model-id grammar and its parser.

    ViT-B-32                      open_clip built-in architecture, random weights (for tests and benchmarks)
    ViT-B-32:openai               open_clip architecture + pretrained tag
    ViT-B-32:/path/ckpt.pt        open_clip architecture + a checkpoint file
    hf-hub:org/repo               open_clip model from the HF hub (open_clip_config.json + weights)
    local-dir:/path/folder        open_clip model in a local folder (open_clip_config.json + weights)
    hf:org/repo                   HF transformers CLIP or SigLIP from the hub
    hf:/path/folder               HF transformers CLIP or SigLIP saved with save_pretrained
    org/repo                      shorthand for hf:org/repo (the usual way HF ids are written)
    /path/folder                  a local folder: open_clip if it holds open_clip_config.json, else transformers
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import ConfigError

__all__ = ["ModelSpec", "parse_model_id"]

Backend = Literal["open_clip", "hf"]
Source = Literal["builtin", "hf-hub", "local-dir", "hub", "folder"]

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model id: which backend loads what from where."""

    backend: Backend  # "open_clip" or "hf" (transformers)
    source: Source  # where weights come from; decides how "not found" is explained
    name: str  # architecture name, hub repo id, or folder path
    pretrained: str | None = None  # open_clip tag or checkpoint path; None = random init (builtin only)

    @property
    def canonical(self) -> str:
        """The id written back in its canonical form (used in cache keys and output)."""
        if self.backend == "hf":
            return f"hf:{self.name}"
        if self.source == "builtin":
            return self.name if self.pretrained is None else f"{self.name}:{self.pretrained}"
        return f"{self.source}:{self.name}"


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or os.sep in text and Path(text).exists()


def _folder_spec(folder: str, raw: str) -> ModelSpec:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"model folder '{folder}' (from model id '{raw}') does not exist. Give an existing folder, "
            f"an open_clip architecture such as 'ViT-B-32:openai', or a hub id such as 'hf:openai/clip-vit-base-patch32'."
        )
    if (path / "open_clip_config.json").is_file():
        return ModelSpec("open_clip", "local-dir", str(path))
    if (path / "config.json").is_file():
        return ModelSpec("hf", "folder", str(path))
    raise ConfigError(
        f"model folder '{folder}' holds neither open_clip_config.json (open_clip) nor config.json "
        f"(transformers): cannot tell which backend loads it."
    )


def parse_model_id(model_id: str) -> ModelSpec:
    """Parse a model id (grammar in the module docstring) into a :class:`ModelSpec`."""
    raw = model_id
    model_id = model_id.strip()
    if not model_id:
        raise ConfigError("empty model id. Try 'ViT-B-32:openai' or 'hf:openai/clip-vit-base-patch32'.")

    if model_id.startswith("local-dir:"):
        folder = model_id[len("local-dir:") :]
        if not folder:
            raise ConfigError(f"model id '{raw}' names no folder after 'local-dir:'.")
        path = Path(folder).expanduser()
        if not (path / "open_clip_config.json").is_file():
            raise ConfigError(
                f"'{raw}': no open_clip_config.json in '{path}'. A local-dir: folder must hold "
                f"open_clip_config.json and the weights (open_clip_model.safetensors); for a transformers folder use 'hf:{folder}'."
            )
        return ModelSpec("open_clip", "local-dir", str(path))

    if model_id.startswith("hf-hub:"):
        repo = model_id[len("hf-hub:") :]
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise ConfigError(f"'{raw}': expected 'hf-hub:org/repo'.")
        return ModelSpec("open_clip", "hf-hub", repo)

    if model_id.startswith(("hf:", "transformers:")):
        rest = model_id.split(":", 1)[1]
        if not rest:
            raise ConfigError(f"model id '{raw}' names nothing after the prefix.")
        if _looks_like_path(rest) or Path(rest).expanduser().is_dir():
            spec = _folder_spec(rest, raw)
            if spec.backend != "hf":
                raise ConfigError(f"'{raw}': the folder holds an open_clip model; use 'local-dir:{rest}'.")
            return spec
        if rest.count("/") != 1 or not all(rest.split("/")):
            raise ConfigError(f"'{raw}': expected 'hf:org/repo' or 'hf:/path/to/folder'.")
        return ModelSpec("hf", "hub", rest)

    if _looks_like_path(model_id) or Path(model_id).expanduser().is_dir():
        return _folder_spec(model_id, raw)

    arch, sep, tag = model_id.partition(":")
    if sep and not tag:
        raise ConfigError(f"model id '{raw}' ends with ':' but names no pretrained tag.")
    if _is_open_clip_arch(arch):
        if tag and (tag.endswith(_CHECKPOINT_SUFFIXES) or "/" in tag):
            if not Path(tag).expanduser().is_file():
                raise ConfigError(f"checkpoint file '{tag}' (from model id '{raw}') does not exist.")
        if arch not in _open_clip_archs():
            arch = arch.replace("/", "-")
        if tag and not (tag.endswith(_CHECKPOINT_SUFFIXES) or "/" in tag):
            _check_pretrained_tag(arch, tag, raw)
        return ModelSpec("open_clip", "builtin", arch, tag or None)

    if not sep and model_id.count("/") == 1 and all(model_id.split("/")):
        return ModelSpec("hf", "hub", model_id)

    raise ConfigError(f"unknown model id '{raw}'. {_suggest(arch)}Valid forms:\n{__doc__.split(chr(10), 2)[2]}")


def _open_clip_archs() -> list[str]:
    import open_clip

    return list(open_clip.list_models())


def _is_open_clip_arch(name: str) -> bool:
    return name in _open_clip_archs() or name.replace("/", "-") in _open_clip_archs()


def _check_pretrained_tag(arch: str, tag: str, raw: str) -> None:
    """A tag open_clip does not know for this architecture is a typo, not a download to attempt."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag in tags or tag.lower() in tags:
        return
    listed = ", ".join(tags) if tags else "none (this architecture has no pretrained weights in open_clip)"
    raise ConfigError(
        f"unknown pretrained tag '{tag}' for '{arch}' (model id '{raw}'). Tags for {arch}: {listed}. "
        f"A checkpoint file works too: '{arch}:/path/to/weights.pt'."
    )


def _suggest(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, _open_clip_archs(), n=3, cutoff=0.6)
    return f"Did you mean: {', '.join(repr(c) for c in close)}? " if close else ""
