"""A cache folder someone else can write: crafted rows must not run code or reach files outside it, corrupted
entries are recomputed, a damaged database is one clear error that `vlmcls cache clear` fixes."""

from __future__ import annotations

import json
import logging
import os
import pickle
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import imagegen
from vlmcls.api import Classifier
from vlmcls.encode.store import Store, cache_key, clear_digest_memo, stat_key
from vlmcls.cli import app
from vlmcls.errors import CacheError

runner = CliRunner()

# diskcache's storage modes (diskcache.core.MODE_*), as a crafted row would hold them.
MODE_RAW, MODE_BINARY, MODE_TEXT, MODE_PICKLE = 1, 2, 3, 4


class _MakesADirectory:
    """Unpickling this calls os.mkdir(marker): proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def _craft_row(cache_dir: Path, key: str, mode: int, filename: str | None, value) -> None:
    with sqlite3.connect(cache_dir / "cache.db") as con:
        now = time.time()
        con.execute(
            "INSERT OR REPLACE INTO Cache (key, raw, store_time, expire_time, access_time, access_count, tag, size,"
            " mode, filename, value) VALUES (?, 1, ?, NULL, ?, 0, NULL, 0, ?, ?, ?)",
            (key, now, now, mode, filename, value),
        )
    con.close()


def _new_store(folder: Path) -> Store:
    store = Store(folder)
    store.set_json("llm:seed", {"text": "x"})  # creates the database and its tables
    store.close()
    return Store(folder)


def test_a_pickle_row_is_never_loaded(tmp_path):
    folder = tmp_path / "cache"
    _new_store(folder).close()
    marker = tmp_path / "code-ran"
    _craft_row(folder, "llm:evil", MODE_PICKLE, None, pickle.dumps(_MakesADirectory(marker)))
    _craft_row(folder, "image:evil", MODE_PICKLE, None, pickle.dumps(_MakesADirectory(marker)))
    with Store(folder) as store:
        assert store.get_json("llm:evil") is None
        assert store.get_arrays(["image:evil"]) == {}
        assert not marker.exists()
        assert "llm:evil" not in store and "image:evil" not in store  # dropped, so recomputed next time
        assert store.dropped == 2
        assert store.get_json("llm:seed") == {"text": "x"}  # honest entries still read


@pytest.mark.parametrize("name", ["absolute", "dotdot"])
def test_a_crafted_file_name_reaches_nothing_outside_the_cache(tmp_path, name):
    folder = tmp_path / "cache"
    _new_store(folder).close()
    victim = tmp_path / "victim" / "precious.txt"
    victim.parent.mkdir()
    victim.write_text("keep me")
    filename = str(victim) if name == "absolute" else "../victim/precious.txt"
    _craft_row(folder, "llm:evil", MODE_TEXT, filename, None)
    with Store(folder) as store:
        assert store.get_json("llm:evil") is None  # not read either
    _craft_row(folder, "llm:evil", MODE_BINARY, filename, None)
    result = runner.invoke(app, ["cache", "clear", "-y", "--cache", str(folder)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "keep me"
    with Store(folder) as store:
        assert store.info()["entries"] == 0


def test_a_value_folder_symlinked_outside_is_not_followed(tmp_path):
    folder = tmp_path / "cache"
    with Store(folder) as store:
        store.set_arrays({"image:big": np.arange(20000, dtype=np.float32)})  # > 32 KiB: kept in a value file
        assert np.array_equal(store.get_array("image:big"), np.arange(20000, dtype=np.float32))
    [value_file] = folder.glob("*/*/*.val")
    outside = tmp_path / "elsewhere"
    outer = value_file.parent.parent
    os.rename(outer, outside)
    outer.symlink_to(outside, target_is_directory=True)
    with Store(folder) as store:
        assert store.get_array("image:big") is None
    assert (outside / value_file.parent.name / value_file.name).exists()  # refused, not deleted through the link


@pytest.mark.parametrize(
    ("kind", "damage"),
    [
        ("image", lambda raw: raw[: len(raw) - 7]),  # a truncated array
        ("image", lambda raw: os.urandom(len(raw))),  # random bytes
        ("image", "wrong-dimension"),
        ("image", "nan"),
        ("digest", lambda raw: "{not json"),
        ("digest", lambda raw: b"\x00\x01 bytes where text belongs"),
    ],
    ids=["truncated-array", "random-bytes", "wrong-dimension", "nan-array", "non-json-digest", "bytes-digest"],
)
def test_corrupted_entries_are_dropped_and_recomputed(tiny_open_clip, tmp_path, caplog, kind, damage):
    root = tmp_path / "imgs"
    imagegen.make_class_tree(root, {"a": [(200, 20, 20), (20, 200, 20)], "b": [(20, 20, 200)]})
    cache_dir = tmp_path / "cache"
    model = f"local-dir:{tiny_open_clip}"
    first = Classifier(model, cache_dir=cache_dir).classify(root, ["red", "green", "blue"])
    with sqlite3.connect(cache_dir / "cache.db") as con:
        rows = con.execute("SELECT rowid, value FROM Cache WHERE key LIKE ?", (f"{kind}:%",)).fetchall()
        assert len(rows) >= 3
        # the folder's snapshot holds the same features and digests: damaged alike, it is ignored
        snapshots = con.execute("SELECT rowid, value FROM Cache WHERE key LIKE 'folder-snapshot:%'").fetchall()
        assert len(snapshots) == 1
        for rowid, value in rows + snapshots:
            if damage == "wrong-dimension":
                new = _npy(np.ones(7, dtype=np.float32))
            elif damage == "nan":
                new = _npy(np.full(32, np.nan, dtype=np.float32))
            else:
                new = damage(value)
            con.execute("UPDATE Cache SET value = ? WHERE rowid = ?", (new, rowid))
    con.close()
    caplog.set_level(logging.WARNING, logger="vlmcls.encode.store")
    clear_digest_memo()  # as a new process: file digests come from the store, not this process's memo
    clf = Classifier(model, cache_dir=cache_dir)
    again = clf.classify(root, ["red", "green", "blue"])
    assert [p.to_dict() for p in again.predictions] == [p.to_dict() for p in first.predictions]
    assert again.stats["errors"] == 0
    if kind == "image":
        assert again.stats["encoded"] == 3  # each bad feature computed again
    assert clf.store.dropped >= 3
    warnings = [r for r in caplog.records if "corrupted" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not once per entry
    third = Classifier(model, cache_dir=cache_dir).classify(root, ["red", "green", "blue"])
    assert third.stats["encoded"] == 0  # the recomputed values were stored again


def test_bulk_reads_give_the_rows_of_one_by_one_reads_on_a_mixed_folder_with_corrupted_entries(
        tiny_open_clip, tmp_path, monkeypatch):
    import shutil

    import vlmcls.encode.store as cache_module

    root = tmp_path / "imgs"
    imagegen.make_class_tree(root, {"a": [(200, 20, 20), (20, 200, 20), (210, 30, 40), (90, 90, 90)],
                                    "b": [(20, 20, 200), (30, 60, 190), (250, 250, 250)]})
    for i in range(3):
        imagegen.write_noise_jpeg(root / "b" / f"noise{i}.jpg", seed=i)
    imagegen.write_noise_jpeg(root / "loose.jpg", seed=9)  # no class folder
    imagegen.write_text_as_image(root / "b" / "notes.png")  # error rows stay error rows
    imagegen.write_empty(root / "a" / "empty.jpg")
    args = ["classify", str(root), "--classes", "red,green,blue", "--model", f"local-dir:{tiny_open_clip}", "-q"]

    def run(cache_dir: Path, out: str) -> bytes:
        clear_digest_memo()  # as a new process: file digests come from the store
        result = runner.invoke(app, [*args, "--cache", str(cache_dir), "-o", str(tmp_path / out)],
                               catch_exceptions=False)
        assert result.exit_code == 1, result.output  # the two bad files
        return (tmp_path / out).read_bytes()

    first = run(tmp_path / "cache", "first.jsonl")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.stat().st_size and p.name != "notes.png")
    image_key = Classifier(f"local-dir:{tiny_open_clip}").encoder._image_key_function()
    with Store(tmp_path / "cache") as store:
        digests = store.get_jsons([stat_key(p) for p in files])
        assert len(digests) == len(files) == 11
    nan = np.ones(32, dtype=np.float32)
    nan[3] = np.nan
    damage = {  # features read in bulk on the re-run (their digests are kept), and digests that cannot be read
        image_key(digests[stat_key(files[2])]): _npy(nan),
        image_key(digests[stat_key(files[5])]): _npy(np.ones(7, dtype=np.float32)),
        image_key(digests[stat_key(files[8])]): "text where an array belongs",
        stat_key(files[4]): "{not json",
        stat_key(files[7]): '"abc"\n"def"',
    }
    with sqlite3.connect(tmp_path / "cache" / "cache.db") as con:
        for key, value in damage.items():
            assert con.execute("UPDATE Cache SET value = ? WHERE key = ?", (value, key)).rowcount == 1
    con.close()
    shutil.copytree(tmp_path / "cache", tmp_path / "same-damage")
    bulk = run(tmp_path / "cache", "bulk.jsonl")
    with monkeypatch.context() as patch:  # every value read and checked one by one, as before the bulk paths
        patch.setattr(cache_module, "_arrays_in_bulk", lambda raws, shape: {})
        patch.setattr(cache_module, "_plain_strings_in_bulk", lambda raws: {})
        assert run(tmp_path / "same-damage", "one-by-one.jsonl") == bulk
    assert run(tmp_path / "cache", "third.jsonl") == bulk  # the recomputed values were stored again
    before = [json.loads(line) for line in first.decode().splitlines()]
    after = [json.loads(line) for line in bulk.decode().splitlines()]
    assert [(r["path"], r["label"], r["error"]) for r in after] == [(r["path"], r["label"], r["error"]) for r in before]
    for old, new in zip(before, after):  # recomputed in a smaller batch: equal up to float rounding
        assert [c["label"] for c in new["top_k"]] == [c["label"] for c in old["top_k"]]
        assert all(abs(a["prob"] - b["prob"]) < 1e-5 for a, b in zip(new["top_k"], old["top_k"]))
    with Store(tmp_path / "cache") as store:
        assert store.info()["by_kind"]["image"] == 11


def _npy(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def test_a_damaged_database_is_one_clear_error_and_cache_clear_fixes_it(tiny_open_clip, tmp_path):
    root = tmp_path / "imgs"
    imagegen.make_class_tree(root, {"a": [(200, 20, 20)]})
    cache_dir = tmp_path / "cache"
    model = f"local-dir:{tiny_open_clip}"
    args = ["classify", str(root), "--classes", "red,blue", "--model", model, "--cache", str(cache_dir)]
    assert runner.invoke(app, args, catch_exceptions=False).exit_code == 0
    db = cache_dir / "cache.db"
    (cache_dir / "cache.db-wal").unlink(missing_ok=True)
    db.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))  # a header, then garbage
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 3, result.output
    message = " ".join(result.output.split())
    assert str(cache_dir) in message and "vlmcls cache clear" in message
    assert "writable" not in message.split("vlmcls cache clear")[0]  # not the misleading permissions hint

    cleared = runner.invoke(app, ["cache", "clear", "-y", "--cache", str(cache_dir)], catch_exceptions=False)
    assert cleared.exit_code == 0, cleared.output
    assert "removed the damaged cache" in cleared.output
    assert runner.invoke(app, args, catch_exceptions=False).exit_code == 0


def test_unexpected_settings_in_the_database_are_refused(tmp_path):
    folder = tmp_path / "cache"
    _new_store(folder).close()
    with sqlite3.connect(folder / "cache.db") as con:  # would run as "PRAGMA writable_schema = 1"
        con.execute("INSERT INTO Settings VALUES ('sqlite_writable_schema', 1)")
    con.close()
    with pytest.raises(CacheError, match="damaged.*vlmcls cache clear"):
        Store(folder)


def test_non_utf8_paths_have_stable_store_keys(tmp_path):
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not UTF-8
    key = cache_key("digest", path=str(tmp_path / name))
    assert key == cache_key("digest", path=str(tmp_path / name))
    assert key != cache_key("digest", path=str(tmp_path / "caf\u00e9.png"))
    assert json.loads(json.dumps(key)) == key


def test_the_digest_memo_sees_a_same_size_rewrite_with_the_mtime_set_back(tmp_path):
    from vlmcls.encode.store import file_digest, known_digest

    clear_digest_memo()
    path = tmp_path / "photo.png"
    path.write_bytes(b"first picture")
    before = os.stat(path)
    first = file_digest(path)
    time.sleep(0.01)
    path.write_bytes(b"other picture")  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime restored; ctime cannot be
    assert known_digest(path) is None
    assert file_digest(path) != first


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_a_database_that_is_not_a_regular_file_is_refused_not_waited_on(tmp_path, kind):
    folder = tmp_path / "cache"
    folder.mkdir()
    if kind == "fifo":
        os.mkfifo(folder / "cache.db")  # opening it would block until someone writes
    else:
        (tmp_path / "elsewhere.db").write_bytes(b"")
        (folder / "cache.db").symlink_to(tmp_path / "elsewhere.db")
    with pytest.raises(CacheError, match="not a regular file"):
        Store(folder)
    result = runner.invoke(app, ["cache", "clear", "-y", "--cache", str(folder)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert not os.path.lexists(folder / "cache.db")
    assert kind == "fifo" or (tmp_path / "elsewhere.db").exists()
