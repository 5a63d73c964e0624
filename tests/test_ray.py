"""The Ray engine gives the single-process engine's rows, error rows included, and writes readable shards."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import imagegen as ig
from vlmcls import distributed
from vlmcls.api import Classifier
from vlmcls.distributed import classify_with_ray
from vlmcls.errors import ConfigError, MissingExtraError
from vlmcls.methods import METHODS, MethodOptions, MethodOutput, run_method
from vlmcls.scoring import compute_logits

CLASSES = ["cat", "dog", "car", "tree"]
BROKEN = {  # file name -> the reason both engines must give
    "empty.jpg": "empty file",
    "cut.jpg": "truncated image",
    "noise.png": "not an image",
    "notes.jpg": "not an image",
}


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started_here:
        ray.shutdown()


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """50 files in class folders: plain and odd-mode images, a decompression bomb and broken files."""
    root = tmp_path_factory.mktemp("ray_images")
    for i in range(36):
        ig.write_noise_jpeg(root / ("a", "b", "c")[i % 3] / f"{i:02d}.jpg", size=(40 + i, 32), seed=i)
    ig.write_solid(root / "a" / "red.png", ig.RED)
    ig.write_solid(root / "b" / "blue.png", ig.BLUE)
    ig.write_cmyk_jpeg(root / "a" / "cmyk.jpg")
    ig.write_palette_png_with_transparency(root / "b" / "palette.png")
    ig.write_rgba_png(root / "c" / "rgba.png")
    ig.write_16bit_gray_png(root / "c" / "deep.png")
    ig.write_1bit_png(root / "a" / "onebit.png")
    ig.write_exif_rotated_jpeg(root / "b" / "rotated.jpg")
    ig.write_png_header_only(root / "c" / "bomb.png", 20_000, 20_000)
    ig.write_empty(root / "a" / "empty.jpg")
    ig.write_truncated_jpeg(root / "b" / "cut.jpg")
    ig.write_random_bytes(root / "c" / "noise.png")
    ig.write_text_as_image(root / "c" / "notes.jpg")
    ig.write_gray_png(root / "gray.png")
    return root


@pytest.fixture(scope="module")
def model_id(tiny_open_clip) -> str:
    return f"local-dir:{tiny_open_clip}"


def assert_same_rows(got: list[dict], want: list[dict]) -> None:
    """Same images in the same order, same labels and errors, probabilities within 1e-5."""
    assert [r["path"] for r in got] == [r["path"] for r in want]
    for g, w in zip(got, want):
        assert (g["label"], g["error"], g.get("true_label")) == (w["label"], w["error"], w.get("true_label")), g["path"]
        assert [t["label"] for t in g["top_k"]] == [t["label"] for t in w["top_k"]], g["path"]
        for gt, wt in zip(g["top_k"], w["top_k"]):
            assert gt["prob"] == pytest.approx(wt["prob"], abs=1e-5), g["path"]


@pytest.mark.ray
def test_ray_rows_equal_single_process_rows_and_parquet_shards_hold_them(ray_local, model_id, image_folder, tmp_path):
    single = Classifier(model_id, device="cpu", use_cache=False).classify(image_folder, CLASSES, top_k=3)
    out = tmp_path / "shards"

    result = classify_with_ray(model_id, image_folder, CLASSES, top_k=3, batch_size=8, num_workers=1, output_dir=out)

    assert len(result.predictions) == 50
    assert_same_rows(result.rows(), single.rows())
    reasons = {Path(p.path).name: p.error for p in result.errors}
    assert {name: reasons.get(name) for name in BROKEN} == BROKEN
    assert reasons["bomb.png"].startswith("image too large")
    assert torch.allclose(result.probs, single.probs, atol=1e-5)  # [N_ok, C], rows aligned
    assert result.stats["errors"] == len(single.errors) == 5 and result.stats["engine"] == "ray"

    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(out.glob("*.parquet"))
    assert len(files) > 1, "expected several shards for 50 images in batches of 8"
    table = pa.concat_tables([pq.read_table(f) for f in files]).sort_by("index")
    assert table.column("index").to_pylist() == list(range(50))
    shard_rows = table.drop_columns(["index"]).to_pylist()
    assert_same_rows(shard_rows, single.rows())


@pytest.mark.ray
def test_jsonl_shards_without_collecting_cover_missing_files_and_folders(ray_local, model_id, image_folder, tmp_path):
    paths = sorted(str(p) for p in image_folder.rglob("*.jpg"))[:8]
    paths += [str(image_folder / rel) for rel in ("a/empty.jpg", "b/cut.jpg", "c/rgba.png", "c/notes.jpg")]
    paths += [str(image_folder / "a" / "gone.jpg"), str(image_folder / "b")]  # a missing file and a folder
    single = Classifier(model_id, device="cpu", use_cache=False).classify(paths, CLASSES, top_k=2)
    out = tmp_path / "jsonl"

    result = classify_with_ray(model_id, paths, CLASSES, top_k=2, batch_size=4, num_workers=1,
                               output_dir=out, output_format="jsonl", collect=False)

    assert result.predictions == []
    assert result.stats["errors"] == len(single.errors) == 5
    rows = [json.loads(line) for f in sorted(out.glob("*.json")) for line in f.read_text().splitlines() if line]
    rows.sort(key=lambda r: r["index"])
    assert [r["index"] for r in rows] == list(range(len(paths)))
    assert_same_rows(rows, single.rows())
    assert rows[-2]["error"] == f"not found: {image_folder / 'a' / 'gone.jpg'}"


@pytest.mark.ray
def test_methods_that_rerank_per_image_are_refused_with_the_way_out(ray_local, model_id, image_folder):
    with pytest.raises(ConfigError, match=r"method 'fudd'.*single-process engine"):
        classify_with_ray(model_id, image_folder, CLASSES, method="fudd")


@pytest.mark.ray
def test_a_method_that_is_not_one_linear_head_is_caught_before_any_work(ray_local, model_id, image_folder, monkeypatch):
    def squared(clf, image_feats, class_names, options):  # scores with text weights, then bends the logits
        out = METHODS["templates"](clf, image_feats, class_names, options)
        return MethodOutput(out.logits ** 2, out.probs)

    monkeypatch.setitem(METHODS, "squared", squared)
    monkeypatch.setattr(distributed, "LINEAR_METHODS", (*distributed.LINEAR_METHODS, "squared"))
    with pytest.raises(ConfigError, match=r"method 'squared' did not score with one fixed set of text weights"):
        classify_with_ray(model_id, image_folder, CLASSES, method="squared")


@pytest.mark.ray
def test_dataset_rows_point_to_the_single_process_engine(ray_local, model_id, tmp_path):
    pytest.importorskip("datasets")
    ig.make_hf_dataset([ig.RED, ig.BLUE], [0, 1], ["red", "blue"]).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ConfigError, match=r"dataset row.*single-process engine"):
        classify_with_ray(model_id, tmp_path / "ds", CLASSES)


@pytest.mark.ray
def test_a_non_empty_output_folder_is_refused(ray_local, model_id, image_folder, tmp_path):
    (tmp_path / "old.parquet").write_bytes(b"earlier run")
    with pytest.raises(ConfigError, match=r"output folder '.*' exists and is not empty"):
        classify_with_ray(model_id, image_folder, CLASSES, output_dir=tmp_path)
    assert (tmp_path / "old.parquet").read_bytes() == b"earlier run"


@pytest.mark.ray
def test_random_init_weights_are_refused_because_each_worker_would_draw_others(ray_local, model_id, image_folder,
                                                                              monkeypatch):
    load = distributed._driver_classifier

    def random_init(*args):  # what load_model("ViT-B-32") without a pretrained tag gives
        clf = load(*args)
        clf.model.weights_fingerprint = "random-0123abcd"
        return clf

    monkeypatch.setattr(distributed, "_driver_classifier", random_init)
    with pytest.raises(ConfigError, match=r"random weights.*local-dir:"):
        classify_with_ray(model_id, image_folder, CLASSES)


@pytest.mark.parametrize("method", distributed.LINEAR_METHODS)
def test_text_weights_taken_on_the_driver_reproduce_each_linear_method(method, model_id, tmp_path):
    descriptors = tmp_path / "descriptors.json"
    descriptors.write_text(json.dumps({c: [f"a {c}-shaped outline", "four legs"] for c in CLASSES}))
    options = MethodOptions(descriptors=str(descriptors))
    clf = Classifier(model_id, device="cpu")
    image_feats = torch.nn.functional.normalize(torch.randn(6, 32, generator=torch.Generator().manual_seed(1)), dim=-1)

    head, _ = distributed._text_head(clf, method, CLASSES, options, dim=32)

    want = run_method(method, clf, image_feats, CLASSES, options).logits  # [6, C]
    got = compute_logits(image_feats, torch.from_numpy(head.weights), head.logit_scale, head.logit_bias)
    assert torch.allclose(got, want, atol=1e-5)


def test_missing_ray_names_the_install_command(monkeypatch, image_folder):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'vlmcls\[ray\]'"):
        classify_with_ray("ViT-B-32", image_folder, CLASSES)


@pytest.mark.ray
def test_cli_engine_ray_matches_the_single_engine(ray_local, model_id, tmp_path):
    """`vlmcls classify --engine ray` writes the same JSONL rows as the default engine."""
    from typer.testing import CliRunner

    from vlmcls.cli import app

    root = tmp_path / "imgs"
    ig.make_class_tree(root, {"a": [(200, 10, 10), (10, 200, 10)], "b": [(10, 10, 200)]})
    ig.write_empty(root / "b" / "empty.jpg")
    outs = {}
    for engine in ("single", "ray"):
        out = tmp_path / f"{engine}.jsonl"
        result = CliRunner().invoke(app, ["classify", str(root), "--classes", "a,b,c", "--model", model_id,
                                          "--engine", engine, "-o", str(out), "-q"], catch_exceptions=False)
        assert result.exit_code == 1, result.output  # the empty file
        outs[engine] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["path"], r["label"], r["error"]) for r in outs["ray"]] == [(r["path"], r["label"], r["error"]) for r in outs["single"]]
    assert len(outs["ray"]) == 4
