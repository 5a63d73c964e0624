"""Image sources, safe decoding and ordered batches (vlmcls.encode.images), on real files written in tmp_path."""

from __future__ import annotations

import gc
import hashlib
import os
import threading
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import vlmcls.encode.images as images_module
from vlmcls.errors import ConfigError, ImageError
from vlmcls.encode.images import (
    ImageRecord,
    content_key,
    iter_decoded_batches,
    list_images,
    load_image,
)

import imagegen as gen


def tiny_preprocess(image: Image.Image) -> torch.Tensor:
    """What a CLIP transform does, shrunk: resize, to float tensor [3, 8, 8] in [0, 1]."""
    array = np.asarray(image.resize((8, 8)), dtype=np.float32) / 255.0  # [8, 8, 3]
    return torch.from_numpy(array).permute(2, 0, 1)


def mean_rgb(image: Image.Image) -> tuple[float, float, float]:
    return tuple(np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0))


def all_batches(records, **kwargs):
    batches = list(iter_decoded_batches(records, tiny_preprocess, **kwargs))
    ok = [r for b in batches for r in b.records_ok]
    errors = [(r.id, reason) for b in batches for r, reason in b.errors]
    return batches, ok, errors


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Keep datasets' conversion cache (parquet, imagefolder) inside the test's tmp_path."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return datasets


# -- decoding: orientation and colour modes ---------------------------------------------------------------


def test_exif_orientation_turns_the_picture_upright(tmp_path):
    path = gen.write_exif_rotated_jpeg(tmp_path / "rotated.jpg", size=(40, 20), orientation=6)
    image = load_image(path)
    assert image.size == (20, 40)
    top_right = np.asarray(image)[1, -2]
    top_left = np.asarray(image)[1, 1]
    assert top_right[0] > 200 and top_right[2] < 60  # the red corner moved to the top right
    assert top_left[2] > 200 and top_left[0] < 60


def test_cmyk_jpeg_becomes_rgb_with_the_right_colour(tmp_path):
    image = load_image(gen.write_cmyk_jpeg(tmp_path / "cmyk.jpg"))
    assert image.mode == "RGB"
    r, g, b = mean_rgb(image)
    assert r > 230 and g < 25 and b < 25


def test_palette_transparency_becomes_white_not_black(tmp_path):
    pixels = np.asarray(load_image(gen.write_palette_png_with_transparency(tmp_path / "p.png")))
    assert tuple(pixels[0, 0]) == gen.WHITE
    assert tuple(pixels[0, -1]) == gen.RED


def test_rgba_is_composited_on_white(tmp_path):
    image = load_image(gen.write_rgba_png(tmp_path / "rgba.png"))
    pixels = np.asarray(image)
    assert image.mode == "RGB"
    assert tuple(pixels[0, 0]) == gen.WHITE  # transparent
    assert tuple(pixels[0, 5]) == gen.BLUE  # opaque
    assert all(120 <= v <= 135 for v in pixels[0, 10])  # half-transparent black over white is mid-gray


def test_gray_with_alpha_is_composited_on_white(tmp_path):
    assert mean_rgb(load_image(gen.write_la_png(tmp_path / "la.png"))) == (255.0, 255.0, 255.0)


def test_16bit_gray_is_scaled_not_clipped(tmp_path):
    path = gen.write_16bit_gray_png(tmp_path / "deep.png", values=(0, 32768, 65535))
    assert Image.open(path).mode.startswith("I")  # really a 16-bit file
    row = np.asarray(load_image(path))[0]  # [W, 3]
    assert tuple(row[0]) == (0, 0, 0)
    assert all(127 <= v <= 128 for v in row[5])  # mid-gray stays mid-gray
    assert tuple(row[-1]) == (255, 255, 255)


def test_1bit_and_grayscale_become_rgb(tmp_path):
    bilevel = np.asarray(load_image(gen.write_1bit_png(tmp_path / "bw.png")))
    assert bilevel.shape == (8, 16, 3)
    assert tuple(bilevel[0, 0]) == (0, 0, 0) and tuple(bilevel[0, -1]) == (255, 255, 255)
    gray = load_image(gen.write_gray_png(tmp_path / "g.png", level=100))
    assert gray.mode == "RGB" and mean_rgb(gray) == (100.0, 100.0, 100.0)


