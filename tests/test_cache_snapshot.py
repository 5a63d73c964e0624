"""Folder snapshots (vlmcls.sources.snapshot): a re-run of an unchanged folder takes its features from one store entry, and
every other case gives exactly the rows a run on an empty store gives."""

from __future__ import annotations

import logging
import os
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import imagegen
from vlmcls import Classifier
from vlmcls.encode.store import Store, clear_digest_memo, stat_key
from vlmcls.cli import app
from vlmcls.encode.images import ImageRecord, list_images
from vlmcls.output import json_text, prediction_line, prediction_text, rounded_texts
from vlmcls.results import Prediction
from vlmcls.sources.snapshot import FileStats, Snapshot, stat_rows

REPO = Path(__file__).resolve().parents[1]


def _classify(folder: Path, out: Path, cache: Path, model: str, *extra: str) -> int:
    """The CLI in a new process, as a user re-runs it; returns its exit code (1: some rows are errors)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "vlmcls", "classify", str(folder), "--classes", "cat,dog,bird",
                           "--model", model, "--cache", str(cache), "-q", "-o", str(out), *extra],
                          capture_output=True, text=True, env=env, timeout=600, cwd=folder.parent)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return proc.returncode


def _tree(root: Path) -> None:
    imagegen.make_class_tree(root, {"cat": [(200, 30, 30), (180, 40, 20), (210, 60, 50), (190, 20, 90)],
                                    "dog": [(20, 30, 200), (30, 60, 190), (60, 60, 160)]})
    imagegen.write_text_as_image(root / "notes.png")  # broken from the start: an error row every run


def _snapshot_rows(cache: Path) -> list[tuple[int, object]]:
    with sqlite3.connect(cache / "cache.db") as con:
        rows = con.execute("SELECT rowid, value FROM Cache WHERE key LIKE 'folder-snapshot:%'").fetchall()
    con.close()
    return rows


def test_a_rerun_after_files_changed_gives_the_rows_of_a_run_on_an_empty_store(tiny_open_clip, tmp_path):
    folder, cache, model = tmp_path / "photos", tmp_path / "cache", f"local-dir:{tiny_open_clip}"
    _tree(folder)
    assert _classify(folder, tmp_path / "first.jsonl", cache, model) == 1  # notes.png is an error row
    assert len(_snapshot_rows(cache)) == 1

    touched, rewritten, renamed, broken = (folder / "cat" / f"{i}.png" for i in range(4))
    deleted = folder / "dog" / "0.png"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))  # same bytes
    before = rewritten.stat()
    imagegen.write_solid(rewritten, (30, 200, 30))  # same size, other colour, mtime set back: ctime still moved
    os.utime(rewritten, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert rewritten.stat().st_size == before.st_size and rewritten.stat().st_mtime_ns == before.st_mtime_ns
    renamed.rename(folder / "cat" / "renamed.png")
    deleted.unlink()
    broken.write_bytes(b"not a picture any more")
    imagegen.write_solid(folder / "bird" / "0.png", (240, 240, 20))  # a new class folder

    # two re-runs at once on the same store, each rewriting the snapshot, then one on an empty store
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    outs = [tmp_path / f"concurrent{i}.jsonl" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "vlmcls", "classify", str(folder), "--classes", "cat,dog,bird",
                               "--model", model, "--cache", str(cache), "-q", "-o", str(out)],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for out in outs]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 1, err.decode()[-3000:]
    fresh = tmp_path / "fresh.jsonl"
    _classify(folder, fresh, tmp_path / "empty-cache", model)
    assert outs[0].read_bytes() == outs[1].read_bytes() == fresh.read_bytes()
    assert b'"path": "' + str(folder / "cat" / "1.png").encode() in fresh.read_bytes()
    assert str(deleted).encode() not in fresh.read_bytes()
    last = tmp_path / "last.jsonl"
    _classify(folder, last, cache, model)  # the snapshot the concurrent runs left parses and is right
    assert last.read_bytes() == fresh.read_bytes()
    assert len(_snapshot_rows(cache)) == 1


def _keys_read(monkeypatch) -> list[str]:
    """Every store key read from now on."""
    read: list[str] = []
    real = Store._get_raw

    def spy(self, keys):
        keys = list(keys)
        read.extend(keys)
        return real(self, keys)

    monkeypatch.setattr(Store, "_get_raw", spy)
    return read


def test_an_unchanged_folder_reruns_from_its_snapshot_without_opening_an_image(tiny_open_clip, tmp_path,
                                                                                count_opens, monkeypatch):
    folder, cache = tmp_path / "photos", tmp_path / "cache"
    _tree(folder)
    (folder / "notes.png").unlink()
    model = f"local-dir:{tiny_open_clip}"
    args = ["classify", str(folder), "--classes", "cat,dog", "--model", model, "--cache", str(cache), "-q"]
    assert CliRunner().invoke(app, [*args, "-o", str(tmp_path / "first.jsonl")]).exit_code == 0
    clear_digest_memo()  # as a new process
    counts = count_opens(folder)
    read = _keys_read(monkeypatch)
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "again.jsonl")])
    assert result.exit_code == 0, result.output
    assert counts == {}  # no image file opened
    assert (tmp_path / "again.jsonl").read_bytes() == (tmp_path / "first.jsonl").read_bytes()
    assert sum(key.startswith("folder-snapshot:") for key in read) == 1
    per_file = {stat_key(p) for p in folder.rglob("*.png")}  # the keys of the per-file look-ups
    assert len(per_file) == 7 and not per_file & set(read) and not [k for k in read if k.startswith("image:")]


@pytest.mark.parametrize("damage", ["truncated", "flipped-feature-byte", "npy-array", "text", "nan-with-checksum",
                                    "other-dimension"])
def test_a_damaged_snapshot_is_dropped_and_the_run_gives_the_same_rows(tiny_open_clip, tmp_path, caplog, damage):
    folder, cache = tmp_path / "photos", tmp_path / "cache"
    _tree(folder)
    model = f"local-dir:{tiny_open_clip}"
    first = Classifier(model, cache_dir=cache).classify(folder, ["cat", "dog"])
    [(rowid, raw)] = _snapshot_rows(cache)
    good = Snapshot.from_bytes(raw, 32)
    if damage == "truncated":
        new = raw[:-5]
    elif damage == "flipped-feature-byte":
        at = len(raw) - len("\0".join(good.names).encode()) - 9  # inside the last feature
        new = raw[:at] + bytes([raw[at] ^ 0x40]) + raw[at + 1:]
    elif damage == "npy-array":
        import io
        buf = io.BytesIO()
        np.save(buf, good.feats)
        new = buf.getvalue()
    elif damage == "text":
        new = "not a snapshot"
    elif damage == "nan-with-checksum":
        feats = good.feats.copy()
        feats[0, 0] = np.nan
        new = Snapshot(good.names, good.stats, good.digests, feats).to_bytes()
    else:
        new = Snapshot(good.names, good.stats, good.digests, good.feats[:, :7]).to_bytes()
    with sqlite3.connect(cache / "cache.db") as con:
        con.execute("UPDATE Cache SET value = ? WHERE rowid = ?", (new, rowid))
    con.close()
    clear_digest_memo()
    caplog.set_level(logging.WARNING)
    clf = Classifier(model, cache_dir=cache)
    again = clf.classify(folder, ["cat", "dog"])
    assert [p.to_dict() for p in again.predictions] == [p.to_dict() for p in first.predictions]
    assert again.stats["encoded"] == 0  # the per-file entries were there all along
    assert clf.store.dropped == 1 and "corrupted" in caplog.text
    [(_, rewritten)] = _snapshot_rows(cache)
    assert Snapshot.from_bytes(rewritten, 32).names == good.names  # the run wrote a good one again


def test_another_preprocessing_does_not_take_features_from_the_snapshot(tiny_open_clip, tmp_path):
    folder = tmp_path / "photos"
    imagegen.write_noise_jpeg(folder / "a.jpg", size=(400, 300))
    imagegen.write_noise_jpeg(folder / "b.jpg", size=(300, 400), seed=1)
    model = f"local-dir:{tiny_open_clip}"
    reduced = Classifier(model, cache_dir=tmp_path / "cache").encode_images(folder, as_numpy=True)
    clf = Classifier(model, cache_dir=tmp_path / "cache")
    clf.encoder.reduced_decoding = False  # features kept apart: so is their snapshot
    full = clf.encode_images(folder, as_numpy=True)
    assert reduced.encoded == full.encoded == 2
    assert len(_snapshot_rows(tmp_path / "cache")) == 2
    assert Classifier(model, cache_dir=tmp_path / "cache").encode_images(folder, as_numpy=True).encoded == 0


def test_no_cache_writes_no_snapshot(tiny_open_clip, tmp_path):
    folder = tmp_path / "photos"
    _tree(folder)
    model = f"local-dir:{tiny_open_clip}"
    Classifier(model, cache_dir=tmp_path / "cache").classify(folder, ["cat", "dog"])
    before = _snapshot_rows(tmp_path / "cache")
    imagegen.write_solid(folder / "cat" / "new.png", (1, 2, 3))
    result = Classifier(model, cache_dir=tmp_path / "cache", use_cache=False).classify(folder, ["cat", "dog"])
    assert result.stats["encoded"] == 8 and _snapshot_rows(tmp_path / "cache") == before


# -- the parts -------------------------------------------------------------------------------------------------


def test_snapshot_bytes_round_trip_odd_names_and_any_inode(tmp_path):
    names = ["a.png", "sub/" + os.fsdecode(b"caf\xe9.png"), "\u00fcml\u00e4ut/\u2028x.jpg"]
    stats = stat_rows([(1, 2**64 - 1, -5, 7), (0, 2**63, 10**18, 1), (3, 4, 5, 6)])  # inodes beyond int64
    digests = np.arange(96, dtype=np.uint8).reshape(3, 32)
    feats = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    back = Snapshot.from_bytes(Snapshot(names, stats, digests, feats).to_bytes(), 5)
    assert back.names == names and np.array_equal(back.stats, stats) and np.array_equal(back.digests, digests)
    assert np.array_equal(back.feats, feats)
    assert Snapshot.from_bytes(Snapshot([], stats[:0], digests[:0], feats[:0]).to_bytes(), 5).names == []
    with pytest.raises(ValueError):
        Snapshot.from_bytes(Snapshot(names, stats, digests, feats).to_bytes(), 6)


def test_file_stats_match_a_snapshot_by_name_and_stat(tmp_path):
    files = [imagegen.write_solid(tmp_path / "d" / f"{i}.png", (i, i, i)) for i in range(4)]
    texts = [str(p) for p in files]
    stats = FileStats.of(texts[:3] + [None, str(tmp_path / "gone.png")])  # a dataset row, a missing file
    assert stats.folder == str(tmp_path / "d") and stats.names == ["0.png", "1.png", "2.png"]
    assert stats.positions == [0, 1, 2]
    snap = Snapshot(["2.png", "0.png"], np.stack([stats.stats[2], stats.stats[0] + 1]),
                    np.zeros((2, 32), np.uint8), np.zeros((2, 3), np.float32))
    same, rows = snap.match(stats)
    assert same.tolist() == [False, False, True] and rows.tolist() == [1, -1, 0]
    relative = FileStats.of([os.path.relpath(t) for t in texts])
    assert relative.folder == str(tmp_path / "d")


def test_listed_records_equal_records_built_with_their_path(tmp_path):
    imagegen.make_class_tree(tmp_path / "p", {"cat": [(1, 2, 3)], "dog": [(4, 5, 6)]})
    imagegen.write_solid(tmp_path / "p" / "loose.png")
    for record in list_images(tmp_path / "p"):
        plain = ImageRecord(id=record.id, path=Path(record.id), label=record.label, source_index=record.source_index)
        assert record == plain and plain == record and hash(record) == hash(plain) and repr(record) == repr(plain)
        assert record.path_text == str(record.path) == str(plain.path)
        assert pickle.loads(pickle.dumps(record)) == plain and type(pickle.loads(pickle.dumps(record))) is ImageRecord


def test_rounded_probability_texts_are_repr_of_round():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.random(200_000, dtype=np.float32), rng.random(20_000, dtype=np.float32) * 1e-4,
                             np.array([k / 1024 for k in range(1025)], np.float32),  # exact ties at 6 decimals
                             np.array([0, 1, 5e-7, 1e-6, 4.9999e-5, 5e-5, 1e-4, 0.9999995, 1e-45], np.float32)])
    values = np.concatenate([values.astype(np.float64), [-0.0, 0.1, 1 / 3, 2.5, 1e-7, 0.1234565]])  # not float32
    assert rounded_texts(values) == [repr(round(v, 6)) for v in values.tolist()]


def test_jsonl_text_of_many_rows_is_their_lines():
    odd = "caf\u00e9/\udcff-name \"quoted\" \\ tab\t.jpg \u2028 %s"
    plain = [Prediction(f"{i}.jpg", f"{i}.jpg", "cat", [("cat", float(np.float32(0.7 + i / 1e4))), ("dög", 1e-07)],
                        None, "dog" if i % 2 else None) for i in range(50)]
    odd_rows = [Prediction(odd, odd, "dög", [("dög", 0.5)], None, "cat"),
                Prediction("row/3", None, None, [], "cannot decode: \udce9 broken", "dog"),
                Prediction("e.jpg", "e.jpg", "cat", [("cat", 0.7)], explanation={"descriptors": {"top": "fur"}}),
                Prediction("z.jpg", "z.jpg", "cat", [("cat", -0.0), ("b", 5e-5), ("c", 0.00012345678)])]
    for rows in (plain, plain[:1] + odd_rows + plain[1:], odd_rows, []):
        assert prediction_text(rows) == "".join(json_text(p.to_dict()) + "\n" for p in rows)
        assert prediction_text(rows) == "".join(map(prediction_line, rows))
    from vlmcls.errors import VlmclsError
    with pytest.raises(VlmclsError, match="NaN"):
        prediction_text(plain + [Prediction("n.jpg", "n.jpg", "cat", [("cat", float("nan"))])])


@pytest.mark.parametrize("kind", ["image", "digest"])
def test_clearing_image_features_or_digests_clears_the_snapshots_holding_them(tiny_open_clip, tmp_path, kind):
    folder, cache = tmp_path / "photos", tmp_path / "cache"
    _tree(folder)
    model = f"local-dir:{tiny_open_clip}"
    Classifier(model, cache_dir=cache).classify(folder, ["cat", "dog"])
    cleared = CliRunner().invoke(app, ["cache", "clear", "--kind", kind, "--cache", str(cache), "--yes"])
    assert cleared.exit_code == 0 and "and 1 folder snapshot holding them" in cleared.output
    clear_digest_memo()
    again = Classifier(model, cache_dir=cache).classify(folder, ["cat", "dog"])
    assert again.stats["encoded"] == (7 if kind == "image" else 0)  # digests alone: files read, features found
    assert len(_snapshot_rows(cache)) == 1


@pytest.mark.parametrize("mixed", [False, True])
def test_a_folder_lists_in_the_order_of_its_relative_parts(tmp_path, mixed):
    """Sorted by the parts of each path below the root ('a' < 'a-b' as parts, though 'a-b/' < 'a/' as text),
    whether or not a folder holds both images and sub-folders (then those interleave by name)."""
    names = ["a/1.png", "a/Z.png", "a/_.png", "a-b/2.png", "b/c/3.png", "b/c-d/5.png", "b/d/4.png", "B/x.png"]
    if mixed:
        names += ["a/b/6.png", "a/c.png", "a.png", "root.PNG"]
    for name in names:
        imagegen.write_solid(tmp_path / "p" / name)
    listed = [os.path.relpath(r.path_text, tmp_path / "p") for r in list_images(tmp_path / "p")]
    assert listed == sorted(names, key=lambda n: tuple(n.split("/")))
    assert [r.label for r in list_images(tmp_path / "p")] == [n.split("/")[0] if "/" in n else None for n in listed]



def test_runs_alternating_between_part_of_a_folder_and_all_of_it_keep_one_snapshot(tiny_open_clip, tmp_path,
                                                                                    count_opens, monkeypatch):
    """A list file naming part of a folder, then the whole folder: the part's run keeps the rows of the files it
    did not list, so the snapshot is not rewritten and the whole folder's re-run opens no image; an unlisted file
    that changed or went meanwhile is not carried over."""
    folder, cache, model = tmp_path / "photos", tmp_path / "cache", f"local-dir:{tiny_open_clip}"
    _tree(folder)
    (folder / "notes.png").unlink()
    part = tmp_path / "part.txt"
    part.write_text("photos/cat/0.png\nphotos/dog/1.png\n")
    written: list[str] = []
    real_set = Store.set_bytes

    def spy(self, key, value):
        written.append(key)
        return real_set(self, key, value)

    monkeypatch.setattr(Store, "set_bytes", spy)

    def run(source: Path, out: str, store: Path = cache) -> bytes:
        clear_digest_memo()  # as a new process
        result = CliRunner().invoke(app, ["classify", str(source), "--classes", "cat,dog", "--model", model,
                                          "--cache", str(store), "-q", "-o", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
        return (tmp_path / out).read_bytes()

    def snapshots_written() -> int:
        count = sum(key.startswith("folder-snapshot:") for key in written)
        written.clear()
        return count

    first = run(folder, "all1.jsonl")
    assert snapshots_written() == 1
    run(part, "part1.jsonl")
    assert snapshots_written() == 0  # nothing new, nothing gone
    counts = count_opens(folder)
    assert run(folder, "all2.jsonl") == first
    assert counts == {} and snapshots_written() == 0  # every file from the snapshot, none opened

    changed, gone = folder / "cat" / "2.png", folder / "dog" / "2.png"
    imagegen.write_solid(changed, (20, 220, 20))
    gone.unlink()
    imagegen.write_solid(folder / "cat" / "new.png", (230, 20, 20))  # new in the part: its run writes
    part.write_text("photos/cat/0.png\nphotos/dog/1.png\nphotos/cat/new.png\n")
    run(part, "part2.jsonl")
    assert snapshots_written() == 1
    counts.clear()
    again = run(folder, "all3.jsonl")
    assert sorted(counts) == [str(changed)]  # the changed file alone is read again (the new one came from the part)
    assert again == run(folder, "fresh.jsonl", tmp_path / "empty-cache")


def test_a_snapshot_row_naming_a_path_outside_its_folder_is_never_stat_ed(tmp_path, monkeypatch):
    """Rows a run did not list are checked by stat; a crafted name that is absolute or climbs out of the folder is
    dropped unseen, and only the genuine file is looked at (and carried while unchanged)."""
    import vlmcls.encode.embeddings as embeddings
    import vlmcls.sources.snapshot as snapshot_module

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "ok.png").write_bytes(b"x")
    (tmp_path / "outside.png").write_bytes(b"y")
    names = ["../outside.png", str(tmp_path / "outside.png"), "sub/../../outside.png", "ok.png"]
    stats = stat_rows([(1, 2, 3, 4)] * 3
                      + [FileStats.of([str(folder / "ok.png")]).fields[0]])
    snapshot = Snapshot(names, stats, np.zeros((4, 32), np.uint8), np.ones((4, 8), np.float32) / np.sqrt(8))
    seen: list[str] = []
    real = snapshot_module.stat_fields
    monkeypatch.setattr(snapshot_module, "stat_fields", lambda texts: seen.extend(texts) or real(texts))
    hits = embeddings._SnapshotHits(snapshot, np.zeros(0, np.int64), None, np.zeros(0, bool), np.zeros(0, np.int64))
    carried = embeddings._unlisted_unchanged(str(folder), hits)
    assert seen == [os.path.join(str(folder), "ok.png")]
    assert carried.tolist() == [3]
