"""A re-run whose features are all in the store builds no model and imports no model backend."""

import json
import subprocess
import sys
from pathlib import Path

import imagegen
from vlmcls import Classifier
from vlmcls.encode.lazy_model import LazyModel

REPO = Path(__file__).resolve().parents[1]

# Runs the CLI in a fresh interpreter, then says which model backends that process imported.
_CLI_AND_MODULES = """
import json, sys
from vlmcls.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    print("MODULES=" + json.dumps(sorted(m for m in ("open_clip", "transformers", "onnxruntime", "torch")
                                        if m in sys.modules)))
"""


def _cli(*args, cache):
    env = {"PYTHONPATH": str(REPO), "VLMCLS_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", _CLI_AND_MODULES, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("MODULES=")][-1]
    return json.loads(line[len("MODULES="):])


def test_cached_cli_rerun_imports_no_model_backend_and_gives_the_same_rows(tiny_open_clip, labelled_folder, tmp_path):
    cache = tmp_path / "cache"
    args = ["classify", labelled_folder, "--classes", "cat,dog", "--model", f"local-dir:{tiny_open_clip}", "-q"]
    first_out, second_out = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    assert "open_clip" in _cli(*args, "-o", first_out, cache=cache)
    assert _cli(*args, "-o", second_out, cache=cache) == []  # everything cached: no torch, open_clip, transformers
    assert second_out.read_text() == first_out.read_text()
    assert "open_clip" in _cli(*args[:3], "cat,dog,fox", *args[4:], "-o", tmp_path / "third.jsonl", cache=cache)


def test_cached_cbd_rerun_with_explanations_imports_no_torch(tiny_open_clip, labelled_folder, tmp_path):
    """A linear head scores numpy arrays: descriptors, explanations and error rows need no torch on a re-run."""
    (Path(labelled_folder) / "broken.png").write_bytes(b"not a png")
    descriptors = tmp_path / "descriptors.json"
    descriptors.write_text(json.dumps({"cat": ["whiskers", "pointed ears"], "dog": ["a wagging tail", "floppy ears"]}))
    cache = tmp_path / "cache"
    args = ["classify", labelled_folder, "--classes", "cat,dog", "--model", f"local-dir:{tiny_open_clip}", "-q",
            "--method", "cbd", "--descriptors", descriptors, "--explain"]
    first_out, second_out = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    assert "torch" in _cli(*args, "-o", first_out, cache=cache)
    assert _cli(*args, "-o", second_out, cache=cache) == []
    rows = [json.loads(line) for line in second_out.read_text().splitlines()]
    assert second_out.read_text() == first_out.read_text()
    assert any(r["error"] for r in rows) and all(r["explanation"]["descriptors"]["top"]["class"] == r["label"]
                                                 for r in rows if not r["error"])


def test_the_readme_main_job_reruns_without_torch(tmp_path):
    """FuDD's re-rank runs in numpy too: the README's main job, re-run, answers from the store alone."""
    demo = REPO / "vlmcls" / "data" / "demo"
    args = ["classify", demo / "images", "--classes", demo / "classes.txt", "--method", "fudd", "--descriptors",
            demo / "descriptors.json", "--pairs", demo / "pairs.json", "--model",
            f"local-dir:{REPO / 'vlmcls' / 'data' / 'demo_model'}", "-q", "--explain"]
    first_out, second_out = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    assert "torch" in _cli(*args, "-o", first_out, cache=tmp_path / "cache")
    assert _cli(*args, "-o", second_out, cache=tmp_path / "cache") == []
    assert second_out.read_text() == first_out.read_text()
    rows = [json.loads(line) for line in second_out.read_text().splitlines()]
    assert sum(r["label"] == r["true_label"] for r in rows) == len(rows) == 48  # as the README says
    assert sum("differential" in r["explanation"] for r in rows) == 20  # the images FuDD moved


def test_numpy_and_tensor_results_agree(tiny_open_clip, labelled_folder, tmp_path):
    """``as_numpy`` changes the result's array type, never its numbers; specs with torch-only stages too."""
    import numpy as np
    import torch

    clf = Classifier(f"local-dir:{tiny_open_clip}", device="cpu", cache_dir=tmp_path / "cache")
    for method in ("templates", "templates+tfup"):
        tensors = clf.classify(labelled_folder, ["cat", "dog", "fox"], method=method)
        arrays = clf.classify(labelled_folder, ["cat", "dog", "fox"], method=method, as_numpy=True)
        assert isinstance(tensors.probs, torch.Tensor) and isinstance(arrays.probs, np.ndarray)
        assert np.array_equal(tensors.probs.numpy(), arrays.probs)
        assert [p.top_k for p in tensors.predictions] == [p.top_k for p in arrays.predictions]


def test_new_text_loads_the_model_and_the_run_still_works(tiny_open_clip, labelled_folder, tmp_path):
    cache = tmp_path / "cache"
    model_id = f"local-dir:{tiny_open_clip}"
    first = Classifier(model_id, device="cpu", cache_dir=cache).classify(labelled_folder, ["cat", "dog"])

    clf = Classifier(model_id, device="cpu", cache_dir=cache)
    assert isinstance(clf.model, LazyModel) and not clf.model.is_loaded
    same = clf.classify(labelled_folder, ["cat", "dog"])
    assert not clf.model.is_loaded and same.stats["cached"] == len(same.ok)
    assert [p.top_k for p in same.predictions] == [p.top_k for p in first.predictions]

    more = clf.classify(labelled_folder, ["cat", "dog", "fox"])  # "fox" was never encoded: the model must load
    assert clf.model.is_loaded and more.stats["encoded"] == 0
    assert {p.label for p in more.ok} <= {"cat", "dog", "fox"} and len(more.ok) == len(first.ok)
    assert len(more.predictions[0].top_k) == 3


def test_changed_weights_are_not_mistaken_for_the_recorded_ones(tmp_path, labelled_folder):
    from tiny_models import make_open_clip_dir

    cache, folder = tmp_path / "cache", tmp_path / "model"
    make_open_clip_dir(folder, seed=1)
    Classifier(f"local-dir:{folder}", device="cpu", cache_dir=cache).classify(labelled_folder, ["cat", "dog"])
    make_open_clip_dir(folder, seed=2)  # same folder, new weights
    clf = Classifier(f"local-dir:{folder}", device="cpu", cache_dir=cache)
    assert clf.model.is_loaded  # nothing recorded for these weights: built at once, as before
    result = clf.classify(labelled_folder, ["cat", "dog"])
    assert result.stats["encoded"] == len(result.ok)  # no stale features from the old weights


def test_no_cache_builds_the_model_at_once(tiny_open_clip, tmp_path):
    imagegen.write_solid(tmp_path / "a.png")
    clf = Classifier(f"local-dir:{tiny_open_clip}", device="cpu", use_cache=False)
    assert clf.model.is_loaded and clf.classify(tmp_path, ["red", "blue"]).ok[0].label in {"red", "blue"}
