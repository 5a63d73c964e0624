"""What runs write: strict JSON only, non-UTF-8 file names kept losslessly, NaN features as error rows, URL
credentials in no output. End to end through the CLI and the API on real files and tiny real models."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
from typer.testing import CliRunner

import imagegen
from llm_server import llm_server  # noqa: F401  (fixture)
from vlmcls.api import Classifier
from vlmcls.cli import app
from vlmcls.errors import VlmclsError
from vlmcls.encode.models import load_model
from vlmcls.output import write_json, write_rows

runner = CliRunner()
LATIN1_NAME = b"caf\xe9 cr\xe8me.png"  # a valid Linux file name that is not UTF-8


def _strict_json_lines(text: str) -> list[dict]:
    def refuse(constant: str):
        raise AssertionError(f"non-standard JSON constant {constant}")

    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


@pytest.fixture
def latin1_folder(tmp_path):
    root = tmp_path / "photos"
    imagegen.make_class_tree(root, {"a": [(200, 30, 30)], "b": [(30, 30, 200)]})
    os.rename(root / "a" / "0.png", os.path.join(os.fsencode(root / "a"), LATIN1_NAME))
    return root


@pytest.mark.parametrize("cache", ["cache", "no-cache"])
def test_a_non_utf8_file_name_is_classified_and_written_losslessly(tiny_open_clip, latin1_folder, tmp_path, cache):
    out = tmp_path / "pred.jsonl"
    base = ["classify", str(latin1_folder), "--classes", "red,blue", "--model", f"local-dir:{tiny_open_clip}"]
    if cache == "no-cache":
        base += ["--cache", "off"]
    result = runner.invoke(app, base + ["-o", str(out), "--report", str(tmp_path / "report.html")],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = _strict_json_lines(out.read_text(encoding="utf-8"))  # the file is valid UTF-8
    assert len(rows) == 2 and all(r["error"] is None for r in rows)
    names = {os.path.basename(os.fsencode(r["path"])) for r in rows}
    assert LATIN1_NAME in names  # os.fsencode of the written path gives back the exact bytes on disk
    assert "\\udce9" in out.read_text(encoding="utf-8")  # as a JSON escape, documented in the README

    csv_out = tmp_path / "pred.csv"
    again = runner.invoke(app, base + ["-o", str(csv_out)], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert LATIN1_NAME in csv_out.read_bytes()  # CSV has no escapes: the name's own bytes

    table = runner.invoke(app, base, catch_exceptions=False)  # printed to a strict UTF-8 stdout, not written
    assert table.exit_code == 0, table.output  # (a strict stdout raised UnicodeEncodeError on the name)
    assert "predictions" in table.output


def _nan_for_bright_images(model):
    """The tiny model, but an image whose pixels are mostly bright gets NaN features (as fp16 overflow would)."""
    encode = model.encode_images

    def encode_images(pixels):
        feats = encode(pixels)  # [B, D]
        # [B]; pixels come as uint8 (white 255, dark ~20) or normalised (white ~1.9, dark ~-1.4)
        bright = pixels.float().flatten(1).mean(dim=1) > (128 if pixels.dtype == torch.uint8 else 1.0)
        return torch.where(bright[:, None], torch.full_like(feats, torch.nan), feats)

    model.encode_images = encode_images
    return model


def test_nan_features_make_an_error_row_and_valid_json(tiny_open_clip, tmp_path):
    root = tmp_path / "photos"
    imagegen.make_class_tree(root, {"x": [(255, 255, 255), (20, 20, 20), (10, 40, 10)]})
    model = _nan_for_bright_images(load_model(f"local-dir:{tiny_open_clip}"))
    clf = Classifier(model, cache_dir=tmp_path / "cache")
    result = clf.classify(root, ["red", "blue", "green"])
    errors = {os.path.basename(p.path): p.error for p in result.errors}
    assert list(errors) == ["0.png"] and "NaN or infinite features" in errors["0.png"]
    assert len(result.ok) == 2 and result.stats["errors"] == 1
    assert all(0.0 <= prob <= 1.0 for p in result.ok for _, prob in p.top_k)
    out = write_rows(result.rows(), tmp_path / "pred.jsonl")
    rows = _strict_json_lines(out.read_text())
    assert [r["error"] is not None for r in rows] == [True, False, False]

    again = clf.classify(root, ["red", "blue", "green"])  # the NaN feature was not cached: computed (and refused) again
    assert again.stats["encoded"] == 1 and len(again.errors) == 1


def test_json_writers_refuse_non_finite_numbers_and_leave_no_file(tmp_path):
    for path, write in ((tmp_path / "p.jsonl", lambda p: write_rows([{"prob": 0.5}, {"prob": float("nan")}], p)),
                        (tmp_path / "p.json", lambda p: write_rows([{"prob": float("inf")}], p)),
                        (tmp_path / "d.json", lambda p: write_json(p, {"x": [float("-inf")]}))):
        with pytest.raises(VlmclsError, match="NaN or infinite"):
            write(path)
        assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary files either


def test_url_credentials_reach_no_output(tiny_open_clip, tmp_path, llm_server):
    password = "Pw-Xy7-UrlSecretValue"
    root = tmp_path / "photos"
    imagegen.make_class_tree(root, {"zorblax": [(220, 20, 20)], "flimber": [(30, 200, 40)]})
    llm_server.fault_for("quintor", ["500"] * 4)  # one class fails: its warning row names the endpoint
    url = llm_server.base_url.replace("http://", f"http://alice:{password}@")
    out, report = tmp_path / "out.jsonl", tmp_path / "report.html"
    args = ["-vv", "classify", str(root), "--classes", "zorblax,quintor,flimber", "--model",
            f"local-dir:{tiny_open_clip}", "--method", "cbd", "--llm", f"base_url={url}", "--llm", "model=fake-model",
            "--llm", "retries=0", "-o", str(out), "--report", str(report)]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 1, result.output  # the failed class is a warning row
    warnings_file = tmp_path / "out.warnings.jsonl"
    warnings = _strict_json_lines(warnings_file.read_text())
    assert any("http://***@127.0.0.1" in w["message"] for w in warnings)
    assert "HTTP Request" in result.output  # the HTTP library's own log lines were shown (-vv) ...
    for text in (result.output, warnings_file.read_text(), out.read_text(), report.read_text()):
        assert password not in text and "alice" not in text  # ... and none carries the credentials
    assert re.search(r"http://(\*\*\*@)?127\.0\.0\.1", result.output)


def test_jsonl_rows_stream_from_a_generator_and_a_failure_keeps_the_old_file(tmp_path):
    rows = [{"path": f"/p/{i}.png", "label": "cat", "top_k": [{"label": "cat", "prob": 0.5}], "error": None}
            for i in range(2000)]
    rows.append({"path": "/p/" + os.fsdecode(b"caf\xe9.png"), "label": "ünï", "top_k": [], "error": None})
    listed = write_rows(rows, tmp_path / "list.jsonl").read_bytes()
    streamed = write_rows((dict(r) for r in rows), tmp_path / "gen.jsonl").read_bytes()
    assert streamed == listed
    assert [json.loads(line) for line in listed.decode("utf-8").splitlines()][-1]["path"].endswith("\udce9.png")

    def failing():
        yield from rows[:100]
        raise VlmclsError("stopped half way")

    with pytest.raises(VlmclsError, match="half way"):
        write_rows(failing(), tmp_path / "gen.jsonl")
    assert (tmp_path / "gen.jsonl").read_bytes() == listed  # the earlier file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen.jsonl", "list.jsonl"]


def test_prediction_lines_are_the_text_of_their_row_dicts():
    """JSONL rows are written straight from each prediction: the same bytes as encoding its to_dict()."""
    from vlmcls.output import json_text, prediction_line
    from vlmcls.results import Prediction

    odd = "caf\u00e9/\udcff-name \"quoted\" \\ tab\t.jpg"  # non-ASCII, a surrogate escape, quotes, a backslash
    predictions = [
        Prediction("a.jpg", "a.jpg", "cat", [("cat", 0.9123456789), ("dög", 1e-07), ("x", 1.0)]),
        Prediction(odd, odd, "dög", [("dög", 0.5)], None, "cat"),
        Prediction("row/3", None, None, [], "cannot decode: \udce9 broken", "dog"),
        Prediction("e.jpg", "e.jpg", "cat", [("cat", 0.7)], explanation={"descriptors": {"top": "whiskers"}}),
    ]
    for pred in predictions:
        assert prediction_line(pred) == json_text(pred.to_dict()) + "\n"
    with pytest.raises(VlmclsError, match="NaN"):
        prediction_line(Prediction("n.jpg", "n.jpg", "cat", [("cat", float("nan"))]))
