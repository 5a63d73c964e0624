"""The Ray engine gives the single-process engine's rows, error rows included, and writes readable shards."""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import imagegen as ig
from test_images import hf_cache  # noqa: F401  (a fixture: datasets' conversion cache inside tmp_path)
from test_photos import write_photo  # (count_opens is a fixture in conftest.py)
from vlmcls import distributed
from vlmcls.api import Classifier
from vlmcls.engines.ray import classify_with_ray
from vlmcls.errors import ConfigError, MissingExtraError
from vlmcls.encode.feature_store import read_feats
from vlmcls.encode.images import list_images
from vlmcls.report.evaluate import options_for_spec
from vlmcls.methods import MethodOptions

CLASSES = ["cat", "dog", "car", "tree"]
BROKEN = {  # file name -> the reason both engines must give
    "empty.jpg": "empty file",
    "cut.jpg": "truncated image",
    "noise.png": "not an image",
    "notes.jpg": "not an image",
}


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


@pytest.fixture(scope="module")
def method_inputs(tmp_path_factory) -> dict:
    """Files the methods read: descriptors, a FuDD pair file for every pair, a support folder, one feature store."""
    root = tmp_path_factory.mktemp("method_inputs")
    descriptors = root / "descriptors.json"
    descriptors.write_text(json.dumps({c: [f"a {c}-shaped outline", "four legs", f"{c} colours"] for c in CLASSES}))
    pairs = {f"{a}_{b}": {"classes": [a, b], "prompt_pairs": [
        {"attr_type": "shape", "prompt_pair": [f"a photo of a round {a}.", f"a photo of a square {b}."]},
        {"attr_type": "colour", "prompt_pair": [f"a red {a}.", f"a blue {b}."]}]}
        for i, a in enumerate(CLASSES) for b in CLASSES[i + 1:]}
    (root / "pairs.json").write_text(json.dumps(pairs))
    cupl = {c: [f"A photo of a {c}, seen from the side.", f"A {c} in bright daylight."] for c in CLASSES}
    (root / "cupl.json").write_text(json.dumps(cupl))
    for c, colour in zip(CLASSES, (ig.RED, ig.BLUE, (20, 200, 20), (200, 200, 20))):
        ig.write_solid(root / "support" / c / "0.png", colour)
        ig.write_noise_jpeg(root / "support" / c / "1.jpg", size=(36, 30), seed=len(c))
    return {"descriptors": descriptors, "pairs": root / "pairs.json", "cupl": root / "cupl.json", "support": root / "support",
            "store": root / "feature-store"}


# Every head and every later stage at least once, a chain of all of them, and a stage named alone (it picks its
# head): the Ray rows must be the single engine's, explanations included. (Few runs: Ray is slow on a busy box.)
CHAIN = "cbd+fudd+tip+tfup+frechet"
SPECS = ["name+tip", "templates+tfup", "waffle+frechet", "cupl+tip", CHAIN, "fudd"]


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    """16 files: 13 images in class folders and a loose one, an empty file and a truncated one."""
    root = tmp_path_factory.mktemp("ray_small")
    for i in range(12):
        ig.write_noise_jpeg(root / ("a", "b", "c")[i % 3] / f"{i:02d}.jpg", size=(40 + i, 32), seed=i)
    ig.write_solid(root / "a" / "red.png", ig.RED)
    ig.write_gray_png(root / "gray.png")
    ig.write_empty(root / "a" / "empty.jpg")
    ig.write_truncated_jpeg(root / "b" / "cut.jpg")
    return root


