"""``wds:SPEC``: webdataset tar shards (CLIP_benchmark's benchmark format) listed as :class:`ImageRecord` s.

A spec is a tar file, a brace pattern (``test/{0..3}.tar``, the grammar webdataset itself expands with
``braceexpand``), a folder of ``*.tar`` (``--dataset split=NAME`` picks its sub-folder, as CLIP_benchmark's
``test/``), an http(s) URL or an ``hf://datasets/ORG/NAME/...`` path (downloaded once into the cache, then read like
a local file).

Plain :mod:`tarfile`, not webdataset's streaming pipeline: a listing needs each sample's label up front (the truth
column), each image must be readable alone (one ``pread`` at its offset: read once, on whichever process or Ray
task decodes it), and a bad shard must become an error row, where webdataset's handlers skip or stop. Listing reads
the tar headers and the tiny ``.cls`` members only.

CLIP_benchmark's layout: ``classnames.txt`` (one class per line, line n is label n) and
``zeroshot_classification_templates.txt`` (one ``{c}`` template per line) beside the split folder or the shards.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, ImageError
from .records import IMAGE_EXTENSIONS, DatasetLocation, ImageRecord

__all__ = ["WDS_PREFIX", "ShardListing", "list_shards", "list_shard_urls", "expand_spec", "read_member", "is_wds",
           "listing_error", "natural_order", "refuse_columns", "shard_location"]

log = logging.getLogger(__name__)

WDS_PREFIX = "wds:"
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
_LABEL_EXTENSIONS = ("cls", "cls2", "label")


def is_wds(source: object) -> bool:
    return isinstance(source, str) and source.startswith(WDS_PREFIX)


@dataclass(frozen=True)
class ShardListing:
    """The samples of a set of shards, and the class names and templates found beside them."""

    records: list[ImageRecord]
    # (shard file, ((position, member offset, member size), ...)) per shard read: what a Ray task reads
    shards: tuple[tuple[str, tuple[tuple[int, int, int], ...]], ...] = ()
    classnames: list[str] | None = None
    templates: list[str] | None = None  # with vlmcls' '{}' placeholder
    layout_files: dict[str, str] = field(default_factory=dict)  # which of the layout's files were found, where


def expand_spec(spec: str, split: str | None = None) -> list[str]:
    """The shard paths or URLs a ``wds:`` spec names, in order (a missing local shard stays in the list)."""
    from braceexpand import braceexpand

    text = spec[len(WDS_PREFIX):] if spec.startswith(WDS_PREFIX) else spec
    if not text:
        raise ConfigError(f"'{spec}' names no shards. Write wds:PATH.tar, wds:DIR or wds:'DIR/{{0..9}}.tar'.")
    if _is_remote(text):
        return list(braceexpand(text))
    folder = Path(text).expanduser()
    if folder.is_dir():
        if split is not None:
            folder = folder / split
        shards = sorted(folder.glob("*.tar"), key=lambda p: _natural(p.name))
        if not shards:
            raise ConfigError(f"no .tar shards in '{folder}'. Give a folder of webdataset shards, or a split "
                              "sub-folder with --dataset split=NAME.")
        return [str(p) for p in shards]
    if split is not None:
        raise ConfigError(f"'--dataset split=…' picks a sub-folder of a shard folder, but '{text}' is not a folder. "
                          "Drop it.")
    return list(braceexpand(str(Path(text).expanduser())))


def natural_order(urls: list[str]) -> list[str]:
    """Shards in the order ``wds:DIR`` lists them: by folder, then ``2.tar`` before ``10.tar``."""
    return sorted(urls, key=lambda url: (url.rsplit("/", 1)[0], _natural(url.rsplit("/", 1)[-1])))


def refuse_columns(source: str, image_column: str | None, label_column: str | None) -> None:
    """Shards name their members by extension: the column options do not apply."""
    given = "image_column" if image_column is not None else "label_column" if label_column is not None else None
    if given:
        raise ConfigError(f"'{given}' applies to datasets with columns, not to the shards of '{source}' (images are "
                          "their image members, labels their .cls members). Drop it.")


def shard_location(listing: ShardListing) -> DatasetLocation:
    """Where a Ray task reads each sample of ``listing``: tar members by offset; rows known bad at listing (a missing
    shard) with their reasons."""
    in_shards = {row for _, members in listing.shards for row, _, _ in members}
    failed = {}
    for row, record in enumerate(listing.records):
        if row not in in_shards:
            try:
                record.fetch()
                failed[row] = "no image"
            except ImageError as exc:
                failed[row] = str(exc)
    records = [ImageRecord(r.id, None, r.label, r.source_index) for r in listing.records]
    return DatasetLocation(records, "", None, shards=listing.shards, failed=failed)


def _natural(name: str) -> tuple:
    stem = name.split(".")[0]
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)


def _is_remote(text: str) -> bool:
    return text.startswith(("http://", "https://", "hf://"))


def list_shards(spec: str, split: str | None = None, cache_dir: str | os.PathLike | None = None) -> ShardListing:
    """List every sample of the shards a ``wds:`` spec names: one record per image member, labelled through
    ``classnames.txt`` when found; a shard that cannot be read is one error row, the rest goes on."""
    return list_shard_urls(expand_spec(spec, split), spec, cache_dir)


def list_shard_urls(urls: list[str], spec: str, cache_dir: str | os.PathLike | None = None) -> ShardListing:
    """:func:`list_shards` of shard paths or URLs already expanded (an ``hf-dataset:`` in webdataset format)."""
    records: list[ImageRecord] = []
    shards = []
    paths: list[str | None] = []
    for url in urls:
        try:
            paths.append(_local_copy(url, cache_dir) if _is_remote(url) else url)
        except ImageError as exc:
            log.warning("shard '%s' cannot be fetched: %s", url, exc)
            paths.append(None)
    classnames, templates, found = _layout(urls[0], cache_dir)
    for url, path in zip(urls, paths):
        first = len(records)
        if path is None or not os.path.isfile(path):
            reason = "shard not found" if path is not None else "shard could not be fetched"
            records.append(_error_record(url, first, f"{reason}: {url}"))
            continue
        members = _shard_members(path, url, first, classnames, records)
        shards.append((os.path.abspath(path), members))
    if not records:
        raise ConfigError(f"the shards of '{spec}' hold no samples.")
    return ShardListing(records, tuple(shards), classnames, templates, found)


def _error_record(shard: str, index: int, reason: str) -> ImageRecord:
    return ImageRecord(id=shard, path=None, label=None, source_index=index,
                       fetch=functools.partial(_fail, reason))


def _fail(reason: str) -> bytes:
    raise ImageError(reason)


def listing_error(record: ImageRecord) -> str | None:
    """The reason a shard listing made ``record`` an error row (a missing shard, a sample with no image, a cut
    tar), known without reading anything; None for any other record. Such rows have no label, so a caller that
    keeps only labelled images (the audit) would drop them silently."""
    fetch = record.fetch
    if isinstance(fetch, functools.partial) and fetch.func is _fail:
        return fetch.args[0]
    return None


def _shard_members(path: str, url: str, first: int, classnames: list[str] | None,
                   records: list[ImageRecord]) -> tuple[tuple[int, int, int], ...]:
    """Append one record per sample of one shard to ``records``; (position, offset, size) of each image."""
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    order: list[str] = []
    labels: dict[str, str] = {}
    broken = None
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as file, tarfile.open(fileobj=file, mode="r:") as tar:
            for member in tar:  # headers only: tarfile seeks over the data of a seekable file
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")  # webdataset's rule: the key ends at the first dot
                if key not in samples:
                    samples[key] = {}
                    order.append(key)
                if member.offset_data + member.size > size:
                    broken = f"truncated tar: member '{member.name}' ends past the end of the file"
                    break
                samples[key][ext.lower()] = member
                if ext.lower() in _LABEL_EXTENSIONS:
                    file.seek(member.offset_data)
                    labels[key] = file.read(member.size).decode("utf-8", "replace").strip()
    except (tarfile.TarError, OSError, EOFError) as exc:
        broken = f"truncated or corrupt tar ({type(exc).__name__}: {exc})"
    members = []
    unlabelled = 0
    name = Path(url).name if not _is_remote(url) else url
    for key in order:
        parts = samples[key]
        image_ext = next((e for e in parts if "." + e.split(".")[-1] in IMAGE_EXTENSIONS), None)
        position = len(records)
        if image_ext is None:
            found = ", ".join(sorted(parts)) or "nothing"
            if not parts and broken:
                continue
            records.append(_error_record(f"{url}/{key}", position,
                                         f"sample '{key}' in '{name}' has no image member (found: {found})"))
            continue
        label = _label_name(labels.get(key), classnames)
        unlabelled += label is None
        member = parts[image_ext]
        records.append(ImageRecord(id=f"{url}/{key}.{image_ext}", path=None, label=label, source_index=position,
                                   fetch=functools.partial(read_member, path, member.offset_data, member.size)))
        members.append((position, member.offset_data, member.size))
    if broken:
        log.warning("shard '%s': %s", url, broken)
        records.append(_error_record(url, len(records), f"{broken}; {len(members)} samples before it were read"))
    if unlabelled and members:
        log.warning("shard '%s': %d of its %d images have no .cls member, so no truth label", url, unlabelled,
                    len(members))
    return tuple(members)


def _label_name(value: str | None, classnames: list[str] | None) -> str | None:
    if value is None or value == "":
        return None
    if classnames is not None and value.lstrip("-").isdigit():
        index = int(value)
        if 0 <= index < len(classnames):
            return classnames[index]
    return value


def read_member(path: str, offset: int, size: int) -> bytes:
    """One tar member's bytes, read once at its offset."""
    try:
        with open(path, "rb") as file:
            data = os.pread(file.fileno(), size, offset)
    except OSError as exc:
        raise ImageError(f"cannot read the shard '{path}' ({exc.strerror or exc})") from exc
    if len(data) != size:
        raise ImageError(f"truncated tar member in '{path}': {len(data)} of {size} bytes")
    return data


