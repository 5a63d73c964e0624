"""One result table: predictions stay columns from scoring to writing (JSONL, CSV, JSON, Parquet), rows are made
only when asked for, and every writer gives the same rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmcls.cli import app

DEMO = Path(__file__).resolve().parents[1] / "vlmcls" / "data" / "demo"
DEMO_MODEL = f"local-dir:{DEMO.parent / 'demo_model'}"


def _classify(folder: Path, out: Path, *extra: str):
    return CliRunner().invoke(app, ["classify", str(folder), "--classes", str(DEMO / "classes.txt"), "--model",
                                    DEMO_MODEL, "--method", "fudd", "--descriptors", str(DEMO / "descriptors.json"),
                                    "--pairs", str(DEMO / "pairs.json"), "-o", str(out), "-q", *extra])


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """Demo images in class folders plus a broken file and an empty one: classified rows and error rows mixed."""
    import shutil

    root = tmp_path / "images"
    for name in ("bexapod", "skarnel", "quintor"):
        shutil.copytree(DEMO / "images" / name, root / name)
    (root / "bexapod" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "empty.jpg").write_bytes(b"")
    return root


def test_parquet_jsonl_csv_and_json_hold_the_same_rows(mixed_folder, tmp_path):
    outputs = {suffix: tmp_path / f"p{suffix}" for suffix in (".jsonl", ".parquet", ".csv", ".json")}
    for suffix, out in outputs.items():
        result = _classify(mixed_folder, out, "--explain")
        assert result.exit_code == 1, result.output  # two error rows
    jsonl = [json.loads(line) for line in outputs[".jsonl"].read_text().splitlines()]
    assert len(jsonl) == 14 and sum(r["error"] is not None for r in jsonl) == 2
    import pyarrow.parquet as pq

    table = pq.read_table(outputs[".parquet"])
    assert table.column_names == ["path", "label", "top_k", "error", "true_label", "index", "explanation"]
    parquet = table.to_pylist()
    assert [r["index"] for r in parquet] == list(range(14))
    for a, b in zip(jsonl, parquet):
        assert (a["path"], a["label"], a["error"], a.get("true_label")) == (b["path"], b["label"], b["error"],
                                                                           b["true_label"])
        assert a["top_k"] == b["top_k"]  # same classes, same rounded probabilities
        assert a.get("explanation") == (json.loads(b["explanation"]) if b["explanation"] else None)
    rows = list(csv.DictReader(outputs[".csv"].open()))
    assert [r["path"] for r in rows] == [r["path"] for r in jsonl] and [r["label"] or None for r in rows] == [
        r["label"] for r in jsonl]
    as_json = json.loads(outputs[".json"].read_text())
    assert [r["label"] for r in as_json] == [r["label"] for r in jsonl]


def test_a_run_writes_its_rows_without_making_row_objects(tmp_path):
    """Scoring fills the table's columns; the JSONL writer reads them; Prediction rows exist only when asked for."""
    from vlmcls import Classifier
    from vlmcls.output import write_result

    result = Classifier(DEMO_MODEL).classify(DEMO / "images", DEMO / "classes.txt", method="cbd",
                                              options={"cbd": {"descriptors": DEMO / "descriptors.json"}}, top_k=3)
    table = result.table
    assert table.top_index.shape == (48, 3) and table.top_prob.shape == (48, 3)
    write_result(result, tmp_path / "p.jsonl")
    assert result._predictions is None  # nothing made a row object
    first = result.predictions[0]  # the lazy view
    assert first.label == table.labels[0] and first.top_k[0][0] == table.class_names[table.top_index[0, 0]]
    line = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
    assert line == first.to_dict() | {"top_k": [{"label": c, "prob": round(p, 6)} for c, p in first.top_k]}


def test_a_parquet_output_is_checked_before_the_model_and_replaced_whole(mixed_folder, tmp_path):
    out = tmp_path / "p.parquet"
    out.write_bytes(b"old")
    bad = CliRunner().invoke(app, ["classify", str(mixed_folder), "--classes", "a,b", "-o", str(tmp_path / "p.parq")])
    assert bad.exit_code == 2 and ".parquet" in bad.output
    result = _classify(mixed_folder, out)
    assert result.exit_code == 1
    import pyarrow.parquet as pq

    assert pq.read_table(out).num_rows == 14
    assert not list(tmp_path.glob(".p.parquet.*"))  # no temporary file left