@pytest.mark.ray
@pytest.mark.parametrize("spec", SPECS)
def test_every_method_and_refiner_gives_the_single_engine_rows_on_ray(ray_local, model_id, small_folder, method_inputs,
                                                                       spec, tmp_path, monkeypatch):
    options = MethodOptions(descriptors=str(method_inputs["descriptors"]), explain=True, methods={
        "tip": {"support": method_inputs["support"], "tune": True}, "frechet": {"self_metric": True},
        "fudd": {"pairs": str(method_inputs["pairs"]), "k": 3}, "cupl": {"file": str(method_inputs["cupl"])}})
    options = options_for_spec(spec, options)  # only the refiners the spec names, as eval does
    single = Classifier(model_id, device="cpu", use_cache=False).classify(small_folder, CLASSES, method=spec,
                                                                          options=options, top_k=3)
    log = tmp_path / "applies.txt"
    if spec == CHAIN:  # the longest chain counts how many images each stage scores on the workers
        _count_stage_applies(spec, log, monkeypatch)

    result = classify_with_ray(model_id, small_folder, CLASSES, method=spec, options=options, top_k=3, batch_size=4,
                               num_workers=1, feature_store=method_inputs["store"], carry_scores=spec != "fudd")

    if spec == CHAIN:  # FuDD's pairs and the self-cache need passes of the stages before them, yet each stage
        # scores each image once: the rows carry their scores ('fudd' alone runs with carry_scores=False, re-running)
        seen: dict[str, int] = {}
        for line in log.read_text().split("\n"):
            if line:
                name, images = line.split()
                seen[name] = seen.get(name, 0) + int(images)
        shots = sum(1 for f in method_inputs["support"].rglob("*") if f.is_file())  # tip.tune scores them too
        assert seen == {"cbd": len(result.ok) + shots, "fudd": len(result.ok) + shots, "tip": len(result.ok),
                        "tfup": len(result.ok), "frechet": len(result.ok)}  # (the head ran once per gather, and again)
    assert_same_rows(result.rows(), single.rows())
    assert_same_tree([r.get("explanation") for r in result.rows()], [r.get("explanation") for r in single.rows()])
    assert torch.allclose(result.probs, single.probs, atol=1e-5)
    assert result.stats["errors"] == len(single.errors) == 2
    for key in ("unique_pairs", "pairs_answered", "images_moved", "tip_alpha", "self_cache_per_class",
                "label_space_size"):
        assert result.stats.get(key) == single.stats.get(key), key


def assert_same_tree(got, want, path="") -> None:
    """Equal explanations: the same keys, texts and lists; numbers within 1e-4 (logits on the scale of 100 differ
    in the last float32 digits when the batches differ)."""
    if isinstance(want, float) or isinstance(got, float):
        assert got == pytest.approx(want, abs=1e-4), path
    elif isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), path
        for key in want:
            assert_same_tree(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), path
        for n, (g, w) in enumerate(zip(got, want)):
            assert_same_tree(g, w, f"{path}[{n}]")
    else:
        assert got == want, path