def test_load_image_accepts_bytes_and_records(tmp_path):
    path = gen.write_solid(tmp_path / "a.png", gen.BLUE)
    record = ImageRecord(id="a", path=path, label=None, source_index=0)
    assert mean_rgb(load_image(path.read_bytes())) == mean_rgb(load_image(record)) == (0.0, 0.0, 255.0)


# -- decoding: refusals -----------------------------------------------------------------------------------


@pytest.fixture
def decode_spy(monkeypatch):
    """Counts pixel decodes, to prove a refusal happened from the header alone."""
    calls = []
    original = ImageFile.ImageFile.load

    def spying_load(self):
        calls.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spying_load)
    return calls


def test_bomb_beyond_pils_hard_limit_is_refused_without_decoding(tmp_path, decode_spy):
    path = gen.write_png_header_only(tmp_path / "bomb.png", 100_000, 100_000)  # 3e10 bytes if decoded
    with pytest.raises(ImageError, match="image too large: 10000000000 pixels exceeds limit"):
        load_image(path)
    assert decode_spy == []


def test_bomb_in_pils_warning_range_is_refused_without_warning(tmp_path, decode_spy, recwarn):
    path = gen.write_png_header_only(tmp_path / "big.png", 10_000, 10_000)  # between 1x and 2x PIL's limit
    with pytest.raises(ImageError, match="image too large: 10000×10000 pixels exceeds limit 89478485"):
        load_image(path)
    assert decode_spy == []
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_pixel_limit_is_configurable(tmp_path, decode_spy):
    path = gen.write_solid(tmp_path / "ok.png", size=(64, 64))
    with pytest.raises(ImageError, match="image too large: 64×64 pixels exceeds limit 1000"):
        load_image(path, max_pixels=1000)
    assert decode_spy == []
    assert load_image(path, max_pixels=64 * 64).size == (64, 64)


@pytest.mark.parametrize(
    ("write", "reason"),
    [
        (lambda p: gen.write_empty(p / "empty.jpg"), "empty file"),
        (lambda p: gen.write_truncated_jpeg(p / "cut.jpg"), "truncated image"),
        (lambda p: gen.write_random_bytes(p / "noise.png"), "not an image"),
        (lambda p: gen.write_text_as_image(p / "notes.jpg"), "not an image"),
        (lambda p: p / "missing.jpg", "not found: {tmp_path}/missing.jpg"),
        (lambda p: p, "is a folder, not an image file"),
    ],
    ids=["zero-byte", "truncated-jpeg", "random-bytes", "text-as-jpg", "missing", "folder"],
)
def test_bad_files_raise_image_error_with_a_short_reason(tmp_path, write, reason):
    with pytest.raises(ImageError) as caught:
        load_image(write(tmp_path))
    assert str(caught.value) == reason.format(tmp_path=tmp_path)


@pytest.mark.parametrize("keep", [12, 20, 40])
def test_a_png_cut_inside_its_header_is_damaged_not_a_non_image(tmp_path, keep):
    good = gen.write_solid(tmp_path / "good.png").read_bytes()
    with pytest.raises(ImageError, match="^(corrupt|truncated) image"):
        load_image(good[:keep])


def test_truncated_images_stay_errors_and_the_global_flag_is_untouched(tmp_path):
    for _ in range(2):
        with pytest.raises(ImageError, match="truncated"):
            load_image(gen.write_truncated_jpeg(tmp_path / "cut.jpg"))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to count open files")
def test_no_file_handles_are_left_open(tmp_path):
    paths = [
        gen.write_solid(tmp_path / "a.png"),
        gen.write_exif_rotated_jpeg(tmp_path / "b.jpg"),
        gen.write_truncated_jpeg(tmp_path / "c.jpg"),
        gen.write_text_as_image(tmp_path / "d.jpg"),
        gen.write_png_header_only(tmp_path / "e.png", 100_000, 100_000),
    ]
    def open_test_files():  # only our files count: other tests' pools and caches may close fds meanwhile
        targets = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                targets.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
        return [t for t in targets if t.startswith(str(tmp_path))]

    assert open_test_files() == []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)  # a handle closed only by the GC warns here
        for _ in range(20):
            for path in paths:
                try:
                    load_image(path)
                except ImageError:
                    pass
        gc.collect()
    assert open_test_files() == []
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


