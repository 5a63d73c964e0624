"""Metrics against hand-computed values, methods compared on shared features, the results file and `vlmcls eval`."""

import json

import pytest
import torch
from typer.testing import CliRunner

import imagegen
from vlmcls import Classifier
from vlmcls.adapters.metrics import LabelMetric
from vlmcls.cli import app
from vlmcls.errors import ConfigError, LLMError
from vlmcls.report.evaluate import compute_metrics, evaluate, options_for_spec, parse_methods
from vlmcls.methods import METHODS, MethodOptions
from fake_methods import scripted_head

runner = CliRunner()

# Five images, three classes. Rows: a→a (right), b→b, b→a, c→c, c→a; top-2 misses only the last one.
PROBS = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
TRUTH = ["a", "b", "b", "c", "c"]


def test_metrics_match_hand_computed_values():
    m = compute_metrics(TRUTH, PROBS, ["a", "b", "c"], k=2)
    assert m.top1 == pytest.approx(3 / 5)
    assert m.top_k == pytest.approx(4 / 5) and m.k == 2
    assert m.confusion == [[1, 0, 0], [1, 1, 0], [1, 0, 1]]  # rows true, columns predicted
    scores = {s.name: s for s in m.per_class}
    assert scores["a"].precision == pytest.approx(1 / 3) and scores["a"].recall == 1.0
    assert scores["b"].recall == 0.5 and scores["b"].support == 2 and scores["b"].predicted == 1
    assert m.mean_recall == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert [(c.true, c.predicted, c.count) for c in m.worst_confusions] == [("b", "a", 1), ("c", "a", 1)]


def test_top_k_is_clipped_to_the_number_of_classes_and_unseen_classes_leave_mean_recall_alone():
    m = compute_metrics(TRUTH, torch.cat([PROBS, torch.zeros(5, 1)], dim=1), ["a", "b", "c", "d"], k=10)
    assert m.k == 4 and m.top_k == 1.0
    d = m.per_class[3]
    assert d.support == 0 and d.recall is None and d.precision is None
    assert m.mean_recall == pytest.approx(2 / 3)  # d has no images, so it does not drag the mean to 0.5


def test_classes_are_matched_by_name_not_by_column_position():
    order = [2, 0, 1]  # the same scores with the columns listed as c, a, b
    m = compute_metrics(TRUTH, PROBS[:, order], ["c", "a", "b"], k=2)
    reference = compute_metrics(TRUTH, PROBS, ["a", "b", "c"], k=2)
    assert (m.top1, m.top_k, m.mean_recall) == (reference.top1, reference.top_k, reference.mean_recall)
    assert {s.name: s.recall for s in m.per_class} == {s.name: s.recall for s in reference.per_class}


def test_true_labels_outside_the_classes_are_an_error_naming_them_or_kept_as_wrong():
    with pytest.raises(ConfigError, match="'zebra' \\(2\\)"):
        compute_metrics(TRUTH + ["zebra", "zebra"], torch.cat([PROBS, PROBS[:2]]), ["a", "b", "c"])
    kept = compute_metrics(TRUTH + ["zebra"], torch.cat([PROBS, PROBS[:1]]), ["a", "b", "c"], k=3,
                           unknown_labels="keep")
    assert kept.top1 == pytest.approx(3 / 6) and kept.top_k == pytest.approx(5 / 6)  # zebra is in no top-k
    assert kept.unknown_labels == {"zebra": 1} and kept.per_class[-1].name == "zebra"


def test_label_space_predictions_outside_the_classes_count_by_name():
    m = compute_metrics(["a", "b"], PROBS[:2], ["a", "b", "c"], predicted_labels=["a", "animal"])
    assert m.top1 == 0.5 and m.class_names[-1] == "animal"
    assert [(c.true, c.predicted) for c in m.worst_confusions] == [("b", "animal")]


def test_method_specs_are_checked_against_the_registry():
    assert parse_methods("name, templates,name") == ["name", "templates"]
    with pytest.raises(ConfigError, match="unknown method 'clip'.*Valid: name, templates"):
        parse_methods("name,clip")
    with pytest.raises(ConfigError, match="unknown method 'magic' in 'templates\\+magic'"):
        parse_methods("templates+magic")


