"""Typer option groups shared by the commands (model and decoding, datasets, KEY=VALUE flags), declared once."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

import typer


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


DATASET_KEYS = {"split": str, "image_column": str, "label_column": str}  # what `as_records` takes for a dataset
_SOURCE_PARAMS = (
    ("dataset", Optional[List[str]], typer.Option(
        None, "--dataset", help="KEY=VALUE for an HF dataset or shards (repeatable): split=NAME (a DatasetDict's "
        "split; a shard folder's sub-folder), image_column=NAME (the column holding images), label_column=NAME (the "
        "column holding labels).")),
)


def _source_options(dataset: list[str] | None) -> dict[str, str]:
    return {key: value for key, value in key_values(dataset, "--dataset", DATASET_KEYS).items() if value}


# The dataset flag, handed to a command as ``source_options``: the keys given, ready for ``as_records``.
with_source_options = option_group("source_options", _SOURCE_PARAMS, _source_options)


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


CACHE_OFF = "off"
CACHE_HELP = "Cache folder (default: $VLMCLS_CACHE or cache/); off: read and write no cache (embeddings, LLM answers)."
CACHE_OPTION = typer.Option(None, "--cache", metavar="DIR", help=CACHE_HELP)


def cache_folder(value: str | None, command: str | None = None) -> tuple[str | None, bool]:
    """``--cache`` as (folder or None for the default, whether to cache). ``command``: one that needs a cache
    (``cache info``), for which ``off`` is an error."""
    from ..errors import ConfigError

    if value is not None and value.strip().lower() == CACHE_OFF:
        if command is not None:
            raise ConfigError(f"`vlmcls {command}` works on a cache: give --cache DIR, not off.")
        return None, False
    return value, True


DECODE_KEYS = {"workers": str, "heic_thumbnails": bool}
DECODE_OPTION = typer.Option(
    None, "--decode", rich_help_panel="Model",
    help="KEY=VALUE for decoding images (repeatable): workers=N (threads; default up to 8), thread[:N] or "
         "process[:N] (forked processes, default one per core); heic_thumbnails=true (a HEIC/HEIF photo's embedded "
         "thumbnail, an iPhone's 320x240, instead of every pixel when it covers the model's input: ~50x less "
         "decoding, features within cosine 0.999, cached apart).")


@dataclass(frozen=True)
class ModelOptions:
    """What loads the model and decodes the images (the flags of every command that encodes images)."""

    model: str
    device: str
    precision: str
    batch_size: int
    workers: str | None = None  # --decode workers=…
    cache_dir: str | None = None  # --cache DIR
    no_cache: bool = False  # --cache off
    heic_thumbnails: bool = False  # --decode heic_thumbnails=true

    @classmethod
    def from_flags(cls, model: str, device: str, precision: str, batch_size: int, decode: list[str] | None,
                   cache: str | None) -> "ModelOptions":
        given = key_values(decode, "--decode", DECODE_KEYS)
        cache_dir, enabled = cache_folder(cache)
        return cls(model, device, precision, batch_size, workers=given.get("workers"), cache_dir=cache_dir,
                   no_cache=not enabled, heic_thumbnails=given.get("heic_thumbnails", False))

    def decoding(self) -> tuple[int | None, str]:
        """``--decode workers=…`` as (count, type): ``8``, ``process``, ``process:4``, ``thread:2``."""
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
            raise ConfigError(f"--decode workers='{self.workers}' is not N, thread[:N] or process[:N] (e.g. "
                              "workers=8, workers=process, workers=process:4).")
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
    ("decode", Optional[List[str]], DECODE_OPTION),
    ("cache", Optional[str], typer.Option(None, "--cache", metavar="DIR", help=CACHE_HELP, rich_help_panel="Model")),
)
# Hands a command one ``model_options: ModelOptions`` (model, device, precision, batch size, decoding, cache).
with_model_options = option_group("model_options", _MODEL_PARAMS, ModelOptions.from_flags)
