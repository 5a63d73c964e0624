"""`vlmcls sort` and `vlmcls export`: a run's results turned into folders and into labelling tools' formats."""

import csv
import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import imagegen
from vlmcls.cli import app
from vlmcls.review.labels import LabelLog, read_corrections, read_label_map

runner = CliRunner()
CLASSES = ["cat", "dog", "owl"]


def _results(tmp_path: Path, probs=(0.9, 0.8, 0.4, 0.7), labels=("cat", "dog", "cat", "owl")) -> Path:
    """Four images (two named a.png in different folders) and a results file as classify writes it."""
    images = tmp_path / "images"
    names = ["x/a.png", "y/a.png", "x/b.png", "y/c.png"]
    rows = []
    for n, (name, prob, label) in enumerate(zip(names, probs, labels)):
        path = images / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"image {n} ".encode() * (n + 3))
        others = [c for c in CLASSES if c != label]
        rows.append({"path": str(path), "label": label, "top_k": [{"label": label, "prob": prob},
                     {"label": others[0], "prob": round(1 - prob, 6)}], "error": None})
    rows.append({"path": str(images / "broken.png"), "label": None, "top_k": [], "error": "cannot decode"})
    time.sleep(0.01)
    out = tmp_path / "run" / "out.jsonl"
    out.parent.mkdir()
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def _tree(folder: Path) -> dict[str, bytes]:
    return {os.fspath(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("mode", ["link", "copy", "move"])
def test_sort_then_undo_restores_every_file_byte_identical(tmp_path, mode):
    out = _results(tmp_path)
    before = _tree(tmp_path / "images")
    into = tmp_path / "sorted"
    result = runner.invoke(app, ["sort", str(out), "--into", str(into), "--mode", mode])
    assert result.exit_code == 1, result.output  # the error row is reported as skipped
    assert "skipped" in result.output and "broken.png" in result.output
    placed = {os.fspath(p.relative_to(into)) for p in into.rglob("*.png")}
    assert placed == {"cat/a.png", "cat/b.png", "dog/a.png", "owl/c.png"}  # two a.png, no clash in one folder
    assert (into / "dog/a.png").read_bytes() == before["y/a.png"]
    if mode == "link":
        assert (into / "cat/a.png").is_symlink()
    if mode == "move":
        assert not (tmp_path / "images/x/a.png").exists()
    else:
        assert _tree(tmp_path / "images") == before
    manifest = next(into.glob(".vlmcls-sort-*.jsonl"))
    undone = runner.invoke(app, ["sort", "--undo", str(manifest)])
    assert undone.exit_code == 0, undone.output
    assert "4 files restored" in undone.output
    assert _tree(tmp_path / "images") == before
    assert not list(into.rglob("*.png"))


def test_a_name_clash_gets_a_suffix_and_never_overwrites(tmp_path):
    out = _results(tmp_path, labels=("cat", "cat", "cat", "owl"))
    into = tmp_path / "sorted"
    (into / "cat").mkdir(parents=True)
    (into / "cat/a.png").write_bytes(b"already here")
    result = runner.invoke(app, ["sort", str(out), "--into", str(into), "--mode", "copy"])
    assert result.exit_code == 1, result.output
    assert (into / "cat/a.png").read_bytes() == b"already here"
    assert sorted(p.name for p in (into / "cat").iterdir()) == ["a-1.png", "a-2.png", "a.png", "b.png"]
    # undo removes only what the sort made
    manifest = next(into.glob(".vlmcls-sort-*.jsonl"))
    runner.invoke(app, ["sort", "--undo", str(manifest)])
    assert sorted(p.name for p in (into / "cat").iterdir()) == ["a.png"]


def test_corrections_win_min_prob_goes_to_unsure_and_dry_run_touches_nothing(tmp_path):
    out = _results(tmp_path)
    log = LabelLog(out)
    log.append(str(tmp_path / "images/x/a.png"), "label", "owl", row=0)
    log.append(str(tmp_path / "images/y/a.png"), "unknown", row=1)
    log.append(str(tmp_path / "images/y/c.png"), "label", "dog", row=3)
    log.append(str(tmp_path / "images/y/c.png"), "undo", row=3)  # taken back: the prediction stands
    into = tmp_path / "sorted"
    dry = runner.invoke(app, ["sort", str(out), "--into", str(into), "--min-prob", "0.5", "--dry-run"],
                        terminal_width=200)
    assert dry.exit_code == 1 and not into.exists()
    assert "corrected" in dry.output and "unsure" in dry.output
    runner.invoke(app, ["sort", str(out), "--into", str(into), "--min-prob", "0.75"])
    placed = {os.fspath(p.relative_to(into)) for p in into.rglob("*.png")}
    # b.png (0.4) and c.png (0.7) are below 0.75 and unlabelled; the corrections override probability
    assert placed == {"owl/a.png", "unknown/a.png", "_unsure/b.png", "_unsure/c.png"}


def test_a_source_gone_or_changed_since_the_run_is_skipped_and_reported(tmp_path):
    out = _results(tmp_path)
    (tmp_path / "images/x/b.png").unlink()
    changed = tmp_path / "images/y/c.png"
    changed.write_bytes(b"edited after the run")
    os.utime(changed, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    into = tmp_path / "sorted"
    result = runner.invoke(app, ["sort", str(out), "--into", str(into), "--mode", "move"], terminal_width=200)
    assert result.exit_code == 1
    assert "the file is gone" in result.output and "changed after the run" in result.output
    assert changed.read_bytes() == b"edited after the run"  # not moved
    assert {p.name for p in into.rglob("*.png")} == {"a.png"}


def test_undo_never_overwrites_a_file_that_came_back(tmp_path):
    out = _results(tmp_path)
    into = tmp_path / "sorted"
    runner.invoke(app, ["sort", str(out), "--into", str(into), "--mode", "move"])
    (tmp_path / "images/x/a.png").write_bytes(b"a new file at the old place")
    manifest = next(into.glob(".vlmcls-sort-*.jsonl"))
    result = runner.invoke(app, ["sort", "--undo", str(manifest)], terminal_width=200)
    assert result.exit_code == 1 and "not overwritten" in result.output
    assert (tmp_path / "images/x/a.png").read_bytes() == b"a new file at the old place"
    assert (into / "cat/a.png").exists()


def test_a_class_that_would_escape_the_folder_is_refused(tmp_path):
    out = _results(tmp_path, labels=("../../etc", "dog", "cat", "owl"))
    result = runner.invoke(app, ["sort", str(out), "--into", str(tmp_path / "sorted")])
    assert result.exit_code == 2 and "cannot be a folder name" in result.output


def test_labels_log_replays_undo_and_survives_a_torn_line(tmp_path):
    out = tmp_path / "out.jsonl"
    log = LabelLog(out)
    assert log.path == tmp_path / "out.labels.jsonl"
    log.append("a.png", "label", "cat", file="/abs/a.png")
    with open(log.path, "a") as fh:
        fh.write('{"path": "b.png", "act')  # a kill in the middle of a write
    log.append("b.png", "label", "dog")
    log.append("c.png", "label", "owl")
    log.append("c.png", "label", "cat")
    log.append("c.png", "undo")
    now = read_corrections(log.path)
    assert {p: c.label for p, c in now.items()} == {"a.png": "cat", "b.png": "dog", "c.png": "owl"}
    assert read_label_map(log.path) == {"/abs/a.png": "cat", "b.png": "dog", "c.png": "owl"}


def test_export_label_studio_tasks_and_config_in_its_documented_format(tmp_path):
    import xml.etree.ElementTree as ET

    out = _results(tmp_path)
    LabelLog(out).append(str(tmp_path / "images/x/b.png"), "label", "owl", row=2)
    result = runner.invoke(app, ["export", str(out), "--to", "labelstudio", "-o", str(tmp_path / "ls"),
                                 "--files-root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    tasks = json.loads((tmp_path / "ls/tasks.json").read_text())
    assert len(tasks) == 4  # the error row has no image to label
    first = tasks[0]
    assert first["data"]["image"] == "/data/local-files/?d=images/x/a.png"
    pred = first["predictions"][0]
    assert pred["score"] == 0.9
    assert pred["result"] == [{"from_name": "choice", "to_name": "image", "type": "choices",
                               "value": {"choices": ["cat"]}, "score": 0.9}]
    assert tasks[2]["annotations"][0]["result"][0]["value"]["choices"] == ["owl"]
    view = ET.fromstring((tmp_path / "ls/label_config.xml").read_text())
    image, choices = view.find("Image"), view.find("Choices")
    assert image.get("name") == "image" and image.get("value") == "$image"
    assert choices.get("name") == "choice" and choices.get("toName") == "image"
    # every predicted or corrected label is one of the config's choices (Label Studio rejects others)
    allowed = {c.get("value") for c in choices.findall("Choice")}
    assert {t["predictions"][0]["result"][0]["value"]["choices"][0] for t in tasks} <= allowed


def test_export_fiftyone_classification_dataset_folder(tmp_path):
    out = _results(tmp_path)
    LabelLog(out).append(str(tmp_path / "images/x/b.png"), "label", "owl", row=2)
    LabelLog(out).append(str(tmp_path / "images/y/c.png"), "unknown", row=3)
    result = runner.invoke(app, ["export", str(out), "--to", "fiftyone", "-o", str(tmp_path / "fo")])
    assert result.exit_code == 0, result.output
    labels = json.loads((tmp_path / "fo/labels.json").read_text())
    data = json.loads((tmp_path / "fo/data.json").read_text())
    assert set(labels) == {"classes", "labels"} and set(labels["labels"]) == set(data)
    by_file = {Path(data[k]).relative_to(tmp_path).as_posix(): v for k, v in labels["labels"].items()}
    assert by_file["images/x/a.png"] == {"label": "cat", "confidence": 0.9}
    assert by_file["images/x/b.png"] == {"label": "owl"}  # a reviewer's label has no model confidence
    assert by_file["images/y/c.png"] is None  # marked unknown: no label
    assert all(Path(p).is_file() for p in data.values())
    again = tmp_path / "fo2"
    runner.invoke(app, ["export", str(out), "--to", "fiftyone", "-o", str(again)])
    assert json.loads((again / "data.json").read_text()) == data  # stable ids


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_table_applies_corrections(tmp_path, fmt):
    out = _results(tmp_path)
    LabelLog(out).append(str(tmp_path / "images/x/b.png"), "label", "owl", row=2)
    target = tmp_path / f"labels.{fmt}"
    result = runner.invoke(app, ["export", str(out), "--to", fmt, "-o", str(target)])
    assert result.exit_code == 0, result.output
    if fmt == "csv":
        rows = list(csv.DictReader(target.open()))
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(str(target)).to_pylist()
    assert [r["label"] for r in rows[:4]] == ["cat", "dog", "owl", "owl"]
    assert str(rows[2]["corrected"]) == "True" and rows[2]["predicted"] == "cat"
    bad = runner.invoke(app, ["export", str(out), "--to", "cvat", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "labelstudio, fiftyone, csv, parquet" in bad.output
