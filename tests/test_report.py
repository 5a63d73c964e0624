"""The HTML report: self-contained, every outside string inert, the error rows and the gallery in it."""

import dataclasses
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import torch

import imagegen
from vlmcls import Classifier
from vlmcls.cli.classify_cmd import write_classify_report
from vlmcls.report.evaluate import evaluate
from vlmcls.methods import METHODS
from fake_methods import ScriptedHead, scripted_head
from vlmcls.report.page import render_report, select_gallery, write_report

SCRIPT_CLASS = "<script>alert(1)</script>"
IMG_DESCRIPTOR = '<img src=x onerror="alert(2)">'
ATTR_BREAKER = '"><svg onload=alert(3)>'

# Everything the report itself writes; an injected tag would show up as something else.
ALLOWED_TAGS = {"html", "head", "meta", "link", "title", "style", "body", "h1", "h2", "p", "table", "thead", "tbody",
                "tr", "th", "td", "span", "div", "img", "ol", "ul", "li", "dl", "dt", "dd", "details", "summary",
                "svg", "rect", "text"}


class _TagAudit(HTMLParser):
    """Collects every tag and every attribute a browser would see."""

    def __init__(self):
        super().__init__()
        self.tags, self.attrs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)


def _audit(page: str) -> _TagAudit:
    audit = _TagAudit()
    audit.feed(page)
    return audit


@pytest.fixture
def hostile_method(monkeypatch):
    """Scores like 'name' but explains every decision with an HTML-laden descriptor and warns with one."""

    name_head = METHODS["name"]

    def prepare(context, config, upstream, gather, report):
        head = name_head.prepare(context, config, upstream, gather, report)
        report.warnings.append({"item": context.class_names[0], "message": ATTR_BREAKER})
        return ScriptedHead(lambda feats: head.apply(feats, None, False).logits,
                            lambda feats: [{"descriptors": [{"descriptor": IMG_DESCRIPTOR, "similarity": 0.31}]}] * feats.shape[0])

    monkeypatch.setitem(METHODS, "describer", dataclasses.replace(name_head, name="describer", prepare=prepare))


@pytest.fixture
def hostile_report(tiny_open_clip, tmp_path, hostile_method):
    """An eval report over a dataset whose class name is a script tag."""
    colors = [(200, 0, 0), (0, 0, 200), (210, 10, 10), (10, 10, 220)]
    dataset = imagegen.make_hf_dataset(colors, [0, 1, 0, 1], [SCRIPT_CLASS, "dog"])
    dataset.save_to_disk(str(tmp_path / "ds"))
    report = evaluate(Classifier(f"local-dir:{tiny_open_clip}"), tmp_path / "ds", [SCRIPT_CLASS, "dog"],
                      ["name", "describer"])
    return write_report(report, tmp_path / "report.html")


def test_class_names_and_descriptors_with_html_are_rendered_inert(hostile_report):
    page = hostile_report.read_text(encoding="utf-8")
    assert "<script" not in page.lower()  # the report writes no script of its own, so any would be injected
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the class name is shown, as text
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in page  # the descriptor behind a decision
    assert "&quot;&gt;&lt;svg onload=alert(3)&gt;" in page  # a warning trying to break out of an attribute
    audit = _audit(page)
    assert set(audit.tags) <= ALLOWED_TAGS
    assert not [name for name, _ in audit.attrs if name.startswith("on")]
    assert audit.tags.count("img") == 4  # one thumbnail per image (dataset rows too), nothing injected


def test_report_loads_nothing_from_outside(hostile_report):
    page = hostile_report.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    sources = [value for name, value in _audit(page).attrs if name in ("src", "href")]
    assert sources and all(value.startswith("data:") for value in sources)
    assert "default-src 'none'" in page  # and the browser is told to block anything else