# -- batches ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_workers, worker_type", [(0, "thread"), (2, "thread"), (2, "process")])
def test_bad_images_become_error_rows_and_the_rest_still_come_out(tmp_path, num_workers, worker_type):
    paths = [
        gen.write_solid(tmp_path / "0.png", gen.RED),
        gen.write_empty(tmp_path / "1.jpg"),
        gen.write_solid(tmp_path / "2.png", gen.BLUE),
        gen.write_truncated_jpeg(tmp_path / "3.jpg"),
        gen.write_random_bytes(tmp_path / "4.png"),
        gen.write_text_as_image(tmp_path / "5.jpg"),
        gen.write_solid(tmp_path / "6.png", gen.WHITE),
        tmp_path / "7-missing.jpg",
    ]
    records = [ImageRecord(id=p.name, path=p, label=None, source_index=i) for i, p in enumerate(paths)]
    batches, ok, errors = all_batches(records, batch_size=2, num_workers=num_workers, worker_type=worker_type)

    assert [r.id for r in ok] == ["0.png", "2.png", "6.png"]
    assert errors == [
        ("1.jpg", "empty file"),
        ("3.jpg", "truncated image"),
        ("4.png", "not an image"),
        ("5.jpg", "not an image"),
        ("7-missing.jpg", f"not found: {tmp_path / '7-missing.jpg'}"),
    ]
    pixels = torch.cat([b.pixels for b in batches])  # [3, 3, 8, 8]
    assert pixels.shape == (3, 3, 8, 8)
    colours = pixels.mean(dim=(2, 3))  # [3, 3]
    assert torch.allclose(colours, torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]]))
    assert all(len(b.records_ok) == b.pixels.shape[0] for b in batches)


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_batches_keep_input_order_when_decode_times_differ(tmp_path, worker_type):
    # Large and tiny files alternate, so workers finish out of order.
    records = []
    for level in range(24):
        size = (900, 700) if level % 3 == 0 else (8, 8)
        path = gen.write_solid(tmp_path / f"{level:02d}.png", (level * 10, level * 10, level * 10), size)
        records.append(ImageRecord(id=path.name, path=path, label=None, source_index=level))
    batches, ok, errors = all_batches(records, batch_size=5, num_workers=3, worker_type=worker_type)

    assert errors == []
    assert [len(b.records_ok) for b in batches] == [5, 5, 5, 5, 4]
    assert [r.id for r in ok] == [r.id for r in records]
    levels = torch.cat([b.pixels for b in batches]).mean(dim=(1, 2, 3)) * 255  # [24]
    assert torch.allclose(levels, torch.arange(24, dtype=torch.float32) * 10, atol=0.5)


def test_records_are_pulled_lazily_and_an_early_stop_ends_the_workers(tmp_path):
    path = gen.write_solid(tmp_path / "x.png")
    pulled = []

    def endless():
        index = 0
        while True:
            pulled.append(index)
            yield ImageRecord(id=str(index), path=path, label=None, source_index=index)
            index += 1

    batches = iter_decoded_batches(
        endless(), tiny_preprocess, batch_size=4, num_workers=2, prefetch_batches=1
    )
    first = next(batches)
    assert len(first.records_ok) == 4
    # the 4 yielded plus at most the in-flight window of 4 * (1 + 1), not the whole (endless) source
    assert len(pulled) <= 4 + 4 * (1 + 1)
    batches.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("vlmcls-decode")]


def test_an_early_stop_ends_the_worker_processes(tmp_path):
    import multiprocessing

    paths = [gen.write_solid(tmp_path / f"{i}.png", (i, i, i)) for i in range(40)]
    records = [ImageRecord(id=p.name, path=p, label=None, source_index=i) for i, p in enumerate(paths)]
    before = set(multiprocessing.active_children())
    batches = iter_decoded_batches(records, tiny_preprocess, batch_size=4, num_workers=2, worker_type="process")
    assert len(next(batches).records_ok) == 4
    assert len(set(multiprocessing.active_children()) - before) == 2
    batches.close()
    assert set(multiprocessing.active_children()) - before == set()


