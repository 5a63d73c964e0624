"""The open world in the HTML report and in eval (issue 25, the part after the refiner): an unknown column and a
gallery of rejected images, a reliability diagram per method, multi-label truth, a temperature fitted on support."""

from __future__ import annotations

import re

from vlmcls.report.page import render_report, select_rejected

EVIL = '<script>alert("x")</script>'


def _row(n, truth, label, best, unknown_score=None):
    row = {"id": f"img{n}", "path": f"/data/{truth}/{n}.png", "label": label, "true_label": truth, "error": None,
           "top_k": [{"label": best, "prob": 0.6}, {"label": "cat", "prob": 0.3}]}
    if unknown_score is not None:
        row["unknown_score"] = unknown_score
    return row


def _results(rows, reliability=True):
    bins = [{"low": i / 15, "high": (i + 1) / 15, "count": 2 if i in (7, 12) else 0,
             "confidence": (i + 0.5) / 15 if i in (7, 12) else 0.0, "accuracy": 0.5 if i == 7 else 1.0}
            for i in range(15)]
    labels = ["cat", "dog", EVIL]
    metrics = {"labels": labels, "count": 4, "top1": 0.75, "top_k": 1.0, "k": 2, "mean_recall": 0.75,
               "per_class": [{"name": n, "precision": 1.0, "recall": 1.0, "support": 1, "predicted": 1} for n in labels],
               "confusion": [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "worst_confusions": [], "unknown_labels": {}}
    run = {"method": "cbd", "status": "ok", "error": None, "llm_calls": 0, "llm_tokens": 0, "seconds": 0.1,
           "expected_squared_distance": None, "ece": 0.123, "reliability": bins if reliability else [],
           "metrics": metrics, "info": {}, "warnings": [], "predictions": rows}
    return {"format": "vlmcls-eval/1", "data": "d", "model": "m", "classes": labels, "top_k": 2,
            "images": {}, "best_method": "cbd", "methods": [run, dict(run, method=f"templates{EVIL}")], "errors": []}


def _open_world_rows():
    return [_row(0, "cat", "cat", "cat", 0.9), _row(1, "dog", "unknown", "dog", 0.2),
            _row(2, EVIL, EVIL, EVIL, 0.8), _row(3, "(none of these)", "unknown", "cat", 0.05),
            _row(4, "(none of these)", "dog", "dog", 0.7)]


def test_the_confusion_matrix_gets_an_unknown_column_when_rows_carry_unknown_decisions():
    page = render_report(_results(_open_world_rows()))
    matrix = page.split("<h2>Confusion matrix</h2>")[1].split("<h2>")[0]
    assert ">unknown</text>" in matrix and ">(none of these)</text>" in matrix
    # the none-of-these image rejected counts in the unknown column, the one given 'dog' in dog's
    assert "true (none of these) → predicted unknown: 1 (50.0% of (none of these))" in matrix
    assert "true (none of these) → predicted dog: 1 (50.0% of (none of these))" in matrix
    assert "true dog → predicted unknown: 1 (100.0% of dog)" in matrix
    assert ">unknown</text>" not in render_report(_results([_row(0, "cat", "cat", "cat")])).split(
        "<h2>Confusion matrix</h2>")[1].split("<h2>")[0]  # no unknown decisions: the square matrix as before


def test_the_rejected_images_get_a_gallery_of_their_own_surest_first():
    results = _results(_open_world_rows())
    assert [r["id"] for r in select_rejected(results)] == ["img3", "img1"]
    page = render_report(results, {"img3": "data:image/jpeg;base64,AAAA"})
    rejected = page.split("<h2>Rejected as none of the classes (2)</h2>")[1].split("<h2>")[0]
    assert rejected.index("/3.png") < rejected.index("/1.png")
    assert 'class="card correct"' in rejected and 'class="card wrong"' in rejected  # (none of these) ✓, dog ✗
    assert "best class: dog" in rejected and "unknown score 0.050" in rejected
    assert "Rejected as none" not in render_report(_results([_row(0, "cat", "cat", "cat")]))


def test_each_method_gets_a_reliability_diagram_in_inline_svg_and_every_string_is_escaped():
    page = render_report(_results(_open_world_rows()))
    calibration = page.split("<h2>Calibration</h2>")[1].split("<h2>")[0]
    assert calibration.count('aria-label="reliability diagram"') == 2
    assert "ECE 0.123" in calibration and "2 images, mean confidence" in calibration
    assert "<script" not in page.lower() and EVIL not in page and "&lt;script&gt;" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing loads from outside the page
    assert "<h2>Calibration</h2>" not in render_report(_results(_open_world_rows(), reliability=False))


# -- eval with multi-label truth ------------------------------------------------------------------------------

import json  # noqa: E402

import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from vlmcls.cli import app  # noqa: E402
from vlmcls.demo import DEMO_CLASSES_FILE, DEMO_DATA_DIR, DEMO_DESCRIPTORS_FILE, DEMO_MODEL_ID  # noqa: E402
from vlmcls.errors import ConfigError  # noqa: E402
from vlmcls.report.multilabel import read_truth_file  # noqa: E402

runner = CliRunner()
TWO = DEMO_DATA_DIR / "two_objects"
TRUTH = DEMO_DATA_DIR / "two_objects.jsonl"


def _eval(tmp_path, *extra):
    return runner.invoke(app, ["eval", str(TWO), "--classes", str(DEMO_CLASSES_FILE), "-m", DEMO_MODEL_ID,
                               "--methods", "cbd", "--descriptors", str(DEMO_DESCRIPTORS_FILE),
                               "--cache", str(tmp_path / "cache"), *extra])


def test_eval_with_multi_label_truth_reports_map_and_per_class_f1(tmp_path):
    out = tmp_path / "r.json"
    result = _eval(tmp_path, "--truth", str(TRUTH), "--multi-label", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "mAP" in result.output and "per-class F1" in result.output
    run = json.loads(out.read_text())["methods"][0]
    m = run["multi_label"]
    assert m["images"] == 24 and m["labels_from"] == "labels" and m["labels_per_image"] > 1
    assert 0.5 < m["map"] <= 1 and m["micro_f1"] == pytest.approx(0.5, abs=0.01)  # bench/open_world.py's F1
    f1 = {s["name"]: s["f1"] for s in m["per_class"] if s["support"]}
    assert set(f1) == {"trelloq", "plovix", "drumelt", "yantrok", "gleebis"}
    # a top-1 that is either of an image's two objects counts as right
    assert run["metrics"]["top1"] == pytest.approx(0.75)


def test_a_truth_file_naming_classes_not_in_the_list_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "truth.jsonl"
    bad.write_text(json.dumps({"path": str(TWO / "trelloq+yantrok-0.png"), "labels": ["trelloq", "wombat"]}) + "\n")
    result = _eval(tmp_path, "--truth", str(bad), "--multi-label")
    assert result.exit_code == 2
    assert "'wombat' (1)" in result.output and "not among the 12 classes" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_a_csv_truth_file_reads_labels_separated_by_semicolons_from_its_own_folder(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    csv_file = tmp_path / "t.csv"
    csv_file.write_text("path,labels\na.png,cat; dog\na.png,bird\n")
    assert read_truth_file(csv_file, ["cat", "dog", "bird"]) == {(tmp_path / "a.png").resolve(): ["cat", "dog", "bird"]}
    with pytest.raises(ConfigError, match="'path' and 'labels'"):
        (tmp_path / "u.csv").write_text("file,label\na.png,cat\n")
        read_truth_file(tmp_path / "u.csv", ["cat"])


# -- a temperature fitted on support images -------------------------------------------------------------------

import torch  # noqa: E402

from vlmcls import Classifier  # noqa: E402
from vlmcls.adapters.calibration import fit_temperature  # noqa: E402
from vlmcls.demo.world import DEMO_CLASSES  # noqa: E402
from vlmcls.methods import MethodOptions  # noqa: E402


def test_fit_temperature_recovers_the_temperature_that_made_the_labels():
    generator = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(4000, 6, generator=generator, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(logits / 2.5, dim=1), 1, generator=generator)[:, 0]
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.08)
    with pytest.raises(ConfigError, match="at least two"):
        fit_temperature(logits[:1], labels[:1])


@pytest.fixture(scope="module")
def support_world(tmp_path_factory):
    from vlmcls.demo.render import render_dataset

    support = tmp_path_factory.mktemp("support")
    render_dataset(support, DEMO_CLASSES, 3, seed=7)  # not the images classified: another seed
    clf = Classifier(DEMO_MODEL_ID, cache_dir=tmp_path_factory.mktemp("cache"), batch_size=64)
    return clf, support


def _tip(support, calibrate):
    return MethodOptions(methods={"cbd": {"descriptors": str(DEMO_DESCRIPTORS_FILE)},
                                  "tip": {"support": str(support), "calibrate": calibrate}})


def test_a_temperature_from_the_support_images_changes_the_probabilities_never_the_labels(support_world):
    clf, support = support_world
    feats = clf.encode_images(DEMO_DATA_DIR / "images")
    plain = clf.predict(feats, list(DEMO_CLASSES), "cbd+tip", _tip(support, False))
    calibrated = clf.predict(feats, list(DEMO_CLASSES), "cbd+tip", _tip(support, True))
    temperature = calibrated.stats["calibration_temperature"]
    assert temperature != pytest.approx(1.0, abs=1e-3)
    assert [p.label for p in calibrated.ok] == [p.label for p in plain.ok]
    expected = torch.softmax(torch.as_tensor(plain.logits, dtype=torch.float64) / temperature, dim=1)
    assert torch.as_tensor(calibrated.probs, dtype=torch.float64) == pytest.approx(expected, abs=1e-3)
    # fitted on the support images alone: other images to classify give the same temperature
    others = clf.predict(clf.encode_images(DEMO_DATA_DIR / "two_objects"), list(DEMO_CLASSES), "cbd+tip",
                         _tip(support, True))
    assert others.stats["calibration_temperature"] == temperature
