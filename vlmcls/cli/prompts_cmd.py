"""`vlmcls prompts list|show|path`: see which prompt files steer the LLM, and where to edit them."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..errors import PromptError
from ..llm.prompts import list_prompts, load_prompt, prompt_search_path
from ._app import App
from ._render import console, handle_errors, safe

__all__ = ["app", "PROMPTS_DIR_OPTION", "PROMPT_FILE_OPTION"]

app = App(help="List, show and locate the prompt files sent to the LLM.", no_args_is_help=True)

# Shared with the commands that ask the LLM (describe, classify), so the flags read the same everywhere.
PROMPTS_DIR_OPTION = typer.Option(
    None, "--prompts", help="Folder of prompt files overriding the defaults, by name (also $VLMCLS_PROMPTS)."
)
PROMPT_FILE_OPTION = typer.Option(None, "--prompt-file", help="One prompt file to use instead of the named prompt.")


@app.command("list")
@handle_errors
def list_command(prompts: Optional[Path] = PROMPTS_DIR_OPTION) -> None:
    """Every prompt, the file that is used for it, and where that file comes from."""
    table = Table(title="prompts", title_justify="left")
    for column in ("name", "from", "file", "what it asks"):
        table.add_column(column, overflow="fold")
    for source in list_prompts(prompts):
        try:
            description = load_prompt(source.name, prompts).description
        except PromptError as exc:
            description = f"[red]invalid:[/red] {safe(exc)}"
        else:
            description = safe(description)
        table.add_row(safe(source.name), safe(source.origin), safe(source.path), description)
    console.print(table)


def _parse_assignments(assignments: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise PromptError(f"--set '{item}' is not NAME=VALUE, e.g. --set class_name=toucan")
        values[name.strip()] = value
    return values


@app.command("show")
@handle_errors
def show_command(
    name: str = typer.Argument(..., help="Prompt name, e.g. descriptors or differential."),
    prompts: Optional[Path] = PROMPTS_DIR_OPTION,
    prompt_file: Optional[Path] = PROMPT_FILE_OPTION,
    assignments: List[str] = typer.Option(
        [], "--set", help="Render the messages as sent, with NAME=VALUE for each placeholder (repeatable)."
    ),
) -> None:
    """Print a prompt file (validated), or with --set the exact messages the LLM would receive."""
    template = load_prompt(name, prompts, prompt_file)
    if not assignments:
        typer.echo(f"# {template.path}  (sha256 {template.digest[:12]})")
        typer.echo(template.text)
        return
    for message in template.render(**_parse_assignments(assignments)):
        typer.echo(f"--- {message['role']} ---")
        typer.echo(message["content"])


@app.command("path")
@handle_errors
def path_command(
    name: Optional[str] = typer.Argument(None, help="Prompt name; leave out for the folders searched."),
    prompts: Optional[Path] = PROMPTS_DIR_OPTION,
) -> None:
    """The file used for a prompt (to open in an editor), or the folders searched, first match wins."""
    if name is not None:
        sources = {s.name: s for s in list_prompts(prompts)}
        if name not in sources:
            load_prompt(name, prompts)  # raises the error that lists the available names
        typer.echo(str(sources[name].path))
        return
    for origin, folder in prompt_search_path(prompts):
        typer.echo(f"{folder}\t{origin}")
