"""Phone photos: reduced-size JPEG decoding, each file read once per run, HEIC/AVIF, files that are not files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import imagegen as gen
import vlmcls.sources.records as sources_module  # where an image file's bytes are read
from vlmcls.encode.store import Store
from vlmcls.cli import app
from vlmcls.errors import ImageError
from vlmcls.encode.images import ImageRecord, iter_decoded_batches, list_images, load_image

DEMO_MODEL = Path(__file__).resolve().parents[1] / "vlmcls" / "data" / "demo_model"


def write_photo(path: Path, size=(2000, 1500), seed=0, **save) -> Path:
    """A photo-like JPEG: a red disc top left, a blue one bottom right, on a grainy green gradient."""
    width, height = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.empty((height, width, 3), np.float32)
    pixels[...] = (60, 150, 70)
    pixels += (xx / width * 40)[..., None]
    r = height / 5
    pixels[(xx - width * 0.2) ** 2 + (yy - height * 0.2) ** 2 < r * r] = (220, 30, 30)
    pixels[(xx - width * 0.8) ** 2 + (yy - height * 0.8) ** 2 < r * r] = (30, 40, 220)
    pixels += rng.normal(0, 6, pixels.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90, **save)
    return path


def mean_rgb(image, box):
    return np.asarray(image.crop(box), dtype=np.float64).reshape(-1, 3).mean(axis=0)


# -- reduced-size decoding ------------------------------------------------------------------------------------


def test_a_large_jpeg_decodes_at_reduced_size_with_the_same_picture(tmp_path):
    path = write_photo(tmp_path / "p.jpg")
    full = load_image(path)
    reduced = load_image(path, min_side=224)
    assert full.size == (2000, 1500)
    assert reduced.size == (500, 375)  # 1/4: the smallest DCT scale whose short side is still >= 224
    assert min(load_image(path, min_side=400).size) >= 400
    small_full = np.asarray(full.resize((200, 150), Image.BILINEAR), dtype=np.float64)
    small_reduced = np.asarray(reduced.resize((200, 150), Image.BILINEAR), dtype=np.float64)
    assert np.abs(small_full - small_reduced).mean() < 3  # the same picture, up to resampling


def test_reduced_decoding_keeps_exif_orientation_cmyk_and_progressive(tmp_path):
    photo = Image.open(write_photo(tmp_path / "base.jpg"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    photo.save(tmp_path / "rotated.jpg", quality=90, exif=exif.tobytes())
    rotated = load_image(tmp_path / "rotated.jpg", min_side=224)
    assert rotated.size == (375, 500)
    assert mean_rgb(rotated, (280, 30, 345, 95))[0] > 180  # the red disc moved to the top right

    photo.save(tmp_path / "progressive.jpg", quality=90, progressive=True)
    progressive = load_image(tmp_path / "progressive.jpg", min_side=224)
    assert progressive.size == (500, 375) and mean_rgb(progressive, (70, 45, 130, 105))[0] > 180

    photo.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=90)
    cmyk = load_image(tmp_path / "cmyk.jpg", min_side=224)
    assert cmyk.mode == "RGB" and cmyk.size == (500, 375)
    red = mean_rgb(cmyk, (70, 45, 130, 105))
    assert red[0] > 180 and red[2] < 90


def test_the_pixel_limit_still_counts_the_full_size(tmp_path):
    path = write_photo(tmp_path / "p.jpg")
    with pytest.raises(ImageError, match="2000×1500 pixels exceeds limit 1000000"):
        load_image(path, min_side=64, max_pixels=1_000_000)


def test_reduced_and_full_decoding_give_nearly_the_same_features_and_separate_cache_entries(tmp_path):
    from vlmcls import Classifier

    folder = tmp_path / "photos"
    for i in range(3):
        write_photo(folder / f"{i}.jpg", size=(1600, 1200), seed=i)
    clf = Classifier(f"local-dir:{DEMO_MODEL}", device="cpu", batch_size=4)
    reduced = clf.encode_images(folder)
    clf.encoder.reduced_decoding = False
    full = clf.encode_images(folder)
    assert reduced.encoded == full.encoded == 3  # not served from each other's cache entries
    cosines = (reduced.feats * full.feats).sum(dim=1)
    assert float(cosines.min()) > 0.99


# -- each file read once ------------------------------------------------------------------------------------


def _cat_and_dog_photos(folder: Path) -> list[str]:
    for i in range(3):
        write_photo(folder / "cat" / f"{i}.jpg", size=(800, 600), seed=i)
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        gen.write_solid(folder / "dog" / f"{i}.png", colour)
    return sorted(str(p) for p in folder.rglob("*.*"))


def test_each_image_file_is_opened_once_per_classify_run_report_included(tiny_open_clip, tmp_path, count_opens):
    folder = tmp_path / "photos"
    images = _cat_and_dog_photos(folder)
    counts = count_opens(folder)
    runner = CliRunner()
    args = ["classify", str(folder), "--classes", "cat,dog", "--model", f"local-dir:{tiny_open_clip}",
            "--report", str(tmp_path / "r.html"), "--output", str(tmp_path / "p.jsonl"), "-q"]
    first = runner.invoke(app, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert counts == {path: 1 for path in images}
    html = (tmp_path / "r.html").read_text()
    assert html.count("data:image/jpeg;base64,") == len(images)  # every thumbnail came from the decoded image
    counts.clear()
    again = runner.invoke(app, args, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert all(n <= 1 for n in counts.values())  # features cached: only thumbnails are read, once
    copy = folder / "cat" / "copy.jpg"  # known content under a new name: hashed, found in the store, not re-read
    copy.write_bytes((folder / "cat" / "0.jpg").read_bytes())
    counts.clear()
    third = runner.invoke(app, args, catch_exceptions=False)
    assert third.exit_code == 0, third.output
    assert counts[str(copy)] == 1
    assert (tmp_path / "r.html").read_text().count("data:image/jpeg;base64,") == len(images) + 1


def test_each_image_file_is_opened_once_per_eval_report_run(tiny_open_clip, tmp_path, count_opens):
    folder = tmp_path / "photos"
    images = _cat_and_dog_photos(folder)
    counts = count_opens(folder)
    args = ["eval", str(folder), "--classes", "cat,dog", "--model", f"local-dir:{tiny_open_clip}",
            "--report", str(tmp_path / "r.html"), "--output", str(tmp_path / "results.json"), "-q"]
    first = CliRunner().invoke(app, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert counts == {path: 1 for path in images}
    html = (tmp_path / "r.html").read_text()
    assert html.count("data:image/jpeg;base64,") == len(images)  # every thumbnail came from the decoded image
    counts.clear()
    again = CliRunner().invoke(app, args, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert counts == {path: 1 for path in images}  # features cached: only the gallery's thumbnails are read


@pytest.mark.parametrize("cached", [False, True], ids=["first-run", "features-cached"])
def test_a_watch_rescore_opens_no_image_file(tiny_open_clip, tmp_path, count_opens, monkeypatch, cached):
    from vlmcls.engines import watch  # the loop (and its clock) lives in the library

    folder = tmp_path / "photos"
    images = _cat_and_dog_photos(folder)
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    model = f"local-dir:{tiny_open_clip}"
    if cached:  # the watch's first run decodes nothing: its report reads the gallery's thumbnails, once each
        assert CliRunner().invoke(app, ["classify", str(folder), "--classes", str(classes), "--model", model,
                                        "-q"]).exit_code == 0
    counts = count_opens(folder)
    seen_at_rescore = {}
    real_sleep = watch.time.sleep

    def edit_classes_once(seconds):  # the loop's first poll: the first run is written, the user edits a file
        if not seen_at_rescore:
            seen_at_rescore.update(counts)
            counts.clear()
            classes.write_text("cat\ndog\nbird\n")
        real_sleep(0)

    monkeypatch.setattr(watch.time, "sleep", edit_classes_once)
    out, report = tmp_path / "p.jsonl", tmp_path / "r.html"
    result = CliRunner().invoke(app, ["classify", str(folder), "--classes", str(classes), "--model", model,
                                      "-o", str(out), "--report", str(report), "--watch", "--watch-limit", "1", "-q"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert seen_at_rescore == {path: 1 for path in images}  # the first run read each file once, report included
    assert "re-run after editing classes.txt" in " ".join(result.output.split())
    assert counts == {}  # the re-score and its report opened no image file
    assert report.read_text().count("data:image/jpeg;base64,") == len(images)
    assert "bird" in report.read_text()


def test_a_file_replaced_after_it_was_read_cannot_poison_the_cache(tiny_open_clip, tmp_path, monkeypatch):
    from vlmcls import Classifier

    folder = tmp_path / "photos"
    victim = gen.write_solid(folder / "a.png", (220, 20, 20))
    red_bytes = victim.read_bytes()
    real_read = sources_module.read_file_bytes

    def read_then_replace(path, *args):  # another program rewrites the file right after vlmcls read it
        out = real_read(path, *args)
        if Path(path) == victim and victim.read_bytes() == red_bytes:
            gen.write_solid(victim, (20, 20, 220))
        return out

    monkeypatch.setattr(sources_module, "read_file_bytes", read_then_replace)
    model = f"local-dir:{tiny_open_clip}"
    Classifier(model, batch_size=2).encode_images(folder)
    monkeypatch.setattr(sources_module, "read_file_bytes", real_read)
    elsewhere = tmp_path / "copy"
    elsewhere.mkdir()
    (elsewhere / "red.png").write_bytes(red_bytes)
    from_cache = Classifier(model, batch_size=2).encode_images(elsewhere)
    fresh = Classifier(model, batch_size=2, use_cache=False).encode_images(elsewhere)
    assert from_cache.encoded == 0  # the red picture's features were cached under the red bytes' key...
    assert torch.allclose(from_cache.feats, fresh.feats, atol=1e-6)  # ...and they are the red picture's


# -- files that are not image files ---------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/dev/zero").exists(), reason="needs FIFOs and /dev/zero")
def test_a_fifo_and_a_link_to_dev_zero_are_error_rows_not_hangs(tiny_open_clip, tmp_path):
    folder = tmp_path / "photos"
    gen.write_solid(folder / "ok.png")
    os.mkfifo(folder / "pipe.png")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    out = tmp_path / "p.jsonl"
    result = CliRunner().invoke(app, ["classify", str(folder), "--classes", "red,blue", "--model",
                                      f"local-dir:{tiny_open_clip}", "--output", str(out), "-q"],
                                catch_exceptions=False)
    assert result.exit_code == 1, result.output
    rows = {Path(r["path"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["ok.png"]["error"] is None
    assert rows["pipe.png"]["error"].startswith("not a regular file")
    assert rows["zero.jpg"]["error"].startswith("not a regular file")


def test_reads_are_bounded_by_the_byte_limit(tmp_path):
    path = write_photo(tmp_path / "p.jpg", size=(400, 300))
    size = path.stat().st_size
    with pytest.raises(ImageError, match=f"file too large: {size} bytes exceeds limit 1000"):
        load_image(path, max_bytes=1000)
    record = ImageRecord(id="row", path=None, label=None, source_index=0, fetch=path.read_bytes)
    with pytest.raises(ImageError, match="file too large"):
        load_image(record, max_bytes=1000)
    assert load_image(path, max_bytes=size).size == (400, 300)


# -- HEIC and AVIF ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".heic", ".avif"])
def test_heic_and_avif_photos_are_listed_and_decoded(tmp_path, suffix):
    if suffix == ".heic":
        pillow_heif = pytest.importorskip("pillow_heif")
        pillow_heif.register_heif_opener()  # also registers the encoder: this test writes the file
    elif "AVIF" not in Image.SAVE:
        pytest.skip("this Pillow cannot write AVIF")
    folder = tmp_path / "iphone"
    folder.mkdir()
    picture = Image.open(write_photo(tmp_path / "src.jpg", size=(640, 480))).convert("RGB")
    picture.save(folder / f"IMG_0001{suffix}", quality=90)
    assert (folder / f"IMG_0001{suffix}").read_bytes()[4:8] == b"ftyp"  # a real ISO-BMFF container
    [record] = list_images(folder)
    image = load_image(record)
    assert image.size == (640, 480) and image.mode == "RGB"
    assert mean_rgb(image, (100, 70, 150, 120))[0] > 170  # the red disc
    batches = list(iter_decoded_batches([record], lambda im: torch.zeros(3, 2, 2), batch_size=1))
    assert [r.id for b in batches for r in b.records_ok] == [record.id]


@pytest.mark.parametrize("orientation", [1, 6, 3, 8])
def test_a_heic_photo_decodes_its_embedded_thumbnail_when_it_is_large_enough(tmp_path, orientation):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    from vlmcls.encode.decoding import decode_image

    picture = Image.open(write_photo(tmp_path / "src.jpg", size=(1600, 1200))).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation  # as a phone held sideways writes it
    path = tmp_path / "IMG_0002.heic"
    picture.save(path, format="HEIF", quality=85, thumbnails=[320], exif=exif.tobytes())  # an iPhone's 320×240
    data = path.read_bytes()
    upright = (1200, 1600) if orientation in (6, 8) else (1600, 1200)
    full = decode_image(data)
    thumb = decode_image(data, min_side=224, heif_thumbnails=True)
    assert full.size == upright
    assert decode_image(data, min_side=224).size == upright  # JPEG's reduced decoding alone keeps every pixel
    assert thumb.size == (upright[0] // 5, upright[1] // 5)  # the thumbnail, turned as the picture is
    assert decode_image(data, min_side=241, heif_thumbnails=True).size == upright  # a thumbnail below the input is never used
    scaled = np.asarray(full.resize(thumb.size, Image.BILINEAR), dtype=np.float64)
    assert np.abs(scaled - np.asarray(thumb, dtype=np.float64)).mean() < 6  # the same picture, the same way up
    turned = np.asarray(full.rotate(90, expand=True).resize(thumb.size[::-1], Image.BILINEAR), dtype=np.float64)
    assert np.abs(turned - np.asarray(thumb.rotate(90, expand=True), dtype=np.float64)).mean() < 6


@pytest.fixture(scope="module")
def heic_photos(tmp_path_factory) -> Path:
    """Three iPhone-like HEICs, encoded once per module (HEVC encoding is the slow part); tests take copies."""
    pytest.importorskip("pillow_heif").register_heif_opener()
    root = tmp_path_factory.mktemp("heic")
    folder = root / "iphone"
    folder.mkdir()
    for i in range(3):
        picture = Image.open(write_photo(root / f"src{i}.jpg", size=(1600, 1200), seed=i)).convert("RGB")
        picture.save(folder / f"IMG_{i}.heic", format="HEIF", quality=85, thumbnails=[320])
    return folder


def _heic_folder(tmp_path: Path, heic_photos: Path) -> Path:
    folder = tmp_path / "iphone"
    shutil.copytree(heic_photos, folder)
    return folder


def test_heic_thumbnails_when_asked_encode_the_thumbnail_and_keep_its_features_apart(tmp_path, heic_photos):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    from vlmcls import Classifier
    from vlmcls.encode.decoding import decode_image

    folder = _heic_folder(tmp_path, heic_photos)
    every = Classifier(f"local-dir:{DEMO_MODEL}", device="cpu", cache_dir=tmp_path / "cache", batch_size=2)
    full = every.encode_images(str(folder))
    clf = Classifier(f"local-dir:{DEMO_MODEL}", device="cpu", cache_dir=tmp_path / "cache", batch_size=2,
                     heic_thumbnails=True)
    thumbs_run = clf.encode_images(str(folder))
    assert [r.id for r in thumbs_run.records] == [r.id for r in full.records] and len(full.records) == 3
    assert thumbs_run.encoded == 3  # the same store: every pixel's features are not taken for the thumbnail's
    side = clf.encoder.decode_min_side()  # the model's input side (64 px for the demo model)
    thumbs = [decode_image(p.read_bytes(), min_side=side, heif_thumbnails=True) for p in sorted(folder.iterdir())]
    assert {t.size for t in thumbs} == {(320, 240)}
    direct = clf.model.encode_images(torch.stack([clf.model.preprocess(t) for t in thumbs]))
    direct = direct / direct.norm(dim=1, keepdim=True)
    assert float((direct * thumbs_run.feats).sum(dim=1).min()) > 0.9999  # the thumbnails' pixels went in
    cos = (thumbs_run.feats * full.feats).sum(dim=1)
    assert float(cos.min()) > 0.98 and float(cos.max()) < 1 - 1e-6  # close, from other pixels


def test_classify_heic_thumbnails_flag_keeps_the_labels_and_changes_only_the_pixels(tmp_path, heic_photos):
    pytest.importorskip("pillow_heif").register_heif_opener()
    folder = _heic_folder(tmp_path, heic_photos)
    args = ["classify", str(folder), "--classes", "red,green,blue", "--model", f"local-dir:{DEMO_MODEL}",
            "--device", "cpu", "--cache", str(tmp_path / "cache"), "-q"]
    rows = {}
    for name, extra in (("every", []), ("thumbs", ["--decode", "heic_thumbnails=true"]), ("again", [])):
        result = CliRunner().invoke(app, [*args, *extra, "-o", str(tmp_path / f"{name}.jsonl")])
        assert result.exit_code == 0, result.output
        rows[name] = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows["thumbs"]] == [r["label"] for r in rows["every"]]
    assert [r["top_k"] for r in rows["thumbs"]] != [r["top_k"] for r in rows["every"]]  # other pixels went in
    assert rows["again"] == rows["every"]  # the default decodes every pixel of a HEIC, run after run


# -- the store's bulk access ------------------------------------------------------------------------------


def test_bulk_writes_and_reads_round_trip_across_query_chunks_and_replace_old_values(tmp_path):
    store = Store(tmp_path / "cache")
    arrays = {f"image:{i}": np.full(4, i, dtype=np.float32) for i in range(1200)}  # > 2 queries of 500 keys
    store.set_array("image:7", np.zeros(4, dtype=np.float32))  # an older value, replaced below
    store.set_many(arrays=arrays, jsons={"digest:a": "abc", "digest:b": {"x": 1}})
    got = store.get_arrays([*arrays, "image:missing"])
    assert set(got) == set(arrays) and all(np.array_equal(got[k], arrays[k]) for k in arrays)
    assert store.get_jsons(["digest:a", "digest:b", "digest:c"]) == {"digest:a": "abc", "digest:b": {"x": 1}}
    assert store.info()["entries"] == 1202
    store.close()
    reopened = Store(tmp_path / "cache")
    assert np.array_equal(reopened.get_array("image:1199"), arrays["image:1199"])
    assert reopened.clear("image") == 1200 and reopened.get_json("digest:a") == "abc"


@pytest.mark.parametrize("value", ["0" * 64, "ünïcode \u0000 \"quoted\"", ""])
def test_the_fast_key_function_gives_cache_keys_exactly(value):
    from vlmcls.encode.store import cache_key, cache_key_for

    parts = {"model": "ViT-B-32", "weights": "abc", "preprocess": {"size": 224}, "jpeg_min_side": 224}
    assert cache_key_for("image", "content", **parts)(value) == cache_key("image", content=value, **parts)


def test_the_fast_key_function_takes_several_values_in_any_order():
    from vlmcls.encode.store import cache_key, cache_key_for

    key = cache_key_for("digest", "path", "size", "inode", "mtime_ns", "ctime_ns")
    for path in ["/a/b.png", "/x/" + os.fsdecode(b"caf\xe9.png"), "/q/\"quoted\" ünï.png"]:
        assert key(path, 12, 34, 56, 78) == cache_key("digest", path=path, size=12, inode=34, mtime_ns=56, ctime_ns=78)
    mixed = cache_key_for("x", "b", "a", fixed={"k": [1, 2]})
    want = cache_key("x", a={"x": None, "y": 2}, b=[1, "z"], fixed={"k": [1, 2]})
    assert mixed([1, "z"], {"y": 2, "x": None}) == want


def test_stat_keys_are_the_cache_keys_of_the_files_stat(tmp_path):
    from vlmcls.encode.store import cache_key, stat_key

    for name in ["plain.png", os.fsdecode(b"caf\xe9.png")]:  # a non-UTF-8 name keeps its key
        path = tmp_path / name
        path.write_bytes(b"x")
        st = os.stat(path)
        assert stat_key(path) == cache_key("digest", path=str(path), size=st.st_size, inode=st.st_ino,
                                           mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)
    assert stat_key(tmp_path / "missing.png") is None and stat_key("bad\x00name.png") is None
