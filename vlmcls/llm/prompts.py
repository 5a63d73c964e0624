"""Prompt files: load, validate and render the TOML prompts that steer the LLM.

A prompt file holds chat ``[[messages]]`` (role + content; few-shot user/assistant pairs allowed) and declares
its ``[placeholders.NAME]`` (a description, and for optional ones a ``default`` plus a ``format`` that wraps a
given value). Placeholders are written ``{name}`` with ``name`` a declared identifier; every other brace is
literal text, so JSON examples need no escaping. Loading checks that the placeholders used and declared agree;
rendering checks that every required value is given.

Where a prompt named ``NAME`` is looked up, first match wins:

1. an explicit file (``--prompt-file``), then ``DIR/NAME.toml`` for ``--prompts DIR`` or ``$VLMCLS_PROMPTS``;
2. ``prompts/NAME.toml`` of the checkout vlmcls runs from (the copy users edit);
3. the defaults shipped inside the package (``vlmcls/prompts/``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ..errors import ConfigError, PromptError

__all__ = [
    "PROMPTS_ENV_VAR",
    "Placeholder",
    "PromptTemplate",
    "PromptSource",
    "packaged_prompts_dir",
    "checkout_prompts_dir",
    "prompt_search_path",
    "find_prompt",
    "list_prompts",
    "load_prompt",
    "parse_prompt",
]

log = logging.getLogger(__name__)

PROMPTS_ENV_VAR = "VLMCLS_PROMPTS"
_ROLES = ("system", "user", "assistant")
# A placeholder is an identifier in single braces; "{{", JSON such as {"a": 1}, or "{ x }" stay literal text.
_PLACEHOLDER = re.compile(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)\}(?!\})")
_ALLOWED_TOP_KEYS = {"name", "description", "placeholders", "messages"}


@dataclass(frozen=True)
class Placeholder:
    """One declared placeholder; ``required`` unless the file gives a ``default``."""

    name: str
    description: str = ""
    default: str | None = None  # None: a value must be given at render time
    format: str = "{value}"  # how a given value is written into the text, e.g. " ({value})"

    @property
    def required(self) -> bool:
        return self.default is None

    def text_for(self, value: object | None) -> str:
        if value is None or value == "":
            if self.default is None:  # callers check required values first; this is a safety net
                raise PromptError(f"placeholder '{self.name}' needs a value")
            return self.default
        return self.format.replace("{value}", str(value))


@dataclass(frozen=True)
class PromptTemplate:
    """A validated prompt file: messages with ``{placeholders}``, ready to render."""

    name: str
    messages: tuple[tuple[str, str], ...]  # (role, content) in conversation order
    placeholders: Mapping[str, Placeholder]
    description: str = ""
    path: Path | None = None
    digest: str = ""  # sha256 of the file bytes, shown by `vlmcls prompts show`
    text: str = field(default="", repr=False)  # the file as written

    @property
    def required(self) -> list[str]:
        return [p.name for p in self.placeholders.values() if p.required]

    @property
    def optional(self) -> list[str]:
        return [p.name for p in self.placeholders.values() if not p.required]

    def check_supports(self, provided: set[str] | frozenset[str], needed: set[str] | frozenset[str]) -> None:
        """Raise PromptError unless this prompt declares ``needed`` and asks for nothing beyond ``provided``.

        Callers use it up front (e.g. the descriptor step provides ``class_name`` and ``domain_hint``), so a
        prompt file written for another step fails before any LLM call rather than halfway through a run.
        """
        missing = sorted(set(needed) - set(self.placeholders))
        unfillable = sorted(set(self.required) - set(provided))
        if missing or unfillable:
            problems = []
            if missing:
                problems.append(f"does not use {_quoted(missing)}")
            if unfillable:
                problems.append(f"requires {_quoted(unfillable)}, which this step cannot fill")
            raise PromptError(
                f"prompt '{self.name}' ({self.path or 'in memory'}) {' and '.join(problems)}. "
                f"This step fills {_quoted(sorted(provided))}; the prompt declares "
                f"{_quoted(list(self.placeholders))}. Fix the file's [placeholders] and messages."
            )

    def render(self, **values: object) -> list[dict[str, str]]:
        """Fill the placeholders and return OpenAI-style messages ``[{"role", "content"}, ...]``.

        A value of None (or "") for an optional placeholder means "not given"; a value for a name the file
        does not declare is an error, so a typo never silently drops text.
        """
        unknown = sorted(k for k, v in values.items() if k not in self.placeholders and v not in (None, ""))
        missing = sorted(n for n in self.required if values.get(n) in (None, ""))
        if unknown or missing:
            problems = []
            if missing:
                problems.append(f"no value for {_quoted(missing)}")
            if unknown:
                problems.append(f"values for undeclared {_quoted(unknown)}")
            raise PromptError(
                f"cannot render prompt '{self.name}': {'; '.join(problems)}. "
                f"Valid placeholders: {_quoted(list(self.placeholders))} (required: {_quoted(self.required)})."
            )
        filled = {name: ph.text_for(values.get(name)) for name, ph in self.placeholders.items()}
        return [
            {"role": role, "content": _PLACEHOLDER.sub(lambda m: filled[m.group(1)], content)}
            for role, content in self.messages
        ]


@dataclass(frozen=True)
class PromptSource:
    """Where a prompt file was found: ``origin`` is 'file', 'override', 'checkout' or 'package'."""

    name: str
    path: Path
    origin: str


def _quoted(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names) if names else "(none)"


def packaged_prompts_dir() -> Path:
    """The default prompt files shipped inside the package."""
    # The wheel installs package data as plain files next to the modules (no zip import), so a path is enough.
    return Path(__file__).resolve().parents[1] / "prompts"  # vlmcls/prompts


def checkout_prompts_dir() -> Path | None:
    """``prompts/`` of the source checkout vlmcls is imported from, if it runs from one."""
    root = Path(__file__).resolve().parents[2]  # the checkout: vlmcls/llm/prompts.py -> .
    candidate = root / "prompts"
    if (root / "pyproject.toml").is_file() and candidate.is_dir():
        return candidate
    return None


def prompt_search_path(prompts_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The folders searched for prompt files, first match wins, as ``(origin, folder)``."""
    override = prompts_dir if prompts_dir is not None else os.environ.get(PROMPTS_ENV_VAR) or None
    folders: list[tuple[str, Path]] = []
    if override is not None:
        folder = Path(override).expanduser()
        if not folder.is_dir():
            raise PromptError(
                f"prompt folder '{folder}' does not exist or is not a folder. "
                f"Pass an existing folder to --prompts (or ${PROMPTS_ENV_VAR}), or leave it unset for the defaults."
            )
        folders.append(("override", folder))
    checkout = checkout_prompts_dir()
    if checkout is not None:
        folders.append(("checkout", checkout))
    folders.append(("package", packaged_prompts_dir()))
    return folders