def test_each_spec_gets_only_the_refiners_it_names(tmp_path):

    shared = MethodOptions(methods={"tip": {"support": tmp_path}, "frechet": {"hierarchy": tmp_path / "h.txt"}})
    assert options_for_spec("templates", shared).methods == {}
    assert set(options_for_spec("templates+tip", shared).methods) == {"tip"}
    assert options_for_spec("templates+tip", shared).config("tip").support == tmp_path
    assert options_for_spec("templates+tip", shared).config("frechet").hierarchy is None
    assert options_for_spec("name+frechet", shared).config("frechet").hierarchy == tmp_path / "h.txt"
    with pytest.raises(ConfigError, match="option tip.support"):
        options_for_spec("tip", MethodOptions())


# -- evaluate on real files with a tiny real model ---------------------------------------------------------------


@pytest.fixture
def fake_methods(monkeypatch):
    """'always_cat' answers cat for every image and reports LLM costs; 'broken' fails like a dead endpoint."""

    def always_cat(image_feats, class_names):
        logits = torch.zeros(image_feats.shape[0], len(class_names))  # [N, C]
        logits[:, class_names.index("cat")] = 10.0
        return logits

    monkeypatch.setitem(METHODS, "always_cat", scripted_head("always_cat", always_cat, llm_calls=3, llm_tokens=120))
    monkeypatch.setitem(METHODS, "broken", scripted_head(
        "broken", always_cat, fail=LLMError("endpoint 'http://localhost:9' refused the connection")))


def _counting_classifier(model_dir, monkeypatch):
    """A classifier without a store whose backend counts the images it encodes."""
    clf = Classifier(f"local-dir:{model_dir}", use_cache=False, batch_size=2)
    seen = {"images": 0}
    encode = clf.model.encode_images

    def counted(pixels):
        seen["images"] += pixels.shape[0]
        return encode(pixels)

    monkeypatch.setattr(clf.model, "encode_images", counted)
    return clf, seen


def test_methods_share_one_encoding_and_are_scored_on_labelled_images_only(tiny_open_clip, labelled_folder,
                                                                          fake_methods, monkeypatch):
    clf, seen = _counting_classifier(tiny_open_clip, monkeypatch)
    report = evaluate(clf, labelled_folder, ["cat", "dog", "bird"], "name,templates,always_cat", top_k=2)
    assert seen["images"] == 6  # encoded once for three methods (5 labelled + 1 loose; the empty file fails)
    assert report.images == {**report.images, "total": 7, "labelled": 5, "unlabelled": 1, "errors": 1, "encoded": 6}
    assert [run.method for run in report.runs] == ["name", "templates", "always_cat"]
    cat = report.run("always_cat")
    assert cat.metrics.count == 5 and cat.metrics.top1 == pytest.approx(3 / 5)  # the loose image is left out
    assert cat.metrics.worst_confusions[0].true == "dog" and cat.metrics.worst_confusions[0].count == 2
    assert (cat.llm_calls, cat.llm_tokens) == (3, 120) and cat.seconds > 0
    assert [p.error for p in report.error_rows] == ["empty file"]
    assert report.best is cat or report.best.metrics.top1 >= cat.metrics.top1


def test_a_failing_method_is_reported_and_the_others_still_run(tiny_open_clip, labelled_folder, fake_methods):
    clf = Classifier(f"local-dir:{tiny_open_clip}")
    report = evaluate(clf, labelled_folder, ["cat", "dog"], ["broken", "always_cat"])
    broken = report.run("broken")
    assert not broken.ok and "refused the connection" in broken.error and broken.metrics is None
    assert report.run("always_cat").ok and report.best.method == "always_cat"
    with pytest.raises(LLMError):  # nothing to report when every method fails
        evaluate(clf, labelled_folder, ["cat", "dog"], ["broken"])