def _records(tmp_path, n, fetch=None):
    return [ImageRecord(id=str(i), path=tmp_path / f"{i}.jpg", label=None, source_index=i, fetch=fetch)
            for i in range(n)]


def test_worker_type_auto_is_threads_and_processes_take_files_only(tmp_path):
    from vlmcls.encode.images import choose_worker_type

    files = _records(tmp_path, 256)
    assert choose_worker_type("auto", files) == "thread"  # measured faster end to end
    assert choose_worker_type("Process", files) == "process"
    rows = _records(tmp_path, 256, fetch=lambda: b"")
    assert choose_worker_type("process", rows) == "thread"  # dataset rows stay on threads
    with pytest.raises(ConfigError, match="unknown worker type 'fibers'"):
        choose_worker_type("fibers", files)


def test_a_failing_preprocess_becomes_an_error_row(tmp_path):
    paths = [
        gen.write_solid(tmp_path / "small.png", size=(4, 4)),
        gen.write_solid(tmp_path / "big.png", size=(32, 32)),
    ]
    records = [ImageRecord(id=p.name, path=p, label=None, source_index=i) for i, p in enumerate(paths)]

    def picky(image):
        if image.size[0] < 8:
            raise ValueError("image smaller than the crop")
        return tiny_preprocess(image)

    batches = list(iter_decoded_batches(records, picky, batch_size=8, num_workers=1))
    assert [r.id for b in batches for r in b.records_ok] == ["big.png"]
    [(record, reason)] = [e for b in batches for e in b.errors]
    assert record.id == "small.png" and "image smaller than the crop" in reason


def test_a_batch_of_only_failures_has_an_empty_pixel_tensor(tmp_path):
    record = ImageRecord(id="gone", path=tmp_path / "gone.jpg", label=None, source_index=0)
    [batch] = iter_decoded_batches([record], tiny_preprocess, batch_size=4)
    assert batch.records_ok == [] and batch.pixels.shape[0] == 0
    assert batch.errors == [(record, f"not found: {tmp_path / 'gone.jpg'}")]


def test_batch_size_must_be_positive():
    with pytest.raises(ConfigError, match="batch_size"):
        next(iter_decoded_batches([], tiny_preprocess, batch_size=0))


# -- sources: folders, path lists, single files ---------------------------------------------------------


def test_folder_with_class_subfolders_gives_labels_in_a_stable_order(tmp_path):
    root = tmp_path / "photos"
    gen.make_class_tree(root, {"dog": [gen.RED, gen.BLUE], "cat": [gen.WHITE]})
    gen.write_solid(root / "loose.png")
    gen.write_solid(root / "cat" / "indoor" / "deep.JPG")  # upper-case suffix, nested one level deeper
    gen.write_solid(root / ".hidden.png")
    gen.write_solid(root / ".thumbs" / "t.png")
    gen.write_text_as_image(root / "dog" / "notes.txt")

    records = list_images(root)
    listed = [(Path(r.id).relative_to(root).as_posix(), r.label) for r in records]
    assert listed == [
        ("cat/0.png", "cat"),
        ("cat/indoor/deep.JPG", "cat"),
        ("dog/0.png", "dog"),
        ("dog/1.png", "dog"),
        ("loose.png", None),
    ]
    assert [r.source_index for r in records] == list(range(5))
    assert all(r.path == Path(r.id) and r.path.is_file() for r in records)
    assert [r.id for r in list_images(root, recursive=False)] == [str(root / "loose.png")]


