"""The report and --explain read right: no overprinted chart labels, accuracy in a labelled classify report, and the
why of a label compares it with its runner-up, FuDD's captions shown with their scores."""

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmcls.cli import app
from vlmcls.demo import DEMO_CLASSES_FILE, DEMO_DATA_DIR, DEMO_DESCRIPTORS_FILE, DEMO_MODEL_ID
from vlmcls.report.page import render_report

runner = CliRunner()


def _results(n_classes: int, methods: list[str]) -> dict:
    names = [f"class {i:03d} with a long name" for i in range(n_classes)]
    runs = []
    for m, method in enumerate(methods):
        per = [{"name": name, "recall": [0.0, 1.0, 0.35, 0.05][(c + m) % 4], "precision": 0.5, "support": 10,
                "predicted": 10} for c, name in enumerate(names)]
        confusion = [[10 if i == j else 0 for j in range(n_classes)] for i in range(n_classes)]
        runs.append({"method": method, "status": "ok", "metrics": {
            "per_class": per, "top1": 0.5, "top_k": 0.9, "k": 5, "mean_recall": 0.5, "labels": names,
            "confusion": confusion, "worst_confusions": []}, "predictions": []})
    return {"methods": runs, "best_method": methods[-1], "classes": names}


def _text_boxes(svg: str) -> list[tuple[float, float, float, str]]:
    """(x_left, x_right, y, text) of every <text> in the chart, its width estimated at 6.5 px a character."""
    boxes = []
    for attrs, body in re.findall(r"<text ([^>]*)>(.*?)</text>", svg):
        text = re.sub(r"<title>.*?</title>", "", body)
        x, y = float(re.search(r'x="([\d.]+)"', attrs).group(1)), float(re.search(r'y="([\d.]+)"', attrs).group(1))
        width = 6.5 * len(text)
        anchor = re.search(r'text-anchor="(\w+)"', attrs)
        left = x - width if anchor and anchor.group(1) == "end" else x - width / 2 if anchor and anchor.group(
            1) == "middle" else x
        boxes.append((left, left + width, y, text))
    return boxes


@pytest.mark.parametrize("n_classes, methods", [(12, ["templates", "cbd", "cupl", "cbd+fudd"]), (100, ["cbd"]),
                                                (100, ["templates", "cbd", "cupl", "cbd+fudd"])])
def test_recall_chart_labels_never_overlap(n_classes, methods):
    page = render_report(_results(n_classes, methods))
    svg = page.split('aria-label="per-class recall"')[1].split("</svg>")[0]
    boxes = _text_boxes(svg)
    assert sum(1 for b in boxes if b[3].isdigit()) == n_classes * len(methods)  # every value, zeros included
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            same_line = abs(a[2] - b[2]) < 11  # 11 px text: closer baselines would overprint
            assert not (same_line and a[0] < b[1] - 0.5 and b[0] < a[1] - 0.5), (a, b)
    bars = [(float(x), float(y), float(w)) for x, y, w in re.findall(
        r'<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="10" fill="#\w+"><title>', svg)]
    assert len(bars) == n_classes * len(methods)
    values = [b for b in boxes if b[3].isdigit()]
    for x, y, width in bars:  # no value is printed over a bar of its row
        row_values = [v for v in values if y <= v[2] <= y + 10]
        assert row_values and all(v[1] <= x or v[0] >= x + width for v in row_values), (x, y, width, row_values)


@pytest.fixture(scope="module")
def fudd_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fudd_report")
    out, report = root / "out.jsonl", root / "report.html"
    args = ["classify", str(DEMO_DATA_DIR / "images"), "--classes", str(DEMO_CLASSES_FILE), "--method", "fudd",
            "--descriptors", str(DEMO_DESCRIPTORS_FILE), "--pairs", str(DEMO_DATA_DIR / "pairs.json"),
            "--model", DEMO_MODEL_ID, "--explain", "-o", str(out), "--report", str(report)]
    result = runner.invoke(app, args, catch_exceptions=False, terminal_width=120)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    args = [a for a in args if a not in ("-o", str(out))]  # the terminal --explain: no output file
    terminal = runner.invoke(app, args, catch_exceptions=False, terminal_width=120).output
    return rows, report.read_text(encoding="utf-8"), terminal


def test_a_labelled_classify_report_shows_accuracy_and_confusions(fudd_run):
    _, page, _ = fudd_run
    assert "<h1>vlmcls classification report" in page
    assert "<th>top-1 %</th>" in page and "100.00" in page
    assert "<h2>Worst confusions</h2>" in page and "<h2>Per-class recall</h2>" in page


def test_the_why_compares_the_final_label_with_its_runner_up_and_shows_the_captions(fudd_run):
    rows, page, terminal = fudd_run
    for row in rows:
        descriptors = row["explanation"]["descriptors"]
        assert descriptors["top"]["class"] == row["label"]
        assert descriptors["runner_up"]["class"] == row["top_k"][1]["label"]
    moved = [r for r in rows if "differential" in r["explanation"]]
    assert len(moved) == 20  # as the README says
    for row in moved:
        move = row["explanation"]["differential"]
        assert move["moved_to"] == row["label"]
        for item in move["because"]:
            assert row["label"] in item["caption"] and move["moved_from"] in item["other_caption"]
            assert item["margin"] == pytest.approx(item["score"] - item["other_score"], abs=2e-4)
    quintor = next(r for r in moved if r["label"] == "quintor")
    caption = quintor["explanation"]["differential"]["because"][0]["caption"]
    why = page.split("<summary>why (fudd)</summary>")[1].split("</details>")[0]
    assert "descriptors — label:" in page and "differential caption" in page
    assert caption in page and "pattern | 0.1" not in page
    assert "descriptors — label:" in why
    flat = " ".join(terminal.split())
    assert f'quintor: ' in flat and f'"{caption}"' in flat and "(runner-up)" in flat and "(label)" in flat