def test_unknown_labels_stop_the_run_before_encoding(tiny_open_clip, labelled_folder, monkeypatch):
    clf, seen = _counting_classifier(tiny_open_clip, monkeypatch)
    with pytest.raises(ConfigError, match="'dog'.*--unknown-labels keep"):
        evaluate(clf, labelled_folder, ["cat", "bird"], "name")
    assert seen["images"] == 0


def test_expected_squared_distance_uses_the_label_metric(tiny_open_clip, labelled_folder, fake_methods):
    metric = LabelMetric.from_tree([("animal", "cat"), ("animal", "dog"), ("animal", "bird")])
    clf = Classifier(f"local-dir:{tiny_open_clip}")
    report = evaluate(clf, labelled_folder, ["cat", "dog", "bird"], ["always_cat"], label_metric=metric)
    # Two dogs called cat, each 2 edges away (d² = 4); three cats right: (2·4 + 3·0) / 5.
    assert report.run("always_cat").expected_squared_distance == pytest.approx(8 / 5)


def test_results_json_round_trip(tiny_open_clip, labelled_folder, fake_methods, tmp_path):
    clf = Classifier(f"local-dir:{tiny_open_clip}")
    report = evaluate(clf, labelled_folder, ["cat", "dog"], ["name", "always_cat"])
    path = report.save_json(tmp_path / "out" / "results.json")
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(report.to_dict()))
    run = saved["methods"][1]
    assert run["method"] == "always_cat" and run["metrics"]["top1"] == pytest.approx(0.6)
    assert run["metrics"]["confusion"] == [[3, 0], [2, 0]]
    assert len(run["predictions"]) == 6 and saved["errors"][0]["error"] == "empty file"
    with pytest.raises(ConfigError, match=".json"):
        report.save_json(tmp_path / "results.csv")


def test_hf_dataset_labels_come_from_its_class_label_column(tiny_open_clip, tmp_path, fake_methods):
    dataset = imagegen.make_hf_dataset([(200, 0, 0), (0, 0, 200), (210, 10, 10)], [0, 1, 0], ["cat", "dog"])
    dataset.save_to_disk(str(tmp_path / "ds"))
    report = evaluate(Classifier(f"local-dir:{tiny_open_clip}"), tmp_path / "ds", ["dog", "cat"], ["always_cat"])
    assert report.run("always_cat").metrics.top1 == pytest.approx(2 / 3)
    assert report.images["labelled"] == 3


# -- the command ---------------------------------------------------------------------------------------------------


def test_eval_command_prints_the_comparison_and_saves_json(tiny_open_clip, labelled_folder, fake_methods, tmp_path):
    out = tmp_path / "results.json"
    result = runner.invoke(app, ["eval", str(labelled_folder), "--classes", "cat,dog", "--methods", "templates,always_cat",
                                 "--model", f"local-dir:{tiny_open_clip}", "--output", str(out)], catch_exceptions=False)
    assert result.exit_code == 1  # the empty file is an error row
    assert "top-1" in result.output and "mean recall" in result.output and "templates" in result.output and "always_cat" in result.output
    assert "60.00" in result.output  # always_cat: 3 of 5 labelled images
    assert "per class" in result.output and "empty file" in result.output
    assert [m["method"] for m in json.loads(out.read_text())["methods"]] == ["templates", "always_cat"]


def test_eval_command_rejects_bad_input_before_loading_anything(labelled_folder, tmp_path):
    missing_model = f"local-dir:{tmp_path / 'nope'}"
    bad_method = runner.invoke(app, ["eval", str(labelled_folder), "-c", "cat,dog", "--methods", "nmae", "-m", missing_model])
    assert bad_method.exit_code == 2 and "unknown method 'nmae'" in bad_method.output
    no_support = runner.invoke(app, ["eval", str(labelled_folder), "-c", "cat,dog", "--methods", "templates+tip", "-m", missing_model])
    assert no_support.exit_code == 2 and "tip.support" in no_support.output
    bad_report = runner.invoke(app, ["eval", str(labelled_folder), "-c", "cat,dog", "--report", str(tmp_path / "r.pdf"), "-m", missing_model])
    assert bad_report.exit_code == 2 and ".html" in bad_report.output
