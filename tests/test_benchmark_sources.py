"""wds:SPEC shards (CLIP_benchmark's layout) and hf-dataset: ids as image sources, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

import shardgen
from vlmcls.errors import ConfigError
from vlmcls.sources.listing import list_images, read_image_data
from vlmcls.sources.shards import list_shards

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """(the demo images as a JPEG folder, the same bytes as 4 shards in CLIP_benchmark's layout)."""
    base = tmp_path_factory.mktemp("bench")
    samples = shardgen.demo_as_jpeg_folder(base / "folder")
    shardgen.write_clip_benchmark(base / "wds", samples, shards=4)
    return base / "folder", base / "wds"


def run_cli(*args, env=None, timeout=600):
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "vlmcls", *args], capture_output=True, text=True, cwd=ROOT,
                          env=environ, timeout=timeout)


def test_brace_range_lists_every_sample_with_its_class_name(bench):
    folder, wds = bench
    listing = list_shards(f"wds:{wds}/test/{{0..3}}.tar")
    assert len(listing.records) == len(list_images(folder)) == 48
    assert [r.label for r in listing.records] == [r.label for r in list_images(folder)]
    assert listing.templates == ["a photo of a {}.", "a drawing of a {}."]
    assert listing.classnames[0] == "zorblax"
    # the member bytes are the folder's bytes: hashed for the store alike
    data, _ = read_image_data(listing.records[5])
    assert data == read_image_data(list_images(folder)[5])[0]


def test_folder_and_split_name_the_same_shards(bench):
    _, wds = bench
    by_split = list_images(f"wds:{wds}", split="test")
    by_range = list_images(f"wds:{wds}/test/{{0..3}}.tar")
    assert [(r.id, r.label) for r in by_split] == [(r.id, r.label) for r in by_range]


def test_missing_shard_in_range_is_one_error_row_and_the_rest_goes_on(bench):
    _, wds = bench
    records = list_images(f"wds:{wds}/test/{{0..5}}.tar")
    missing = [r for r in records if r.label is None]
    assert [r.id for r in missing] == [f"{wds}/test/4.tar", f"{wds}/test/5.tar"]
    with pytest.raises(Exception, match="shard not found"):
        read_image_data(missing[0])
    assert len(records) == 50