def test_a_relative_folder_gives_the_listed_relative_paths(tmp_path, monkeypatch):
    gen.make_class_tree(tmp_path / "photos", {"cat": [gen.RED, gen.BLUE]})
    gen.write_solid(tmp_path / "photos" / "loose.png")
    monkeypatch.chdir(tmp_path / "photos")
    records = list_images(".")
    assert [(r.id, r.label) for r in records] == [("cat/0.png", "cat"), ("cat/1.png", "cat"), ("loose.png", None)]
    assert all(r.path == Path(r.id) and str(r.path) == r.id and r.path.is_file() for r in records)
    monkeypatch.chdir(tmp_path)
    again = list_images("photos/")
    assert [r.id for r in again] == ["photos/cat/0.png", "photos/cat/1.png", "photos/loose.png"]
    assert all(r.path == Path(r.id) and r.path.parts == Path(r.id).parts for r in again)


def test_empty_folder_is_a_config_error_naming_it(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ConfigError, match="no images found .*nothing"):
        list_images(tmp_path / "nothing")


def test_path_list_resolves_against_its_own_folder(tmp_path, monkeypatch):
    data = tmp_path / "data"
    gen.write_solid(data / "imgs" / "a.png", gen.RED)
    absolute = gen.write_solid(tmp_path / "elsewhere" / "b.png", gen.BLUE)
    list_file = data / "list.txt"
    lines = ["# my test set", "imgs/a.png", "", "   ", str(absolute), "imgs/missing.png"]
    list_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path / "elsewhere")  # relative entries must not depend on the working directory

    records = list_images(list_file)
    assert [r.path for r in records] == [data / "imgs" / "a.png", absolute, data / "imgs" / "missing.png"]
    assert all(r.label is None for r in records)
    _, ok, errors = all_batches(records, batch_size=8)
    assert [r.path.name for r in ok] == ["a.png", "b.png"]
    assert errors == [(str(data / "imgs" / "missing.png"), f"not found: {data / 'imgs' / 'missing.png'}")]


def test_single_image_file_is_a_source(tmp_path):
    path = gen.write_solid(tmp_path / "one.webp")
    [record] = list_images(path)
    assert record.path == path and record.id == str(path) and record.label is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "nope", "does not exist"),
        (lambda p: gen.write_text_as_image(p / "table.csv"), "cannot read images from"),
    ],
    ids=["missing", "unknown-kind"],
)
def test_unknown_sources_are_config_errors_that_say_what_is_accepted(tmp_path, make, message):
    source = make(tmp_path)
    with pytest.raises(ConfigError) as caught:
        list_images(source)
    assert message in str(caught.value) and f"'{source}'" in str(caught.value)
    assert ".txt file" in str(caught.value)


def test_dataset_options_on_a_folder_are_rejected(tmp_path):
    gen.write_solid(tmp_path / "a.png")
    with pytest.raises(ConfigError, match="split"):
        list_images(tmp_path, split="test")


# -- sources: HF datasets ---------------------------------------------------------------------------------


COLOURS = [gen.RED, gen.BLUE, gen.WHITE]


def test_saved_dataset_gives_label_names_and_decodes_rows(tmp_path, hf_cache):
    gen.make_hf_dataset(COLOURS, [1, 0, 1], ["cat", "dog"]).save_to_disk(str(tmp_path / "pets"))
    records = list_images(tmp_path / "pets")
    assert [r.id for r in records] == ["pets[train]/0", "pets[train]/1", "pets[train]/2"]
    assert [r.label for r in records] == ["dog", "cat", "dog"]
    assert all(r.path is None for r in records)
    assert [mean_rgb(load_image(r)) for r in records] == [tuple(map(float, c)) for c in COLOURS]


def test_saved_dataset_dict_needs_a_split_when_it_has_several(tmp_path, hf_cache):
    datasets = hf_cache
    splits = datasets.DatasetDict(
        train=gen.make_hf_dataset(COLOURS, [0, 1, 0], ["cat", "dog"]),
        test=gen.make_hf_dataset([gen.BLUE], [1], ["cat", "dog"]),
    )
    splits.save_to_disk(str(tmp_path / "pets"))
    with pytest.raises(ConfigError, match="'train', 'test'|'test', 'train'"):
        list_images(tmp_path / "pets")
    with pytest.raises(ConfigError, match="no split 'valid'"):
        list_images(tmp_path / "pets", split="valid")
    [record] = list_images(tmp_path / "pets", split="test")
    assert record.id == "pets[test]/0" and record.label == "dog"
    assert mean_rgb(load_image(record)) == (0.0, 0.0, 255.0)


