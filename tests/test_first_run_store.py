"""A first run's store writes (on a writer thread, one transaction per batch) and its uint8 hand-over on a CPU."""

import io
import threading

import numpy as np
import pytest
import torch

import imagegen as gen
from vlmcls import Classifier
from vlmcls.sources import records as image_sources  # where an image file's bytes are read
from vlmcls.encode.store import Store, clear_digest_memo
from vlmcls.errors import CacheError


def _folder(root, n=7, broken=None):
    for i in range(n):
        if i == broken:
            gen.write_text_as_image(root / f"{i:02d}.png")
        else:
            gen.write_solid(root / f"{i:02d}.png", (30 * i % 256, 200 - 20 * i, 90), size=(20 + i, 16))
    return root


def _count_reads(monkeypatch):
    reads: list[str] = []
    real = image_sources.read_file_bytes

    def counting(path, *args):
        reads.append(str(path))
        return real(path, *args)

    monkeypatch.setattr(image_sources, "read_file_bytes", counting)
    return reads


def test_a_broken_file_mid_batch_is_an_error_row_and_the_others_are_stored(tiny_open_clip, tmp_path, monkeypatch):
    folder = _folder(tmp_path / "imgs", n=5, broken=2)
    model = f"local-dir:{tiny_open_clip}"
    first = Classifier(model, cache_dir=tmp_path / "c", batch_size=8).encode_images(folder)
    assert [(r.path.name, reason) for r, reason in first.errors] == [("02.png", "not an image")]
    assert first.encoded == 4 and [r.path.name for r in first.records] == ["00.png", "01.png", "03.png", "04.png"]

    clear_digest_memo()  # as a new process: only the store knows the files
    reads = _count_reads(monkeypatch)
    again = Classifier(model, cache_dir=tmp_path / "c", batch_size=8).encode_images(folder)
    assert again.encoded == 0 and torch.equal(again.feats, first.feats)  # the four good files came from the store
    assert [p.rsplit("/", 1)[-1] for p in reads] == ["02.png"]  # unchanged good files are not even opened
    assert [reason for _, reason in again.errors] == ["not an image"]


def test_a_cache_write_failure_is_the_runs_error_and_earlier_batches_stay_stored(tiny_open_clip, tmp_path,
                                                                                 monkeypatch):
    folder = _folder(tmp_path / "imgs", n=7)
    model = f"local-dir:{tiny_open_clip}"
    real = Store.set_many
    calls = {"n": 0}

    def full_disk_on_second_batch(self, arrays=None, jsons=None):
        calls["n"] += bool(arrays)  # (the model's weight digests are stored too, without arrays)
        if calls["n"] == 2:
            raise CacheError("cannot use the cache (database or disk is full)")
        return real(self, arrays, jsons)

    monkeypatch.setattr(Store, "set_many", full_disk_on_second_batch)
    with pytest.raises(CacheError, match="disk is full"):
        Classifier(model, cache_dir=tmp_path / "c", batch_size=2).encode_images(folder)
    monkeypatch.setattr(Store, "set_many", real)
    assert not [t for t in threading.enumerate() if t.name == "vlmcls-store-writer"]  # the writer has ended
    again = Classifier(model, cache_dir=tmp_path / "c", batch_size=2).encode_images(folder)
    assert again.encoded == 5  # the first batch was stored before the failure


def test_an_interrupt_keeps_every_batch_encoded_before_it(tiny_open_clip, tmp_path, interrupt_encoding):
    folder = _folder(tmp_path / "imgs", n=7)
    model = f"local-dir:{tiny_open_clip}"
    restore = interrupt_encoding(3)
    progress: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        Classifier(model, cache_dir=tmp_path / "c", batch_size=2).encode_images(
            folder, progress=lambda done, total: progress.append(done))
    restore()
    assert progress[-1] == 4  # what the Ctrl-C message reports ...
    again = Classifier(model, cache_dir=tmp_path / "c", batch_size=2).encode_images(folder)
    assert again.encoded == 7 - 4  # ... is what the store holds when the run has ended


def test_on_a_cpu_workers_hand_over_uint8_and_the_features_are_the_float_paths(tiny_open_clip, tmp_path,
                                                                              monkeypatch):
    from vlmcls import models
    from vlmcls.encode.embeddings import Encoder
    from vlmcls.encode.images import list_images

    folder = _folder(tmp_path / "imgs", n=5)
    model = models.load_model(f"local-dir:{tiny_open_clip}", device="cpu")
    real = models.OpenClipBackend.encode_images
    dtypes = []

    def spy(self, pixels):
        dtypes.append(pixels.dtype)
        return real(self, pixels)

    monkeypatch.setattr(models.OpenClipBackend, "encode_images", spy)
    records = list_images(folder)
    default = Encoder(model).encode_images(records, batch_size=2)
    assert set(dtypes) == {torch.uint8}  # a quarter of the bytes; converted once per batch beside the model
    dtypes.clear()
    floats = Encoder(model, uint8_transfer=False).encode_images(records, batch_size=2)
    assert set(dtypes) == {torch.float32}
    assert torch.equal(default.feats, floats.feats)


@pytest.mark.parametrize("array", [
    np.arange(128, dtype=np.float32) / 7,
    np.arange(12, dtype=np.float16).reshape(3, 4),
    np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
    np.arange(10, dtype=np.float64)[::2],
    np.float32(2.5),
    np.arange(6, dtype=">i4"),
], ids=["f32", "f16-matrix", "fortran", "strided", "scalar", "big-endian"])
def test_stored_arrays_are_exactly_np_saves_bytes(tmp_path, array):
    """Features are written without np.save per array; the bytes stay those np.save writes for the C-ordered array,
    as before (older caches and newer ones read alike)."""
    store = Store(tmp_path / "c")
    for _ in range(2):  # the second write takes the remembered header
        store.set_arrays({"a": array})
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(array, order="C"), allow_pickle=False)
        assert store._get_raw(["a"])["a"] == buffer.getvalue()
        assert np.array_equal(store.get_array("a"), array)
