"""``hf-dataset:ORG/NAME`` (a dataset on the HF hub) and ``hf-dataset:DIR`` (a local copy of one: a folder
``datasets.load_dataset`` reads, such as a clone of the hub repository with its ``data/*.parquet``, or a
``save_to_disk`` folder).

Where the dataset is Parquet files (most hub datasets are, or have a Parquet conversion), it is streamed: the files
datasets resolves are read directly (:mod:`.parquet_rows`), labels first, each image when it is decoded, so nothing is
downloaded whole and nothing lands in datasets' cache. Webdataset tars (CLIP_benchmark's ``wds_*`` datasets) are
read as ``wds:`` reads them (:mod:`.shards`: each shard fetched once, labels through ``classnames.txt``, where
datasets would give the bare ``cls`` numbers). Other datasets are loaded through ``datasets.load_dataset`` into its
cache first. Offline and not cached, a hub id fails in seconds
(:class:`~vlmcls.errors.SourceUnreachableError`: exit code 3, one line).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, SourceUnreachableError
from ..hub import hub_endpoint, hub_unreachable_reason, in_hub_cache
from .columns import DatasetImages, arrow_parts, dataset_columns, dataset_records, load_hf, pick_label_column
from .parquet_rows import read_parquet_rows
from .shards import CLASSNAMES_FILE, list_shard_urls, natural_order, refuse_columns, shard_location
from .records import DatasetLocation, ImageRecord

__all__ = ["HUB_DATASET_PREFIX", "HubDataset", "is_hub_dataset", "check_hub_dataset_id", "open_hub_dataset"]

log = logging.getLogger(__name__)

HUB_DATASET_PREFIX = "hf-dataset:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class HubDataset:
    """One split of an ``hf-dataset:`` source, listed."""

    records: list[ImageRecord]  # each with fetch: read on this process
    location: DatasetLocation | None  # where another process (a Ray task) reads each row's image
    class_names: list[str] | None  # the label column's ClassLabel names, or classnames.txt beside shards; or None
    streamed: bool  # read from its Parquet files as needed (True), or fetched first (shards, datasets' cache)
    templates: list[str] | None = None  # CLIP_benchmark's templates file beside webdataset shards
    classes_from: str = "the ClassLabel names"  # where class_names came from, for the run's log line


def is_hub_dataset(source: object) -> bool:
    return isinstance(source, str) and source.startswith(HUB_DATASET_PREFIX)


def check_hub_dataset_id(source: str) -> str:
    """The ``ORG/NAME`` of an ``hf-dataset:ORG/NAME`` source; ConfigError when it is not one."""
    name = source[len(HUB_DATASET_PREFIX):]
    if not _HUB_ID.match(name):
        raise ConfigError(f"'{source}' is no hub dataset id nor a dataset folder. Write hf-dataset:ORG/NAME, e.g. "
                          "hf-dataset:clip-benchmark/wds_cifar10, or hf-dataset:DIR with an existing DIR.")
    return name


def open_hub_dataset(source: str, split: str | None = None, image_column: str | None = None,
                     label_column: str | None = None, *, locate: bool = False) -> HubDataset:
    """List one split of an ``hf-dataset:`` source: streamed from its Parquet files when it has them. ``locate``:
    also say where other processes read each row (``location``; always set for a streamed dataset)."""
    where, name, local = _resolve(source)
    if local and any((Path(where) / f).is_file() for f in ("dataset_dict.json", "state.json")):
        loaded = load_hf(lambda ds: ds.load_from_disk(where), source)  # save_to_disk's Arrow files, read in place
        return _loaded(loaded, source, name, where, split, image_column, label_column, locate)
    builder = load_hf(lambda ds: ds.load_dataset_builder(where), source)
    data_files = getattr(builder.config, "data_files", None) or {}
    files_by_split = {str(key): [str(f) for f in value] for key, value in data_files.items()}
    if builder.name == "parquet" and files_by_split:
        split_name = _pick_split(files_by_split, name, split)
        rows = read_parquet_rows(files_by_split[split_name], name, split_name, source, image_column, label_column,
                                 where if local else None)
        return HubDataset(rows.records, rows.location, rows.class_names, streamed=True)
    if builder.name == "webdataset" and files_by_split:  # CLIP_benchmark's wds_* datasets: read as wds: reads them
        refuse_columns(source, image_column, label_column)
        shards = list_shard_urls(natural_order(files_by_split[_pick_split(files_by_split, name, split)]), source)
        return HubDataset(shards.records, shard_location(shards) if locate else None, shards.classnames,
                          streamed=False, templates=shards.templates,
                          classes_from=shards.layout_files.get(CLASSNAMES_FILE, ""))
    log.info("dataset '%s' is no Parquet dataset (datasets reads it as '%s'): loading it whole into datasets' cache "
             "before the first image", name, builder.name)
    loaded = load_hf(lambda ds: ds.load_dataset(where, split=split), source)
    return _loaded(loaded, source, name, where if local else None, split, image_column, label_column, locate)


def _loaded(loaded, source: str, name: str, base_dir: str | None, split: str | None, image_column: str | None,
            label_column: str | None, locate: bool) -> HubDataset:
    """A dataset datasets has loaded (its Arrow files: save_to_disk's, or its cache's)."""
    import datasets

    dataset, split_name, column, labels = dataset_columns(loaded, name, image_column, label_column, split)
    records = dataset_records(name, split_name, labels,
                              DatasetImages(dataset, column, Path(base_dir) if base_dir else None).read)
    location = None
    if locate:  # the Arrow files, in row order
        location = DatasetLocation(dataset_records(name, split_name, labels, None), column, base_dir,
                                   parts=arrow_parts(dataset, source))
    label = pick_label_column(dataset.features, label_column, name)
    feature = dataset.features[label] if label is not None else None
    class_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    return HubDataset(records, location, class_names, streamed=False)


def _resolve(source: str) -> tuple[str, str, bool]:
    """(what datasets loads: a folder or an ORG/NAME id, the dataset's name in row ids, whether it is local)."""
    text = source[len(HUB_DATASET_PREFIX):]
    folder = Path(text).expanduser()
    if text and folder.is_dir():  # datasets' own rule: a folder that exists wins over a hub id
        folder = folder.resolve()
        return str(folder), folder.name, True
    name = check_hub_dataset_id(source)
    if not in_hub_cache("datasets", name):
        endpoint = hub_endpoint()
        reason = hub_unreachable_reason(endpoint)
        if reason is not None:
            raise SourceUnreachableError(
                f"dataset '{name}' must be read from the HF hub ({endpoint}), but {reason} and it is not in the "
                "local hub cache. Where you have network, save it with datasets' save_to_disk (or download its "
                "shards or Parquet files) and give that folder here (hf-dataset:DIR), or wds:DIR."
            )
    return name, name.split("/")[-1], False


def _pick_split(files_by_split: dict[str, list[str]], name: str, split: str | None) -> str:
    splits = list(files_by_split)
    if split is None and len(splits) == 1:
        return splits[0]
    if split is None or split not in files_by_split:
        what = "has several splits" if split is None else f"has no split '{split}'"
        raise ConfigError(f"dataset '{name}' {what}; choose one of {', '.join(map(repr, splits))} with split=.")
    return split
