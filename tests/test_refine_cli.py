"""Refiners driven from the CLI: Tip-Adapter support folders, the self-cache and the Fréchet mean."""

import json

import pytest
from typer.testing import CliRunner

import imagegen
from vlmcls.cli import app

runner = CliRunner()


@pytest.fixture
def folders(tmp_path):
    query = tmp_path / "query"
    imagegen.make_class_tree(query, {"poodle": [(250, 250, 250), (240, 240, 230)], "beagle": [(120, 80, 40)]})
    support = tmp_path / "support"
    imagegen.make_class_tree(support, {"poodle": [(255, 255, 255), (230, 230, 230)], "beagle": [(130, 90, 50), (100, 70, 30)]})
    return query, support


def _classify(tiny, query, tmp_path, *extra):
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["classify", str(query), "--classes", "poodle,beagle", "--model", f"local-dir:{tiny}",
                                 "-o", str(out), "--explain", *map(str, extra)], catch_exceptions=False)
    return result, [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def test_tip_adapter_from_a_support_folder_is_explained(tiny_open_clip, folders, tmp_path):
    query, support = folders
    result, rows = _classify(tiny_open_clip, query, tmp_path, "--support", support, "--opt", "tip.alpha=50")
    assert result.exit_code == 0, result.output
    for row in rows:
        tip = row["explanation"]["tip"]
        assert tip["class"] == row["label"] and tip["nearest_support_image"].startswith(str(support))
    # with a huge α the cache decides: each query takes the class of the support image closest in colour
    assert {json.dumps(r["path"]).split("/")[-2]: r["label"] for r in rows} == {"poodle": "poodle", "beagle": "beagle"}


def test_tune_uses_only_the_support_set(tiny_open_clip, folders, tmp_path):
    query, support = folders
    result, rows = _classify(tiny_open_clip, query, tmp_path, "--support", support, "--opt", "tip.tune=true")
    assert result.exit_code == 0, result.output
    assert len(rows) == 3 and all("tip" in r["explanation"] for r in rows)


def test_support_labels_must_be_classes(tiny_open_clip, folders, tmp_path):
    query, support = folders
    imagegen.make_class_tree(support, {"wolf": [(1, 1, 1)]})
    result, _ = _classify(tiny_open_clip, query, tmp_path, "--support", support)
    assert result.exit_code == 2 and "'wolf'" in result.output


def test_self_cache_runs_without_labels(tiny_open_clip, folders, tmp_path):
    query, _ = folders
    result, rows = _classify(tiny_open_clip, query, tmp_path, "--method", "templates+tfup")
    assert result.exit_code == 0 and all("self_cache" in r["explanation"] for r in rows)


def test_frechet_mean_predicts_a_never_prompted_parent(tiny_open_clip, folders, tmp_path):
    query, _ = folders
    tree = tmp_path / "tree.txt"
    tree.write_text("animal -> dog\nanimal -> cat\ndog -> poodle\ndog -> beagle\ncat -> siamese\n")
    result, rows = _classify(tiny_open_clip, query, tmp_path, "--opt", f"frechet.hierarchy={tree}", "--opt", "frechet.label_space=dog,poodle,beagle,cat")
    assert result.exit_code == 0, result.output
    # A random tiny model is torn between poodle and beagle: their Fréchet mean is their parent, never prompted.
    assert [r["label"] for r in rows] == ["dog"] * 3
    assert all(r["explanation"]["frechet"]["zero_shot_label"] in {"poodle", "beagle"} for r in rows)
    assert all(r["top_k"][0]["label"] in {"poodle", "beagle"} for r in rows)


def test_two_metrics_at_once_is_a_usage_error(tiny_open_clip, folders, tmp_path):
    query, _ = folders
    tree = tmp_path / "tree.txt"
    tree.write_text("dog -> poodle\ndog -> beagle\n")
    result, _ = _classify(tiny_open_clip, query, tmp_path, "--opt", f"frechet.hierarchy={tree}", "--opt", "frechet.self_metric=true")
    assert result.exit_code == 2 and "exactly one label metric" in result.output