@pytest.mark.ray
def test_a_second_run_with_other_classes_encodes_nothing_and_asks_the_llm_once_per_pair(
        ray_local, model_id, small_folder, tmp_path):
    from llm_server import FakeLLMServer

    from vlmcls.llm.client import LLMClient, LLMConfig

    store = tmp_path / "features"
    first = classify_with_ray(model_id, small_folder, CLASSES, top_k=2, batch_size=4, num_workers=1,
                              feature_store=store)
    assert first.stats["encoded"] == 14 and first.stats["cached"] == 0  # 16 files, 2 broken
    shards = sorted(store.rglob("part-*.parquet"))
    assert shards
    (shards[0].parent / "part-garbage.parquet").write_bytes(b"not parquet")  # a damaged shard is skipped

    other = ["lion", "boat", "cloud"]
    server = FakeLLMServer().start()
    try:
        llm = LLMClient(LLMConfig(model="fake-model", base_url=server.base_url, timeout_s=10), None)
        options = MethodOptions(llm=llm, methods={"fudd": {"k": 2}})
        again = classify_with_ray(model_id, small_folder, other, method="templates+fudd", options=options, top_k=2,
                                  batch_size=4, num_workers=1, feature_store=store)
        asked = len(server.chat_requests)
    finally:
        server.stop()
    assert again.stats["encoded"] == 0 and again.stats["cached"] == 14  # every feature came from the store
    assert 1 <= asked == again.stats["unique_pairs"] == again.stats["pairs_answered"]  # each pair once
    assert {p.label for p in again.ok} <= set(other)
    assert sum(p.error is not None for p in again.predictions) == 2


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Phone-size JPEGs (decoded at reduced size) and small images, in class folders (bad files: see above)."""
    root = tmp_path_factory.mktemp("ray_photos")
    for i in range(3):
        write_photo(root / ("a", "b")[i % 2] / f"photo{i}.jpg", size=(1600, 1200), seed=i)
    ig.write_noise_jpeg(root / "a" / "small.jpg", size=(60, 40), seed=3)
    ig.write_solid(root / "b" / "blue.png", ig.BLUE)
    return root


@pytest.mark.ray
def test_ray_reads_each_new_file_once_on_a_worker_and_decodes_large_jpegs_as_the_single_engine(
        ray_local, model_id, photos, tmp_path, count_opens, hf_cache, monkeypatch):
    import pyarrow.parquet as pq

    single_clf = Classifier(model_id, device="cpu", cache_dir=tmp_path / "single")
    single = single_clf.classify(photos, CLASSES, top_k=3)
    full = Classifier(model_id, device="cpu", use_cache=False)
    full.encoder.reduced_decoding = False
    # full decoding gives other probabilities, ten times the tolerance below away at least: the test can tell
    assert float((full.classify(photos, CLASSES, top_k=3).probs - single.probs).abs().max()) > 1e-4
    cache = tmp_path / "ray"
    opened = count_opens(photos)

    first = classify_with_ray(model_id, photos, CLASSES, top_k=3, batch_size=2, num_workers=1, cache_dir=cache)

    assert opened == {}  # the driver only stat-ed the files; workers read, hashed and decoded them
    assert first.stats["encoded"] == 5 and first.stats["errors"] == 0
    assert_same_rows(first.rows(), single.rows())
    assert torch.allclose(first.probs, single.probs, atol=1e-5)
    # Both engines key a feature by the same parts and content: the Ray store's feature of each image is the single
    # engine's stored feature under that image's key.
    records = list_images(photos)
    digests = Classifier(model_id, device="cpu", cache_dir=cache).encoder.known_digests(records)  # learned from Ray
    assert sorted(digests.values()) == sorted(hashlib.sha256(r.path.read_bytes()).hexdigest() for r in records)
    shards = sorted((cache / "features").rglob("part-*.parquet"))
    ray_feats = {d: f for shard in shards for d, f in zip(pq.read_table(shard).column("digest").to_pylist(),
                                                          read_feats(pq.read_table(shard), 32))}
    key = single_clf.encoder._image_key_function()
    stored = single_clf.store.get_arrays([key(d) for d in digests.values()])
    for digest in digests.values():
        assert np.allclose(ray_feats[digest], stored[key(digest)], atol=1e-5)

    # A second run, here through imagefolder: (the same files as dataset rows): nothing is read or encoded.
    monkeypatch.setattr(distributed, "_encode", lambda *args: pytest.fail("a worker was asked to read an image"))
    source = f"imagefolder:{photos}"
    opened.clear()
    again = classify_with_ray(model_id, source, CLASSES, top_k=3, batch_size=2, num_workers=1, cache_dir=cache)
    assert opened == {}
    assert again.stats["encoded"] == 0 and again.stats["cached"] == 5
    assert_same_rows(again.rows(), Classifier(model_id, device="cpu", use_cache=False).classify(source, CLASSES,
                                                                                                top_k=3).rows())


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    ig.solid(colour, (40, 32)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def hf_dataset(tmp_path_factory) -> Path:
    """An Image column and a ClassLabel column, saved with save_to_disk in two Arrow files (``ds``) and as Parquet
    in row groups of three (``ds.parquet``): six images (one a large JPEG), bytes that are no image, a truncated
    JPEG and a row without an image."""
    datasets = pytest.importorskip("datasets")
    root = tmp_path_factory.mktemp("ray_dataset")
    truncated = ig.write_truncated_jpeg(root / "cut.jpg").read_bytes()
    photo = write_photo(root / "photo.jpg", size=(1600, 1200)).read_bytes()
    cells = [{"bytes": _png(c), "path": None} for c in (ig.RED, ig.BLUE, (20, 200, 20), ig.WHITE, (90, 90, 90))]
    cells += [{"bytes": photo, "path": None}, {"bytes": b"no picture here", "path": None},
              {"bytes": truncated, "path": None}, None]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    dataset = datasets.Dataset.from_dict({"image": cells, "label": [i % 4 for i in range(len(cells))]},
                                         features=features)
    dataset.save_to_disk(str(root / "ds"), num_shards=2)
    dataset.to_parquet(str(root / "ds.parquet"), batch_size=3)
    return root


@pytest.mark.ray
def test_hf_datasets_on_ray_give_the_single_engine_rows_through_the_cli_and_the_api(
        ray_local, model_id, hf_dataset, hf_cache, tmp_path):
    from typer.testing import CliRunner

    from vlmcls.cli import app

    outs = {}
    for engine in ("single", "ray"):
        out = tmp_path / f"{engine}.jsonl"
        result = CliRunner().invoke(app, ["classify", str(hf_dataset / "ds"), "--classes", ",".join(CLASSES),
                                          "--model", model_id, "--dataset", "image_column=image", "--engine", engine,
                                          "--batch-size", "2", "--top-k", "3", "-o", str(out), "-q"],
                                    catch_exceptions=False)
        assert result.exit_code == 1, result.output  # three rows without a picture
        outs[engine] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in outs["ray"]] == [f"ds[train]/{i}" for i in range(9)]
    assert_same_rows(outs["ray"], outs["single"])
    assert [r["error"] for r in outs["ray"][6:]] == ["not an image", "truncated image",
                                                     "no image in column 'image' (found NoneType)"]

    # The Parquet copy: Ray tasks read its row groups; the features are the ones just stored (same content).
    single = Classifier(model_id, device="cpu", use_cache=False).classify(hf_dataset / "ds.parquet", CLASSES, top_k=3)
    result = classify_with_ray(model_id, hf_dataset / "ds.parquet", CLASSES, top_k=3, batch_size=2, num_workers=1)
    assert result.stats["encoded"] == 0 and result.stats["cached"] == 6
    assert_same_rows(result.rows(), single.rows())
    assert torch.allclose(result.probs, single.probs, atol=1e-5)


def test_dataset_rows_handed_over_alone_and_in_memory_datasets_are_refused_with_what_to_give(model_id, tmp_path):
    datasets = pytest.importorskip("datasets")
    dataset = ig.make_hf_dataset([ig.RED, ig.BLUE], [0, 1], ["red", "blue"])
    dataset.save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ConfigError, match=r"dataset row handed over alone.*save_to_disk folder"):
        classify_with_ray(model_id, list_images(tmp_path / "ds"), CLASSES)
    with pytest.raises(ConfigError, match=r"in-memory dataset.*save_to_disk"):
        classify_with_ray(model_id, dataset, CLASSES)
    assert datasets.load_from_disk(str(tmp_path / "ds")).num_rows == 2


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


def _count_stage_applies(spec: str, log: Path, monkeypatch) -> None:
    """Every stage of ``spec``, as prepared on the driver, notes its applies in ``log`` (see _count_applies)."""
    import dataclasses

    import ray.cloudpickle
    from vlmcls.methods import METHODS

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test file
    for name in spec.split("+"):
        record = METHODS[name]

        def counted(context, config, upstream, gather, report, _prepare=record.prepare, _name=name):
            return _count_applies(_prepare(context, config, upstream, gather, report), _name, log)
        monkeypatch.setitem(METHODS, name, dataclasses.replace(record, prepare=counted))


def _count_applies(stage, name: str, log: Path):
    """The prepared stage, noting in a file every worker can reach how many images each of its applies saw."""
    own = type(stage).apply

    def apply(feats, *args, **kwargs):
        with open(log, "a") as out:
            out.write(f"{name} {feats.shape[0]}\n")
        return own(stage, feats, *args, **kwargs)

    object.__setattr__(stage, "apply", apply)  # this instance only; it travels to the workers with the pipeline
    return stage