def test_error_rows_and_gallery_order(tiny_open_clip, tmp_path, monkeypatch):
    root = tmp_path / "photos"
    imagegen.make_class_tree(root, {"cat": [(200, 30, 30), (190, 20, 20)], "dog": [(20, 30, 200)]})
    imagegen.write_empty(root / "dog" / f"{ATTR_BREAKER}.jpg")
    imagegen.write_truncated_jpeg(root / "cat" / "cut.jpg")

    def always_dog(image_feats, class_names):
        logits = torch.zeros(image_feats.shape[0], len(class_names))  # [N, C]
        logits[:, class_names.index("dog")] = 5.0
        return logits

    monkeypatch.setitem(METHODS, "always_dog", scripted_head("always_dog", always_dog))
    report = evaluate(Classifier(f"local-dir:{tiny_open_clip}"), root, ["cat", "dog"], ["always_dog"])
    page = write_report(report, tmp_path / "r.html", gallery_limit=2).read_text(encoding="utf-8")
    errors = page[page.index("Error rows (2)"):]
    assert "empty file" in errors and "truncated" in errors and "cut.jpg" in errors
    assert "&quot;&gt;&lt;svg onload=alert(3)&gt;.jpg" in errors and "<svg onload" not in page
    gallery = page[page.index("<h2>Gallery"):page.index("Error rows")]
    assert gallery.count('class="card') == 2 and gallery.count('class="card wrong"') == 2  # the two cats first
    assert "Confusion matrix" in page and "Worst confusions" in page


def test_a_saved_results_file_renders_the_same_report(tiny_open_clip, tmp_path, hostile_method):
    root = tmp_path / "photos"
    imagegen.make_class_tree(root, {"cat": [(200, 30, 30)], "dog": [(20, 30, 200)]})
    report = evaluate(Classifier(f"local-dir:{tiny_open_clip}"), root, ["cat", "dog"], ["name", "describer"])
    saved = json.loads(report.save_json(tmp_path / "results.json").read_text(encoding="utf-8"))
    assert render_report(saved) == render_report(report.to_dict())
    assert "describer" in render_report(saved) and "top-1 %" in render_report(saved)


def test_classify_report_without_labels(tiny_open_clip, tmp_path):
    root = tmp_path / "loose"
    for i, color in enumerate([(250, 0, 0), (0, 250, 0), (0, 0, 250)]):
        imagegen.write_solid(root / f"{i}.png", color)
    imagegen.write_text_as_image(root / "notes.png")
    result = Classifier(f"local-dir:{tiny_open_clip}").classify(root, ["red", "green", "blue"], top_k=2)
    page = write_classify_report(result, tmp_path / "c.html", images=root, quiet=True).read_text(encoding="utf-8")
    assert "Confusion matrix" not in page and "top-1 %" not in page  # no labels, no accuracy
    assert "Predicted classes" in page and "not an image" in page and page.count('class="card') == 3
    card_paths = re.findall(r'<div class="name" title="([^"]*)"', page)
    by_confidence = sorted(result.ok, key=lambda p: p.top_k[0][1])
    assert card_paths == [p.path for p in by_confidence]  # least confident first: the ones to check by eye


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_opens_in_headless_chromium_without_console_messages(hostile_report):
    run = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         "--dump-dom", hostile_report.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert "Gallery" in run.stdout and "Confusion matrix" in run.stdout
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line]  # CSP violations land here too
    assert console == []


def test_gallery_takes_one_image_of_each_confusion_in_turn():
    def row(n, true, label, prob):
        return {"id": f"i{n}", "path": f"{true}/{n}.png", "label": label, "true_label": true,
                "top_k": [{"label": label, "prob": prob}], "error": None}

    rows = [row(0, "a", "b", 0.5), row(1, "a", "b", 0.9), row(2, "a", "b", 0.7), row(3, "c", "d", 0.6),
            row(4, "c", "c", 0.99), row(5, "d", "d", 0.4)]
    metrics = {"worst_confusions": [{"true": "a", "predicted": "b", "count": 3}, {"true": "c", "predicted": "d", "count": 1}]}
    results = {"best_method": "m", "methods": [{"method": "m", "status": "ok", "metrics": metrics, "predictions": rows}]}
    assert [r["id"] for r in select_gallery(results, 5)] == ["i1", "i3", "i2", "i0", "i5"]