def list_prompts(prompts_dir: str | os.PathLike | None = None) -> list[PromptSource]:
    """Every prompt name that can be loaded, with the file that wins for it."""
    winners: dict[str, PromptSource] = {}
    for origin, folder in prompt_search_path(prompts_dir):
        for path in sorted(folder.glob("*.toml")):
            winners.setdefault(path.stem, PromptSource(path.stem, path, origin))
    return sorted(winners.values(), key=lambda s: s.name)


def find_prompt(name: str, prompts_dir: str | os.PathLike | None = None) -> PromptSource:
    """The file that a prompt ``name`` resolves to (see the module docstring for the order)."""
    folders = prompt_search_path(prompts_dir)
    for origin, folder in folders:
        path = folder / f"{name}.toml"
        if path.is_file():
            if origin != "override" and folders[0][0] == "override":
                log.info("prompt '%s' is not in '%s'; using the %s default %s", name, folders[0][1], origin, path)
            return PromptSource(name, path, origin)
    known = sorted({s.name for s in list_prompts(prompts_dir)})
    raise PromptError(
        f"no prompt named '{name}'. Available: {_quoted(known)}. "
        f"Searched: {', '.join(str(f) for _, f in folders)}."
    )


def load_prompt(
    name: str, prompts_dir: str | os.PathLike | None = None, prompt_file: str | os.PathLike | None = None
) -> PromptTemplate:
    """Load and validate a prompt by name, or the single file ``prompt_file`` when given."""
    if prompt_file is not None:
        path = Path(prompt_file).expanduser()
        if not path.is_file():
            raise PromptError(f"prompt file '{path}' does not exist. Pass the path of a .toml prompt file.")
    else:
        path = find_prompt(name, prompts_dir).path
    from ..sources.textfiles import decode_text, read_file_bytes

    try:  # size-limited, BOM/UTF-16 aware: a PromptError naming the file, never a crash
        raw = read_file_bytes(path, "prompt file")
        text = decode_text(raw, "prompt file", path)
    except PromptError:
        raise
    except ConfigError as exc:
        raise PromptError(str(exc)) from None
    template = parse_prompt(text, source=str(path), default_name=name)
    log.debug("loaded prompt '%s' from %s (sha256 %s)", template.name, path, template.digest[:12])
    return PromptTemplate(
        name=template.name,
        messages=template.messages,
        placeholders=template.placeholders,
        description=template.description,
        path=path,
        digest=hashlib.sha256(raw).hexdigest(),
        text=text,
    )


