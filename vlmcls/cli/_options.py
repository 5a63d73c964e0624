"""Typer option groups shared by the commands (model and decoding, datasets, KEY=VALUE flags), declared once."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import typer

HEIC_THUMBNAILS_OPTION = typer.Option(
    False, "--heic-thumbnails", rich_help_panel="Model",
    help="Decode a HEIC/HEIF photo's embedded thumbnail (an iPhone's 320x240) instead of every pixel when it covers "
         "the model's input: ~50x less decoding; features within cosine 0.999, cached apart.",
)


def option_group(target: str, params: Sequence[tuple[str, Any, Any]], build: Callable[..., Any]) -> Callable:
    """A decorator that gives a Typer command the flags ``params`` ((name, annotation, typer.Option) each) and hands
    the command one argument ``target`` = ``build(**their values)`` instead, so a group of flags is declared once
    for every command that takes it. (Typer has no parameter groups; it reads the signature, so the wrapper shows
    it the flags.)"""

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        kept = [p for p in signature.parameters.values() if p.name != target]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
                 for name, annotation, option in params]

        @functools.wraps(command)
        def wrapper(**kwargs):
            values = {name: kwargs.pop(name) for name, _, _ in params}
            return command(**kwargs, **{target: build(**values)})

        wrapper.__signature__ = signature.replace(parameters=[*kept, *added])
        wrapper.__annotations__ = {p.name: p.annotation for p in wrapper.__signature__.parameters.values()}
        return wrapper

    return decorate


_SOURCE_PARAMS = (
    ("image_column", Optional[str], typer.Option(None, "--image-column", help="Dataset column holding images.")),
    ("label_column", Optional[str], typer.Option(None, "--label-column", help="Dataset column holding labels.")),
    ("split", Optional[str], typer.Option(None, "--split", help="Dataset split (for a DatasetDict).")),
)
# The HF-dataset flags, handed to a command as ``source_options``: the ones given, ready for ``as_records``.
with_source_options = option_group(
    "source_options", _SOURCE_PARAMS, lambda **values: {k: v for k, v in values.items() if v}
)


def key_values(items: Sequence[str] | None, flag: str, valid: dict[str, Any]) -> dict[str, Any]:
    """``KEY=VALUE`` items of a repeatable flag as {key: value typed like ``valid[key]``}; an unknown key or a
    value of the wrong type is an error that names the flag and lists the keys."""
    from ..errors import ConfigError
    from ..methods.registry import did_you_mean

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or key not in valid:
            hint = did_you_mean(key, valid) if sep else ""
            raise ConfigError(f"{flag} '{item}' is not KEY=VALUE with a known KEY.{hint} "
                              f"Valid: {', '.join(valid)}.")
        kind = valid[key]
        try:
            if kind is bool:
                if text.strip().lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                    raise ValueError(text)
                out[key] = text.strip().lower() in ("1", "true", "yes", "on")
            elif kind is None or text.strip().lower() == "none":
                out[key] = None if text.strip().lower() in ("", "none") else text
            else:
                out[key] = kind(text)
        except ValueError:
            raise ConfigError(f"{flag} {key} is '{text}'; it must be {getattr(kind, '__name__', 'text')}.") from None
    return out


# -- the model side: one group for every command that loads a model ------------------------------------------


@dataclass(frozen=True)
class ModelOptions:
    """What loads the model and decodes the images (the flags of every command that encodes images)."""

    model: str
    device: str
    precision: str
    batch_size: int
    workers: str | None
    cache_dir: str | None
    no_cache: bool
    heic_thumbnails: bool

    def decoding(self) -> tuple[int | None, str]:
        """``--workers`` as (count, type): ``8``, ``process``, ``process:4``, ``thread:2``."""
        from ..errors import ConfigError

        text = (self.workers or "").strip().lower()
        kind, count = "auto", text
        if text and not text[0].isdigit():
            kind, _, count = text.partition(":")
        try:
            number = int(count) if count else None
        except ValueError:
            number = -1
        if (number is not None and number < 0) or kind not in ("thread", "process", "auto"):
            raise ConfigError(f"--workers '{self.workers}' is not N, thread[:N] or process[:N] (e.g. 8, process, "
                              "process:4).")
        return number, kind or "auto"

    def classifier(self) -> Any:
        from ..api import Classifier

        count, kind = self.decoding()
        return Classifier(self.model, device=self.device, precision=self.precision, cache_dir=self.cache_dir,
                          use_cache=not self.no_cache, batch_size=self.batch_size, num_workers=count,
                          worker_type=kind, heic_thumbnails=self.heic_thumbnails)


_MODEL_PARAMS = (
    ("model", str, typer.Option("ViT-B-32:openai", "--model", "-m", help="Model id: ARCH[:TAG], hf-hub:ORG/REPO, local-dir:DIR, hf:ORG/REPO or hf:DIR.", rich_help_panel="Model")),
    ("device", str, typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel="Model")),
    ("precision", str, typer.Option("fp32", "--precision", help="fp32, fp16 or bf16 (fp32 on CPU); int8: CPU only, image tower quantised (needs vlmcls[int8]).", rich_help_panel="Model")),
    ("batch_size", int, typer.Option(32, "--batch-size", "-b", min=1, help="Images per forward pass.", rich_help_panel="Model")),
    ("workers", Optional[str], typer.Option(None, "--workers", help="Decoding workers: N threads (default: up to 8), or process[:N] (forked processes, default one per core).", rich_help_panel="Model")),
    ("cache_dir", Optional[str], typer.Option(None, "--cache-dir", help="Cache folder (default: $VLMCLS_CACHE or cache/).", rich_help_panel="Model")),
    ("no_cache", bool, typer.Option(False, "--no-cache", help="Do not read or write the embedding cache.", rich_help_panel="Model")),
    ("heic_thumbnails", bool, HEIC_THUMBNAILS_OPTION),
)
# Hands a command one ``model_options: ModelOptions`` (model, device, precision, batch size, decoding, cache).
with_model_options = option_group("model_options", _MODEL_PARAMS, lambda **values: ModelOptions(**values))
