"""The report reads at a glance (issue 17.8): recall chart with an axis and each method's value, 'why' as
descriptor/score tables, right decisions in the gallery too, the image counts as a formatted row, the best method
explained."""

from pathlib import Path

import pytest

from vlmcls import Classifier
from vlmcls.report.evaluate import evaluate
from vlmcls.methods import MethodOptions
from vlmcls.report.page import select_gallery, write_report

DEMO = Path(__file__).resolve().parents[1] / "vlmcls" / "data" / "demo"


@pytest.fixture(scope="module")
def demo_page(tmp_path_factory):
    clf = Classifier(f"local-dir:{DEMO.parent / 'demo_model'}")
    report = evaluate(clf, DEMO / "images", str(DEMO / "classes.txt"), ["name", "cbd"],
                      MethodOptions(descriptors=str(DEMO / "descriptors.json"), explain=True))
    path = write_report(report, tmp_path_factory.mktemp("report") / "report.html")
    return report, path.read_text(encoding="utf-8")


def test_recall_chart_has_an_axis_and_a_value_per_method(demo_page):
    _, page = demo_page
    chart = page.split('aria-label="per-class recall"')[1].split("</svg>")[0]
    for tick in ("0%", "50%", "100%"):
        assert f">{tick}</text>" in chart
    assert chart.count('class="val"') >= 2 * 12  # two methods × twelve classes, zeros included
    assert "each method's recall %" in page


def test_why_sections_are_descriptor_score_tables(demo_page):
    _, page = demo_page
    why = page.split("<summary>why (cbd)</summary>")[1].split("</details>")[0]
    assert "<th>descriptor</th><th>score</th>" in why
    assert "runner up" in why and "<dl>" not in why


def test_gallery_shows_right_decisions_too_marked(demo_page):
    report, page = demo_page
    results = report.to_dict()
    rows = select_gallery(results, 8)
    right = [r for r in rows if r["label"] == r["true_label"]]
    assert len(right) >= 2 and len(rows) == 8
    assert 'class="card correct"' in page and 'class="card wrong"' in page


def test_image_counts_are_a_formatted_row_and_the_best_method_is_explained(demo_page):
    _, page = demo_page
    assert "encode_seconds:" not in page and "images —" not in page
    assert "<td>images:</td>" in page
    assert "has the best top-1" in page
    assert "th{background:#f9fafb;white-space:nowrap" in page  # headers never break mid-word