def _layout(first_url: str, cache_dir) -> tuple[list[str] | None, list[str] | None, dict]:
    """CLIP_benchmark's classnames and templates files: beside the shards, or one folder up (beside ``test/``)."""
    found: dict[str, str] = {}
    texts: dict[str, str] = {}
    base = first_url.rsplit("/", 1)[0] if _is_remote(first_url) else str(Path(first_url).parent)
    for name in (CLASSNAMES_FILE, TEMPLATES_FILE):
        for folder in (base, base.rsplit("/", 1)[0] if _is_remote(base) else str(Path(base).parent)):
            where = f"{folder}/{name}" if _is_remote(folder) else os.path.join(folder, name)
            try:
                local = _local_copy(where, cache_dir) if _is_remote(where) else where
            except ImageError:
                continue
            if os.path.isfile(local):
                texts[name] = Path(local).read_text(encoding="utf-8-sig")
                found[name] = where
                break
    classnames = [line.strip() for line in texts.get(CLASSNAMES_FILE, "").splitlines() if line.strip()] or None
    templates = [line.strip().replace("{c}", "{}") for line in texts.get(TEMPLATES_FILE, "").splitlines()
                 if line.strip()] or None
    return classnames, templates, found


def _local_copy(url: str, cache_dir) -> str:
    """A remote shard or layout file, downloaded once into the cache (hf:// through huggingface_hub, which also
    honours HF_HUB_OFFLINE and its own cache; http(s) through urllib)."""
    if url.startswith("hf://"):
        try:
            from huggingface_hub import hf_hub_download
        except ImportError as exc:  # pragma: no cover - datasets depends on it
            raise ImageError("hf:// shards need huggingface_hub: pip install huggingface_hub") from exc
        rest = url[len("hf://"):]
        kind, _, rest = rest.partition("/")
        if kind not in ("datasets", "models", "spaces"):
            raise ConfigError(f"'{url}' is no hf:// path. Write hf://datasets/ORG/NAME/PATH.")
        parts = rest.split("/")
        if len(parts) < 3:
            raise ConfigError(f"'{url}' names no file. Write hf://datasets/ORG/NAME/PATH.")
        repo, revision = "/".join(parts[:2]), None
        if "@" in repo:
            repo, revision = repo.split("@", 1)
        try:
            return hf_hub_download(repo, "/".join(parts[2:]), repo_type=kind.rstrip("s"), revision=revision)
        except Exception as exc:  # offline, missing file, gated repo: one reason
            raise ImageError(f"cannot fetch '{url}' ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    import urllib.request

    folder = Path(cache_dir or os.environ.get("VLMCLS_CACHE") or "cache") / "shards"
    target = folder / (hashlib.sha256(url.encode()).hexdigest()[:32] + "-" + url.rsplit("/", 1)[-1])
    if target.is_file():
        return str(target)
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        raise ImageError(f"cannot fetch '{url}' ({type(exc).__name__}: {exc})") from exc
    os.replace(partial, target)
    return str(target)