def test_non_image_member_no_cls_and_truncated_tar(tmp_path, bench):
    _, wds = bench
    shard = tmp_path / "odd.tar"
    good = (wds / "test" / "0.tar").read_bytes()
    with tarfile.open(shard, "w") as tar:
        shardgen.add_member(tar, "a.txt", b"not an image")  # a sample with no image member
        shardgen.add_member(tar, "b.jpg", b"this is text named .jpg")  # decodes to an error row later
        shardgen.add_member(tar, "c.cls", b"1")
    records = list_images(f"wds:{shard}")
    assert "no image member" in _reason(records[0])
    assert records[1].label is None  # no cls: no truth, a warning in the log
    # truncated: cut the good shard in the middle of a member
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good[: len(good) // 2])
    records = list_images(f"wds:{cut}")
    assert "truncated" in _reason(records[-1])
    assert all(r.label is not None for r in records[:-1]) and len(records) > 1


def _reason(record):
    try:
        read_image_data(record)
    except Exception as exc:  # ImageError
        return str(exc)
    return ""


def test_column_flags_do_not_apply_to_shards(bench):
    _, wds = bench
    with pytest.raises(ConfigError, match="image_column"):
        list_images(f"wds:{wds}", image_column="jpg", split="test")


def test_eval_on_shards_equals_eval_on_the_folder_and_rerun_encodes_nothing(bench, tmp_path):
    folder, wds = bench
    templates = tmp_path / "t.txt"
    templates.write_text("a photo of a {}.\na drawing of a {}.\n")
    common = ["--model", shardgen.DEMO_MODEL, "--methods", "name,templates", "-q", "--device", "cpu"]
    on_folder = run_cli("eval", str(folder), "--classes", str(shardgen.DEMO / "classes.txt"), "--templates",
                        str(templates), "-o", str(tmp_path / "folder.json"), *common)
    assert on_folder.returncode == 0, on_folder.stderr
    on_shards = run_cli("eval", f"wds:{wds}/test/{{0..3}}.tar", "-o", str(tmp_path / "wds.json"), *common[:-3],
                        "--device", "cpu")
    assert on_shards.returncode == 0, on_shards.stderr
    said = "".join(on_shards.stderr.split())  # a long tmp path wraps at the terminal's width
    assert "classnames.txt" in said and "zeroshot_classification_templates.txt" in said
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("folder", "wds"))
    assert len(a["methods"]) == 2
    for run_a, run_b in zip(a["methods"], b["methods"]):
        assert run_a["metrics"] == run_b["metrics"]
    again = run_cli("eval", f"wds:{wds}/test/{{0..3}}.tar", "-o", str(tmp_path / "again.json"), *common,
                    "--clip-benchmark-json", str(tmp_path / "cb.json"))
    assert again.returncode == 0, again.stderr
    images = json.loads((tmp_path / "again.json").read_text())["images"]
    assert images["encoded"] == 0 and images["cached"] == 48
    # CLIP_benchmark's own output object (clip_benchmark/cli.py: dump = {...}): same field names and types
    for method, run in zip(("name", "templates"), b["methods"]):
        record = json.loads((tmp_path / f"cb-{method}.json").read_text())
        assert set(record) == {"dataset", "model", "pretrained", "task", "metrics", "language", "vlmcls_method"}
        assert record["task"] == "zeroshot_classification" and record["language"] == "en"
        assert set(record["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
        assert all(isinstance(v, float) and 0 <= v <= 1 for v in record["metrics"].values())
        assert record["metrics"]["acc1"] == pytest.approx(run["metrics"]["top1"])
        # strings both, as CLIP_benchmark's `build` joins them (model + ' ' + pretrained): no null pretrained
        assert (record["model"], record["pretrained"]) == (shardgen.DEMO_MODEL, "")


def test_hub_dataset_while_offline_exits_3_within_seconds_with_one_line(tmp_path):
    started = time.monotonic()
    proc = run_cli("eval", "hf-dataset:clip-benchmark/wds_cifar10", "--classes", "a,b", "--model",
                   shardgen.DEMO_MODEL, "-q", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 3, proc.stderr
    assert time.monotonic() - started < 30  # the interpreter and imports: the probe itself answers at once
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "HF_HUB_OFFLINE" in lines[0] and "save_to_disk" in lines[0]


@pytest.mark.parametrize("source", ["hf-dataset:", "hf-dataset:noslash", "hf-dataset:a/b/c", "hf-dataset:/x"])
def test_malformed_hub_dataset_ids_are_config_errors(source):
    with pytest.raises(ConfigError, match="hf-dataset:ORG/NAME"):
        list_images(source)


def test_audit_on_shards_takes_labels_from_cls_and_classes_from_classnames_txt(bench, tmp_path, monkeypatch):
    """The audit of the shards is the audit of the folder; a missing shard is an error row (exit 1), not dropped."""
    from typer.testing import CliRunner

    from vlmcls.cli import app

    folder, wds = bench
    monkeypatch.setenv("VLMCLS_CACHE", str(tmp_path / "cache"))
    descriptors = str(shardgen.DEMO / "descriptors.json")
    audits = {}
    for name, data, extra in (("folder", str(folder), ["--classes", str(shardgen.DEMO / "classes.txt")]),
                              ("wds", f"wds:{wds}/test/{{0..3}}.tar", []),  # classes: classnames.txt
                              ("missing", f"wds:{wds}/test/{{0..4}}.tar", [])):
        out = tmp_path / f"{name}.json"
        result = CliRunner().invoke(app, ["audit", data, *extra, "--descriptors", descriptors, "-m",
                                          shardgen.DEMO_MODEL, "-o", str(out), "-q"])
        assert result.exit_code == (1 if name == "missing" else 0), result.output
        audits[name] = json.loads(out.read_text())
        if name == "missing":
            said = "".join(result.output.split())  # a long tmp path wraps at the terminal's width
            assert "shardnotfound" in said and "4.tar" in said
    assert audits["wds"] == audits["folder"] == audits["missing"]
    assert sum(len(rows) for rows in audits["wds"].values()) > 0


def test_classify_with_an_output_file_takes_the_shards_class_names(bench, tmp_path):
    """classify -o on a source that brings its classes (a list, not a file) crashed checking its outputs."""
    _, wds = bench
    out = tmp_path / "rows.jsonl"
    proc = run_cli("classify", f"wds:{wds}/test/{{0..3}}.tar", "--model", shardgen.DEMO_MODEL, "--device", "cpu",
                   "-q", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert len(out.read_text().splitlines()) == 48
