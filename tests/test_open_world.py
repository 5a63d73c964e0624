"""The open world (issue 25): "none of these", two objects per picture, calibration, on the demo world's real model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llm_server import FakeLLMServer
from vlmcls import Classifier
from vlmcls.adapters.metrics import expected_calibration_error
from vlmcls.adapters.open_set import auroc, fpr_at_tpr, recall_threshold
from vlmcls.cli import app
from vlmcls.demo import DEMO_CLASSES_FILE, DEMO_DATA_DIR, DEMO_DESCRIPTORS_FILE, DEMO_MODEL_ID
from vlmcls.demo.world import DEMO_CLASSES
from vlmcls.errors import ConfigError
from vlmcls.llm.client import LLMClient, LLMConfig
from vlmcls.methods import MethodOptions
from vlmcls.methods.openset import VOCABULARY_PATH, load_vocabulary

runner = CliRunner()
CLASSES = list(DEMO_CLASSES)
IMAGES = DEMO_DATA_DIR / "images"
UNKNOWN = DEMO_DATA_DIR / "none_of_these"
CBD = {"cbd": {"descriptors": str(DEMO_DESCRIPTORS_FILE)}}


@pytest.fixture(scope="module")
def small_vocabulary(tmp_path_factory) -> Path:
    """300 words of the shipped vocabulary: the same mining, without encoding 20,000 texts in every test."""
    path = tmp_path_factory.mktemp("vocab") / "words.txt"
    path.write_text("\n".join(load_vocabulary()[::60][:300]) + "\n")
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    clf = Classifier(DEMO_MODEL_ID, cache_dir=tmp_path_factory.mktemp("cache"), batch_size=64)
    return clf, clf.encode_images(IMAGES), clf.encode_images(UNKNOWN)


def _mixed(clf, in_list, others):
    from dataclasses import replace

    from vlmcls.api import as_records

    records = as_records(IMAGES) + as_records(UNKNOWN)
    records = [replace(r, source_index=i) for i, r in enumerate(records)]
    return clf.encode_images(records)


def _options(small_vocabulary, **unknown):
    return MethodOptions(methods={**CBD, "unknown": {"vocabulary": str(small_vocabulary), **unknown}})


def test_the_shipped_vocabulary_is_a_word_list_with_its_sources_named():
    header = VOCABULARY_PATH.read_text().splitlines()[0]
    words = load_vocabulary()
    assert "public domain" in header and "WordNet" in header
    assert len(words) == 20000 and all(w.isalpha() and w.islower() for w in words)


def test_a_known_unknown_image_is_labelled_unknown(demo, small_vocabulary):
    clf, in_list, _ = demo
    feats = _mixed(clf, *demo[1:])
    result = clf.predict(feats, CLASSES, "cbd", _options(small_vocabulary, reject=True))
    rejected = [p for p in result.ok if p.label == "unknown"]
    assert rejected, "no image answered unknown"
    assert all(p.true_label is None for p in rejected)  # every rejected image is one of the none-of-these
    assert all(p.top_k[0][0] in CLASSES for p in rejected)  # the best class stays in top_k
    assert all(p.unknown_score is not None for p in result.ok)
    # the mixture estimator reads the two populations: most none-of-these images are rejected
    mixed = clf.predict(feats, CLASSES, "cbd", _options(small_vocabulary, reject=True, estimator="mixture"))
    others = [p for p in mixed.ok if p.true_label is None]
    assert sum(p.label == "unknown" for p in others) / len(others) > 0.8


def test_the_label_free_threshold_keeps_the_asked_recall_on_in_list_images(demo, small_vocabulary):
    clf, in_list, _ = demo
    result = clf.predict(in_list, CLASSES, "cbd", _options(small_vocabulary, reject=True, recall=0.9))
    kept = np.mean([p.label != "unknown" for p in result.ok])
    assert 0.88 <= kept <= 0.95
    assert result.stats["unknown_images"] == sum(p.label == "unknown" for p in result.ok)


def test_mcm_alone_and_a_custom_word(demo):
    clf, in_list, others = demo
    feats = _mixed(clf, in_list, others)
    options = MethodOptions(methods={**CBD, "unknown": {"reject": True, "source": "none", "word": "none of these",
                                                        "estimator": "mixture"}})
    result = clf.predict(feats, CLASSES, "cbd", options)
    assert result.stats["unknown_score"] == "mcm" and result.stats["unknown_negatives"] == 0
    score = np.array([p.unknown_score for p in result.ok])
    inside = np.array([p.true_label is not None for p in result.ok])
    assert auroc(score[inside], score[~inside]) > 0.9
    assert {p.label for p in result.ok if not inside[result.ok.index(p)]} & {"none of these"}


def test_llm_near_miss_negatives_are_asked_cached_exported_and_explained(demo, small_vocabulary, tmp_path):
    clf, in_list, others = demo
    feats = _mixed(clf, in_list, others)
    server = FakeLLMServer().start()
    try:
        with LLMClient(LLMConfig(model="fake", base_url=server.base_url), clf.store) as llm:
            options = MethodOptions(methods={**CBD, "unknown": {"reject": True, "vocabulary": str(small_vocabulary)}},
                                    llm=llm, explain=True)
            result = clf.predict(feats, CLASSES, "cbd", options)  # auto: vocabulary + the configured LLM
            asked = len(server.chat_requests)
            again = clf.predict(feats, CLASSES, "cbd", options)
            assert len(server.chat_requests) == asked == len(CLASSES)  # one per class, then cached
    finally:
        server.stop()
    negatives = result.artifacts["negatives"]
    assert set(negatives) == set(CLASSES) and "large red striped square" in negatives["zorblax"]
    assert [p.label for p in again.ok] == [p.label for p in result.ok]
    note = next(p.explanation["unknown"] for p in result.ok if p.label == "unknown")
    assert note["rejected"] and note["nearest_negatives"][0]["negative"]


def test_a_negatives_file_naming_a_listed_class_drops_it_with_a_warning(demo, tmp_path):
    clf, in_list, _ = demo
    path = tmp_path / "negatives.json"
    path.write_text(json.dumps({"zorblax": ["quintor", "large red striped square"]}))
    options = MethodOptions(methods={**CBD, "unknown": {"reject": True, "source": "llm", "negatives": str(path)}})
    result = clf.predict(in_list, CLASSES, "cbd", options)
    assert result.stats["unknown_negatives"] == 1
    assert any("quintor" in w["message"] and "names a listed class" in w["message"] for w in result.warnings)


def test_an_empty_negatives_file_is_an_error_naming_the_option(demo, tmp_path):
    clf, in_list, _ = demo
    path = tmp_path / "negatives.txt"
    path.write_text("\n# nothing\n")
    options = MethodOptions(methods={**CBD, "unknown": {"reject": True, "source": "llm", "negatives": str(path)}})
    with pytest.raises(ConfigError, match="unknown.negatives .* holds no negatives"):
        clf.predict(in_list, CLASSES, "cbd", options)


def test_a_vocabulary_that_overlaps_the_classes_leaves_those_words_out(demo, tmp_path):
    clf, in_list, _ = demo
    words = tmp_path / "words.txt"
    words.write_text("zorblax\nQuintor\nteapot\nvolcano\n")
    options = MethodOptions(methods={**CBD, "unknown": {"reject": True, "source": "vocabulary",
                                                        "vocabulary": str(words)}}, explain=True)
    result = clf.predict(in_list, CLASSES, "cbd", options)
    assert result.stats["unknown_vocabulary_overlap"] == 2 and result.stats["unknown_negatives"] == 2
    named = {n["negative"] for p in result.ok for n in p.explanation["unknown"]["nearest_negatives"]}
    assert named <= {"teapot", "volcano"}


def test_an_image_with_two_demo_objects_gets_both_labels(demo, small_vocabulary):
    clf = demo[0]
    truth = [json.loads(line) for line in (DEMO_DATA_DIR / "two_objects.jsonl").read_text().splitlines()]
    feats = clf.encode_images([DEMO_DATA_DIR / t["path"] for t in truth])
    server = FakeLLMServer().start()
    try:
        with LLMClient(LLMConfig(model="fake", base_url=server.base_url), clf.store) as llm:
            options = MethodOptions(methods={**CBD, "unknown": {"multi_label": True, "vocabulary": str(small_vocabulary)}},
                                    llm=llm)
            result = clf.predict(feats, CLASSES, "cbd", options)
    finally:
        server.stop()
    both = [set(t["labels"]) <= {c for c, _ in p.labels} for p, t in zip(result.ok, truth)]
    assert sum(both) >= 2  # the single-label path never gives two labels
    assert all(p.labels and p.labels[0][0] == p.top_k[0][0] or p.labels[0][1] >= p.labels[-1][1] for p in result.ok)
    assert all(p.label in CLASSES for p in result.ok)  # without reject the top class stays the answer


def test_multi_label_with_unknown_gives_rejected_images_no_labels(demo, small_vocabulary):
    clf, in_list, others = demo
    feats = _mixed(clf, in_list, others)
    result = clf.predict(feats, CLASSES, "cbd", _options(small_vocabulary, reject=True, multi_label=True,
                                                         estimator="mixture"))
    for p in result.ok:
        if p.label == "unknown":
            assert p.labels == []
        else:
            assert p.labels and p.label in {c for c, _ in p.labels}


def test_rows_carry_unknown_score_and_labels_in_jsonl(demo, small_vocabulary, tmp_path):
    out = tmp_path / "rows.jsonl"
    words = str(small_vocabulary)
    result = runner.invoke(app, ["classify", str(IMAGES / "zorblax"), "-c", str(DEMO_CLASSES_FILE), "--model",
                                 DEMO_MODEL_ID, "--method", "cbd", "--descriptors", str(DEMO_DESCRIPTORS_FILE),
                                 "--unknown", "--multi-label", "--opt", f"unknown.vocabulary={words}", "-o", str(out),
                                 "-q"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all("unknown_score" in r and isinstance(r["labels"], list) for r in rows)


@pytest.mark.parametrize("args, message", [
    (["--unknown", "--opt", "unknown.recall=1.5"], "unknown.recall must be ≤ 1"),
    (["--unknown", "--opt", "unknown.source=everything"], "unknown.source is 'everything'"),
])
def test_bad_open_world_settings_exit_2_with_one_line(args, message):
    result = runner.invoke(app, ["classify", str(IMAGES), "-c", str(DEMO_CLASSES_FILE), "--model", DEMO_MODEL_ID,
                                 *args])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_eval_reports_ece_and_open_set_metrics(tmp_path, small_vocabulary):
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", str(IMAGES), "-c", str(DEMO_CLASSES_FILE), "--model", DEMO_MODEL_ID,
                                 "--methods", "templates,cbd", "--descriptors", str(DEMO_DESCRIPTORS_FILE),
                                 "--unknown", "--opt", f"unknown.vocabulary={small_vocabulary}",
                                 "--unknown-folder", str(UNKNOWN), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "ECE" in result.output and "AUROC" in result.output
    saved = json.loads(out.read_text())
    cbd = next(m for m in saved["methods"] if m["method"] == "cbd")
    assert 0 <= cbd["ece"] <= 1 and len(cbd["reliability"]) == 15
    assert cbd["open_set"]["in_list"] == 48 and cbd["open_set"]["others"] == 48
    assert cbd["open_set"]["auroc"] > 0.9 and cbd["metrics"]["count"] == 48


def test_ece_and_open_set_maths():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    labels = [0, 1, 0, 1]
    # bins: 0.9 right, 0.8 wrong, 0.6 right, 0.7 right -> |1-.9|+|0-.8|+|1-.6|+|1-.7| over 4
    assert expected_calibration_error(probs, labels) == pytest.approx((0.1 + 0.8 + 0.4 + 0.3) / 4)
    assert auroc([3, 4], [1, 2]) == 1.0 and auroc([1], [1]) == 0.5
    assert fpr_at_tpr(np.arange(100) + 50, np.arange(100)) == pytest.approx(0.45)  # cut at 55 keeps 95 of 100
    rng = np.random.default_rng(0)
    inside, others = rng.normal(3, 0.5, 400), rng.normal(-3, 0.5, 400)
    scores = 1 / (1 + np.exp(-np.concatenate([inside, others])))
    fit = recall_threshold(scores, 0.95, estimator="mixture")
    achieved = np.mean(scores[:400] >= fit.threshold)
    assert fit.estimator == "mixture" and abs(achieved - 0.95) < 0.03
    quantile = recall_threshold(scores[:400], 0.95, estimator="quantile")
    assert np.mean(scores[:400] >= quantile.threshold) == pytest.approx(0.95, abs=0.01)
