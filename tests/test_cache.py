"""The store's array format and the per-process file-digest memo."""

import os

import numpy as np
import pytest

from vlmcls.cache import Store, clear_digest_memo, file_digest, known_digest


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