def parse_prompt(text: str, source: str = "<string>", default_name: str = "prompt") -> PromptTemplate:
    """Parse and validate the TOML text of a prompt file."""
    from ..sources.textfiles import parse_toml

    data = parse_toml(text, "prompt file", source, PromptError)  # too deep or invalid: a PromptError with the place

    unexpected = sorted(set(data) - _ALLOWED_TOP_KEYS)
    if unexpected:
        raise PromptError(
            f"prompt file '{source}' has unknown top-level keys {_quoted(unexpected)}; "
            f"valid keys: {_quoted(sorted(_ALLOWED_TOP_KEYS))}."
        )
    name = data.get("name", default_name)
    description = data.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise PromptError(f"prompt file '{source}': 'name' and 'description' must be strings.")

    placeholders = _parse_placeholders(data.get("placeholders", {}), source)
    messages = _parse_messages(data.get("messages"), source)

    used: list[str] = []
    for _, content in messages:
        for match in _PLACEHOLDER.finditer(content):
            if match.group(1) not in used:
                used.append(match.group(1))
    unknown = [n for n in used if n not in placeholders]
    unused = [n for n in placeholders if n not in used]
    if unknown or unused:
        problems = []
        if unknown:
            problems.append(f"uses undeclared placeholders {_quoted(unknown)}")
        if unused:
            problems.append(f"declares placeholders it never uses {_quoted(unused)}")
        raise PromptError(
            f"prompt file '{source}' {' and '.join(problems)}. Declared: {_quoted(list(placeholders))}. "
            "Declare each {name} under [placeholders.NAME], or remove it from the messages."
        )
    return PromptTemplate(
        name=name,
        messages=tuple(messages),
        placeholders=placeholders,
        description=description,
        digest=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        text=text,
    )


def _parse_placeholders(table: object, source: str) -> dict[str, Placeholder]:
    if not isinstance(table, dict):
        raise PromptError(f"prompt file '{source}': [placeholders] must be a table of [placeholders.NAME] tables.")
    result: dict[str, Placeholder] = {}
    for name, spec in table.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise PromptError(f"prompt file '{source}': placeholder name '{name}' is not an identifier.")
        if not isinstance(spec, dict):
            raise PromptError(
                f"prompt file '{source}': placeholder '{name}' must be a table, e.g. "
                f'[placeholders.{name}] with description = "..."'
            )
        bad = sorted(set(spec) - {"description", "default", "format"})
        if bad:
            raise PromptError(
                f"prompt file '{source}': placeholder '{name}' has unknown keys {_quoted(bad)}; "
                "valid: 'description', 'default', 'format'."
            )
        fmt = spec.get("format", "{value}")
        default = spec.get("default")
        if not all(isinstance(v, str) for v in (spec.get("description", ""), fmt)) or (
            default is not None and not isinstance(default, str)
        ):
            raise PromptError(f"prompt file '{source}': placeholder '{name}' fields must be strings.")
        if "{value}" not in fmt:
            raise PromptError(
                f"prompt file '{source}': placeholder '{name}' has format '{fmt}' without '{{value}}'; "
                "write where the value goes, e.g. format = \" ({value})\"."
            )
        result[name] = Placeholder(name, spec.get("description", ""), default, fmt)
    return result


def _parse_messages(messages: object, source: str) -> list[tuple[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise PromptError(
            f"prompt file '{source}' has no [[messages]]; add at least one, e.g.\n"
            '[[messages]]\nrole = "user"\ncontent = "..."'
        )
    parsed: list[tuple[str, str]] = []
    for index, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise PromptError(
                f"prompt file '{source}': message {index} must have exactly the keys 'role' and 'content'."
            )
        role, content = message["role"], message["content"]
        if not isinstance(role, str) or role not in _ROLES:
            raise PromptError(
                f"prompt file '{source}': message {index} has role '{role}'; valid roles: {_quoted(list(_ROLES))}."
            )
        if not isinstance(content, str) or not content.strip():
            raise PromptError(f"prompt file '{source}': message {index} has empty or non-text content.")
        parsed.append((role, content))
    if parsed[-1][0] != "user":
        raise PromptError(
            f"prompt file '{source}': the last message must have role 'user' (the question the LLM answers)."
        )
    return parsed