def test_parquet_file_is_a_source(tmp_path, hf_cache):
    gen.make_hf_dataset(COLOURS, [0, 0, 1], ["cat", "dog"]).to_parquet(str(tmp_path / "pets.parquet"))
    records = list_images(tmp_path / "pets.parquet")
    assert [r.label for r in records] == ["cat", "cat", "dog"]
    assert records[2].id == "pets[train]/2"
    _, ok, errors = all_batches(records, batch_size=2)
    assert errors == [] and [r.id for r in ok] == [r.id for r in records]


def test_imagefolder_source_uses_the_class_folders(tmp_path, hf_cache):
    gen.make_class_tree(tmp_path / "photos", {"cat": [gen.RED], "dog": [gen.BLUE, gen.WHITE]})
    records = list_images(f"imagefolder:{tmp_path / 'photos'}")
    assert sorted(r.label for r in records) == ["cat", "dog", "dog"]
    by_label = {r.label: mean_rgb(load_image(r)) for r in records if r.label == "cat"}
    assert by_label == {"cat": (255.0, 0.0, 0.0)}


def test_dataset_column_errors_list_the_columns(tmp_path, hf_cache):
    gen.make_hf_dataset(COLOURS, [0, 0, 1], ["cat", "dog"]).save_to_disk(str(tmp_path / "pets"))
    with pytest.raises(ConfigError, match="no column 'photo'.*image, label"):
        list_images(tmp_path / "pets", image_column="photo")
    with pytest.raises(ConfigError, match="no column 'class'"):
        list_images(tmp_path / "pets", label_column="class")


def test_in_memory_dataset_with_plain_label_columns(hf_cache):
    datasets = hf_cache
    dataset = datasets.Dataset.from_dict(
        {"picture": [gen.solid(gen.RED)], "label": ["tabby"], "year": [1999]},
        features=datasets.Features(
            {"picture": datasets.Image(), "label": datasets.Value("string"), "year": datasets.Value("int32")}
        ),
    )
    [record] = list_images(dataset)  # the image column is found by type, "label" by name
    assert record.label == "tabby" and mean_rgb(load_image(record)) == (255.0, 0.0, 0.0)
    assert list_images(dataset, label_column="year")[0].label == "1999"


# -- content keys -----------------------------------------------------------------------------------------


def test_content_key_follows_the_bytes_not_the_name(tmp_path):
    a = gen.write_solid(tmp_path / "a.png", gen.RED)
    renamed = tmp_path / "sub" / "renamed.png"
    renamed.parent.mkdir()
    renamed.write_bytes(a.read_bytes())
    other = gen.write_solid(tmp_path / "b.png", gen.BLUE)
    assert content_key(a) == content_key(renamed) == hashlib.sha256(a.read_bytes()).hexdigest()
    assert content_key(other) != content_key(a)
    with pytest.raises(ImageError, match=r"^not found: /.*/gone\.png$"):
        content_key(tmp_path / "gone.png")


def test_content_key_of_a_dataset_row_hashes_its_image_bytes(tmp_path, hf_cache):
    dataset = gen.make_hf_dataset([gen.RED, gen.RED, gen.BLUE], [0, 1, 0], ["cat", "dog"])
    dataset.save_to_disk(str(tmp_path / "d"))
    first, second, third = list_images(tmp_path / "d")
    assert content_key(first) == content_key(second) != content_key(third)
    assert content_key(first) == hashlib.sha256(first.fetch()).hexdigest()


def test_public_surface():
    assert set(images_module.__all__) == {
        "IMAGE_EXTENSIONS",
        "DEFAULT_MAX_PIXELS",
        "DEFAULT_MAX_BYTES",
        "ImageRecord",
        "DecodedBatch",
        "list_images",
        "load_image",
        "decode_image",
        "content_key",
        "digest_of",
        "thumbnail_jpeg",
        "iter_decoded_batches",
        "default_decode_workers",
        "choose_worker_type",
        "WORKER_TYPES",
    }
