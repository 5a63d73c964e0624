"""`vlmcls cache info|clear`: look at and empty the cache."""

from __future__ import annotations

from typing import Optional

import typer

from ..cache import Store
from ..errors import ConfigError
from ._app import App
from ._render import console, handle_errors, key_value_table

CACHE_KINDS = ("image", "text", "llm", "digest")

app = App(help="Inspect or clear the cache of LLM answers and embeddings.", no_args_is_help=True)


@app.command("info")
@handle_errors
def info(cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="Cache folder (default: $VLMCLS_CACHE or cache/).")) -> None:
    """Where the cache is, how big it is, and what it holds."""
    with Store(cache_dir) as store:
        stats = store.info()
    items = {"directory": stats["directory"], "entries": stats["entries"], "size": f"{stats['size_bytes'] / 2**20:.1f} MiB"}
    items.update({f"  {kind}": n for kind, n in sorted(stats["by_kind"].items())})
    console.print(key_value_table("vlmcls cache", items))


@app.command("clear")
@handle_errors
def clear(
    kind: Optional[str] = typer.Option(None, "--kind", help="Only this kind of entry: image, text, llm, digest (file hashes by path and stat)."),
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="Cache folder."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Remove cached entries (all, or one kind)."""
    if kind is not None and kind not in CACHE_KINDS:
        raise ConfigError(f"unknown cache kind '{kind}'. Valid: {', '.join(CACHE_KINDS)} (or no --kind for all).")
    with Store(cache_dir) as store:
        what = f"all '{kind}' entries" if kind else "every entry"
        if not yes and not typer.confirm(f"Remove {what} from {store.directory}?"):  # plain click prompt: no markup
            raise typer.Abort()
        removed = store.clear(kind)
    console.print(f"removed {removed} entries")
