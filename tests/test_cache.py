"""The store's array format, its bulk reads and the per-process file-digest memo."""

import os

import numpy as np
import pytest

import io
import logging
import sqlite3
import time

from vlmcls.encode.store import Store, clear_digest_memo, file_digest, known_digest


@pytest.mark.parametrize(
    "array",
    [
        np.arange(512, dtype=np.float32) / 7,
        np.arange(12, dtype=np.float16).reshape(3, 4),
        np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
        np.array(3.5),
        np.zeros((0, 8), dtype=np.float32),
        np.arange(6, dtype=np.int64).reshape(2, 3),
    ],
    ids=["f32-vector", "f16-matrix", "fortran-matrix", "scalar", "empty", "int64"],
)
def test_arrays_round_trip_exactly_on_first_and_repeated_reads(tmp_path, array):
    store = Store(tmp_path / "c")
    store.set_arrays({"a": array, "b": array * 2})
    for _ in range(2):  # the second read of each header takes the parsed-header path
        found = store.get_arrays(["a", "b", "missing"])
        assert set(found) == {"a", "b"}
        for key, want in (("a", array), ("b", array * 2)):
            got = found[key]
            assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
            assert got.flags.writeable


def test_same_header_different_values_are_not_confused(tmp_path):
    store = Store(tmp_path / "c")
    rows = {f"k{i}": np.full(16, i, dtype=np.float32) for i in range(50)}
    store.set_arrays(rows)
    found = store.get_arrays(rows)
    assert all(np.array_equal(found[k], v) for k, v in rows.items())


def test_digest_memo_forgets_a_file_that_changed(tmp_path):
    clear_digest_memo()
    path = tmp_path / "x.bin"
    path.write_bytes(b"one")
    assert known_digest(path) is None  # never hashed by this process
    first = file_digest(path)
    assert known_digest(path) == first
    path.write_bytes(b"three")
    os.utime(path, ns=(1, 1))
    assert known_digest(path) is None  # size and mtime changed: must be hashed again
    assert file_digest(path) != first
    assert known_digest(tmp_path / "gone.bin") is None


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _put_raw(folder, key, value) -> None:
    """A row as a damaged or crafted database would hold it (any bytes or text under a key)."""
    with sqlite3.connect(folder / "cache.db") as con:
        now = time.time()
        con.execute("INSERT OR REPLACE INTO Cache (key, raw, store_time, expire_time, access_time, access_count, tag,"
                    " size, mode, filename, value) VALUES (?, 1, ?, NULL, ?, 0, NULL, 0, 1, NULL, ?)",
                    (key, now, now, value))
    con.close()


@pytest.mark.parametrize("bad_first", [False, True], ids=["good-first", "corrupted-first"])
def test_bulk_array_reads_keep_the_good_arrays_and_drop_each_corrupted_one(tmp_path, caplog, bad_first):
    folder = tmp_path / "c"
    good = {f"image:{i:03d}": np.random.default_rng(i).standard_normal(32).astype(np.float32) for i in range(40)}
    Store(folder).set_arrays(good)
    nan = np.ones(32, dtype=np.float32)
    nan[5] = np.nan
    damaged = {
        "image:017": _npy(nan),  # same header and length: the bulk path's own check
        "image:000" if bad_first else "image:021": _npy(np.ones(7, dtype=np.float32)),  # another shape
        "image:022": _npy(good["image:022"])[:-3],  # truncated
        "image:023": "text where an array belongs",
        "image:024": b"\x93NUMPY\x01\x00" + b"\x00" * 200,  # a header that is not one
    }
    other_dtype = np.arange(32, dtype=np.int32)  # same length and shape, another header: a valid array all the same
    for key, value in damaged.items():
        _put_raw(folder, key, value)
    _put_raw(folder, "image:025", _npy(other_dtype))
    caplog.set_level(logging.WARNING, logger="vlmcls.encode.store")
    store = Store(folder)
    found = store.get_arrays([*good, "image:missing"], shape=(32,))
    expected = {k: v for k, v in good.items() if k not in damaged} | {"image:025": other_dtype}
    assert set(found) == set(expected)
    for key, want in expected.items():
        assert found[key].dtype == want.dtype and found[key].shape == (32,) and np.array_equal(found[key], want)
        assert found[key].flags.writeable
    assert store.dropped == len(damaged)
    assert not any(key in store for key in damaged)  # dropped, so recomputed next time
    assert len([r for r in caplog.records if "corrupted" in r.getMessage()]) == 1
    assert set(store.get_arrays(good, shape=(32,))) == set(expected)  # and nothing else was lost


def test_bulk_reads_work_through_many_parts(tmp_path, monkeypatch):
    import vlmcls.encode.store as cache_module

    monkeypatch.setattr(cache_module, "_BULK_BYTES", 7 * 160)  # 7 arrays of 8 floats (128-byte header) a part
    store = Store(tmp_path / "c")
    rows = {f"image:{i}": np.full(8, i, dtype=np.float32) for i in range(50)}
    store.set_arrays(rows)
    found = store.get_arrays(rows, shape=(8,))
    assert set(found) == set(rows) and all(np.array_equal(found[k], v) for k, v in rows.items())


def test_json_reads_give_what_json_loads_gives_and_drop_what_it_cannot_read(tmp_path):
    folder = tmp_path / "c"
    store = Store(folder)
    digests = {f"digest:{i}": f"{i:064x}" for i in range(30)}
    store.set_jsons(digests)
    assert store.get_jsons(digests) == digests  # plain strings: the bulk path
    odd = {"digest:q": 'a "quoted" \\ name\n', "digest:u": "ünï😀", "digest:e": "", "llm:d": {"a": [1, None]}}
    store.set_jsons(odd)
    assert store.get_jsons([*digests, *odd]) == digests | odd
    _put_raw(folder, "digest:two", '"a"\n"b"')  # two JSON strings on two lines: not one value
    again = Store(folder)
    assert again.get_jsons([*digests, "digest:two"]) == digests and again.dropped == 1
    _put_raw(folder, "digest:bad", "{not json")
    _put_raw(folder, "digest:bytes", b"bytes where text belongs")
    assert again.get_jsons([*digests, "digest:bad", "digest:bytes"]) == digests and again.dropped == 3


def test_paused_gc_switches_the_collector_back_on_after_errors_and_not_inside_an_outer_pause():
    import gc

    from vlmcls.gcpause import paused_gc

    assert gc.isenabled()
    with pytest.raises(ValueError):
        with paused_gc():
            assert not gc.isenabled()
            with paused_gc():
                assert not gc.isenabled()
            assert not gc.isenabled()  # the inner pause leaves the outer one paused
            raise ValueError("boom")
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # a collector switched off by the caller stays off
    finally:
        gc.enable()
