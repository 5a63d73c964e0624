"""hf-dataset:DIR: the demo world packed at test time as a local HF dataset (a hub repository's Parquet layout, and a
save_to_disk folder) reads as the folder does, streamed from its Parquet files; offline throughout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import shardgen
from vlmcls.errors import ConfigError
from vlmcls.sources.hub_datasets import open_hub_dataset
from vlmcls.sources.listing import list_images, locate_dataset, read_image_data

ROOT = Path(__file__).resolve().parents[1]
FOLDER = shardgen.DEMO / "images"


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """(a hub-layout Parquet dataset folder: 2 files of 3 row groups of 8 rows, a save_to_disk folder)."""
    base = tmp_path_factory.mktemp("hf")
    shardgen.write_hf_parquet(base / "parquet", files=2, row_group=8)
    shardgen.demo_as_hf_dataset().save_to_disk(str(base / "saved"))
    return base / "parquet", base / "saved"


@pytest.mark.parametrize("which", [0, 1], ids=["parquet", "saved"])
def test_a_local_hf_dataset_lists_as_the_folder_with_its_class_label_names(hf, which):
    source = f"hf-dataset:{hf[which]}"
    dataset = open_hub_dataset(source)
    folder = list_images(FOLDER)
    assert dataset.streamed is (which == 0)
    assert dataset.class_names == shardgen.demo_classes()
    assert [r.label for r in dataset.records] == [r.label for r in folder]
    assert [read_image_data(r)[0] for r in dataset.records] == [read_image_data(r)[0] for r in folder]
    location = locate_dataset(source)  # what Ray reads: the same rows, no fetch
    assert [(r.id, r.label) for r in location.records] == [(r.id, r.label) for r in dataset.records]
    assert sum(rows for _, _, rows in location.parts) == 48 and location.column == "image"


def test_streamed_rows_read_one_row_group_when_its_first_image_is_read(hf, monkeypatch):
    import pyarrow.parquet as pq

    reads = []
    original = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group",
                        lambda self, i, *a, **k: reads.append(i) or original(self, i, *a, **k))
    records = list_images(f"hf-dataset:{hf[0]}")
    assert reads == []  # listing: footers and the label column only
    for record in records[:8]:
        read_image_data(record)
    assert reads == [0]
    read_image_data(records[8])
    assert reads == [0, 1]


def test_split_and_column_mistakes_are_config_errors(hf):
    with pytest.raises(ConfigError, match="no split 'train'.*'test'"):
        list_images(f"hf-dataset:{hf[0]}", split="train")
    with pytest.raises(ConfigError, match="no column 'img'"):
        list_images(f"hf-dataset:{hf[0]}", image_column="img")


def run_cli(*args, env=None):
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "vlmcls", *args], capture_output=True, text=True, cwd=ROOT,
                          env=environ, timeout=600)


def test_eval_on_the_hf_dataset_equals_eval_on_the_folder(hf, tmp_path):
    common = ["--model", shardgen.DEMO_MODEL, "--methods", "templates,cbd", "--descriptors",
              str(shardgen.DEMO / "descriptors.json"), "--device", "cpu"]
    cache = tmp_path / "datasets-cache"
    runs = {"folder": [str(FOLDER), "--classes", str(shardgen.DEMO / "classes.txt"), "-q"],
            "parquet": [f"hf-dataset:{hf[0]}"],  # classes: the ClassLabel names
            "saved": [f"hf-dataset:{hf[1]}", "-q"]}
    metrics = {}
    for name, args in runs.items():
        proc = run_cli("eval", *args, "-o", str(tmp_path / f"{name}.json"), *common,
                       env={"HF_DATASETS_CACHE": str(cache)})
        assert proc.returncode == 0, proc.stderr
        if name == "parquet":
            assert "ClassLabel" in proc.stderr
        metrics[name] = [run["metrics"] for run in json.loads((tmp_path / f"{name}.json").read_text())["methods"]]
    assert len(metrics["folder"]) == 2
    assert metrics["parquet"] == metrics["folder"] and metrics["saved"] == metrics["folder"]
    # streamed: nothing was copied into datasets' cache
    assert not [p for p in cache.rglob("*") if p.suffix == ".arrow"]


def test_parquet_files_behind_an_fsspec_url_stream_as_local_ones(hf):
    """The code path of a hub dataset's hf:// files (range reads through fsspec), offline: memory:// URLs."""
    import fsspec

    from vlmcls.sources.parquet_rows import read_parquet_rows

    local = sorted(str(p) for p in (hf[0] / "data").glob("*.parquet"))
    memory = fsspec.filesystem("memory")
    urls = []
    for path in local:
        url = f"memory://bench28/{Path(path).name}"
        memory.pipe(url, Path(path).read_bytes())
        urls.append(url)
    remote = read_parquet_rows(urls, "demo", "test", "hf-dataset:org/demo")
    here = read_parquet_rows(local, "demo", "test", "hf-dataset:org/demo")
    assert [(r.id, r.label) for r in remote.records] == [(r.id, r.label) for r in here.records]
    assert [read_image_data(r)[0] for r in remote.records] == [read_image_data(r)[0] for r in here.records]
    assert [file for file, _, _ in remote.location.parts][0] == urls[0]  # Ray tasks open the URL themselves


def test_a_hub_dataset_behind_an_unreachable_endpoint_fails_in_seconds(monkeypatch, tmp_path):
    """The probe hub models use (vlmcls.hub), for datasets: no retries, one reason, SourceUnreachableError."""
    import socket
    import time

    from vlmcls.errors import SourceUnreachableError

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # read once at import: patch the value
    started = time.monotonic()
    with pytest.raises(SourceUnreachableError, match="cannot be reached.*hf-dataset:DIR"):
        list_images("hf-dataset:clip-benchmark/wds_cifar10")
    assert time.monotonic() - started < 5


def test_a_webdataset_hf_dataset_reads_as_wds_with_class_names_not_cls_numbers(tmp_path):
    """CLIP_benchmark's wds_* hub datasets are webdataset shards: datasets alone would give the bare cls numbers as
    labels; hf-dataset: reads them as wds: does (classnames.txt, templates, one record per image member)."""
    samples = shardgen.demo_as_jpeg_folder(tmp_path / "folder")
    wds = shardgen.write_clip_benchmark(tmp_path / "wds", samples, shards=4)
    dataset = open_hub_dataset(f"hf-dataset:{wds}", locate=True)
    as_wds = list_images(f"wds:{wds}", split="test")
    assert [(r.id, r.label) for r in dataset.records] == [(r.id, r.label) for r in as_wds]
    assert [r.label for r in dataset.records] == [label for label, _ in samples]
    assert dataset.class_names == shardgen.demo_classes() and dataset.templates == ["a photo of a {}.",
                                                                                   "a drawing of a {}."]
    assert [read_image_data(r)[0] for r in dataset.records] == [data for _, data in samples]
    assert len(dataset.location.shards) == 4 and not dataset.location.failed  # Ray: one task per shard
    with pytest.raises(ConfigError, match="label_column"):
        list_images(f"hf-dataset:{wds}", label_column="cls")
