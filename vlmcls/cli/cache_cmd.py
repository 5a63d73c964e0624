"""`vlmcls cache info|clear`: look at and empty the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ..encode.store import Store, default_cache_dir, remove_cache_files
from ..errors import CacheError, ConfigError
from ..sources.snapshot import SNAPSHOT_KIND
from ._app import App
from ._options import cache_folder
from ._render import console, handle_errors, key_value_table

CACHE_KINDS = ("image", "text", "llm", "digest")
_FOLDER_HELP = "Cache folder (default: $VLMCLS_CACHE or cache/)."

app = App(help="Inspect or clear the cache of LLM answers and embeddings.", no_args_is_help=True)


@app.command("info")
@handle_errors
def info(cache: Optional[str] = typer.Option(None, "--cache", metavar="DIR", help=_FOLDER_HELP)) -> None:
    """Where the cache is, how big it is, and what it holds."""
    cache_dir, _ = cache_folder(cache, "cache info")
    with Store(cache_dir) as store:
        stats = store.info()
    items = {"directory": stats["directory"], "entries": stats["entries"], "size": f"{stats['size_bytes'] / 2**20:.1f} MiB"}
    items.update({f"  {kind}": n for kind, n in sorted(stats["by_kind"].items())})
    console.print(key_value_table("vlmcls cache", items))


@app.command("clear")
@handle_errors
def clear(
    kind: Optional[str] = typer.Option(None, "--kind", help="Only this kind of entry: image, text, llm, digest (file hashes by path and stat); image and digest also clear the folder snapshots holding them."),
    cache: Optional[str] = typer.Option(None, "--cache", metavar="DIR", help=_FOLDER_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Remove cached entries (all, or one kind)."""
    cache_dir, _ = cache_folder(cache, "cache clear")
    if kind is not None and kind not in CACHE_KINDS:
        raise ConfigError(f"unknown cache kind '{kind}'. Valid: {', '.join(CACHE_KINDS)} (or no --kind for all).")
    try:
        store = Store(cache_dir)
    except CacheError:
        if kind is not None:  # one kind needs a readable database
            raise
        _clear_damaged(Path(cache_dir) if cache_dir else default_cache_dir(), yes)
        return
    with store:
        what = f"all '{kind}' entries" if kind else "every entry"
        if not yes and not typer.confirm(f"Remove {what} from {store.directory}?"):  # plain click prompt: no markup
            raise typer.Abort()
        removed = store.clear(kind)
        # folder snapshots hold image features and file digests: they go with either
        snapshots = store.clear(SNAPSHOT_KIND) if kind in ("image", "digest") else 0
    also = f" and {snapshots} folder snapshot{'s' if snapshots > 1 else ''} holding them" if snapshots else ""
    console.print(f"removed {removed} entries{also}")


def _clear_damaged(folder: Path, yes: bool) -> None:
    """A cache whose database cannot be opened: delete its files without opening it."""
    if not yes and not typer.confirm(f"The cache database in {folder} cannot be opened. Delete it and every cached value?"):
        raise typer.Abort()
    removed = remove_cache_files(folder)
    console.print(f"removed the damaged cache in {escape(str(folder))} ({removed} files)", highlight=False)
