"""`vlmcls methods [NAME]`: the methods and refiners the registry holds, and one method's options."""

from __future__ import annotations

import dataclasses
from typing import Optional

import typer
from rich.table import Table

from ._render import console, handle_errors, safe

__all__ = ["register", "methods_command"]


@handle_errors
def methods_command(
    name: Optional[str] = typer.Argument(None, help="A method or refiner: show its options."),
) -> None:
    """List the methods and refiners (stage kind, LLM use, cost), or every option of one."""
    from ..methods import METHODS, get_record, option_fields
    from ..methods.registry import _PLUGINS, type_text

    if name is None:
        table = Table(title="methods (write a spec as HEAD[+STAGE…], e.g. cbd+fudd+tip)", title_justify="left")
        for column in ("name", "stage", "asks an LLM", "what"):
            table.add_column(column, overflow="fold")
        for record in METHODS.values():
            llm = "yes" if record.asks_llm(record.config()) else "no"
            if llm == "yes" and any(f.metadata.get("file") for f in option_fields(record).values()):
                llm = "unless a file is given"
            origin = "" if record.source == "vlmcls" else f" [from {record.source}]"
            table.add_row(safe(record.name), record.kind, llm, safe(record.summary + origin))
        console.print(table)
        broken = {ep: why for ep, why in _PLUGINS.items() if why != "ok"}
        for ep, why in broken.items():
            console.print(f"plugin '{safe(ep)}': {safe(why)}", highlight=False)
        console.print("Options: --opt METHOD.KEY=VALUE on classify, eval and audit; `vlmcls methods NAME` lists them.")
        return
    record = get_record(name)
    console.print(f"[bold]{safe(record.name)}[/bold] — {safe(record.summary)}", highlight=False)
    console.print(f"stage: {record.kind}; text: {safe(record.text_source)}; cost: {safe(record.cost)}",
                  highlight=False)
    if record.requires:
        console.print(f"needs: {safe(record.requires)}", highlight=False)
    fields = option_fields(record)
    if not fields:
        console.print("no options")
        return
    table = Table(title=f"options (--opt {record.name}.KEY=VALUE)", title_justify="left")
    for column in ("option", "type", "default", "doc"):
        table.add_column(column, overflow="fold")
    for key, f in fields.items():
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else "(required)"
        kind = type_text(record, key) + (f", {meta['file']}" if meta.get("file") else "")
        if meta.get("choices"):
            kind += ": " + " | ".join(meta["choices"])
        bounds = [f"≥ {meta['min']}" if meta.get("min") is not None else "",
                  f"≤ {meta['max']}" if meta.get("max") is not None else ""]
        doc = meta.get("doc", "") + "".join(f" ({b})" for b in bounds if b)
        if meta.get("flag"):
            doc += f" Flag: {meta['flag'].split('/')[0]}."
        table.add_row(f"{record.name}.{key}", safe(kind), safe(default), safe(doc))
    console.print(table)


def register(root: typer.Typer) -> None:
    root.command("methods", help="List the methods and refiners, or one method's options.")(methods_command)
