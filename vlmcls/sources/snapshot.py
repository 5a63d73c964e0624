"""Folder snapshots: what a run learnt about a set of files, kept as one store entry, so a re-run of an unchanged
folder is one read instead of a digest look-up and a feature read per file.

A snapshot belongs to a folder (the common folder of a run's files) and to one feature key's parts (model ×
weights × preprocessing × decoding, :meth:`vlmcls.encode.embeddings.Encoder.image_key_parts`). It holds, for every file
that got features: its path relative to the folder, its stat as the digest was taken (size, inode, mtime, ctime:
the fields of :func:`vlmcls.encode.store.stat_key`), its content digest and its unit feature. A re-run stats every file
and takes the files whose stat matches straight from it; any other file goes the per-file way (a changed file is
read and hashed again). It duplicates the features it holds (the per-content entries stay, for other folders and
renamed files); a snapshot above :data:`MAX_SNAPSHOT_BYTES` is not written, and the store's size limit culls
snapshots like any other entry.

Nothing read is trusted: the bytes are parsed with exact length checks and a checksum, features must have the
model's size and be finite, and nothing is unpickled. A snapshot that fails any check is a corrupted store entry:
dropped (the first one with a warning), and the run takes the per-file way.
"""

from __future__ import annotations

import logging
import operator
import os
import zlib
from dataclasses import dataclass

import numpy as np

from ..encode.store import Store, cache_key

__all__ = ["Snapshot", "FileStats", "snapshot_key", "save_snapshot", "MAX_SNAPSHOT_BYTES", "SNAPSHOT_KIND"]

log = logging.getLogger(__name__)

MAX_SNAPSHOT_BYTES = 1 << 30  # about 500,000 images at 512-D; a larger folder is not snapshotted
_MAGIC = b"vlmcls-snapshot\x01"  # 16 bytes; the last is the format's version
_HEADER = np.dtype([("magic", "S16"), ("count", "<u8"), ("dim", "<u8"), ("names", "<u8"), ("crc", "<u4"),
                    ("pad", "<u4")])
_STAT_FIELDS = 4  # size, inode, mtime_ns, ctime_ns (as stat_key)
_DIGEST_BYTES = 32  # sha256
_MASK = (1 << 64) - 1


SNAPSHOT_KIND = "folder-snapshot"  # the kind of its store keys; clearing image features or digests clears these too


def snapshot_key(folder: str, image_key_parts: dict) -> str:
    """The store key of a folder's snapshot under one feature key's parts."""
    return cache_key(SNAPSHOT_KIND, folder=folder, **image_key_parts)


def stat_rows(stats: list[tuple[int, int, int, int]]) -> np.ndarray:
    """(size, inode, mtime_ns, ctime_ns) tuples -> [N, 4] int64 (an inode or size beyond int64 keeps its bits)."""
    try:
        return np.array(stats, dtype=np.int64).reshape(len(stats), _STAT_FIELDS)
    except OverflowError:  # inode numbers are unsigned 64-bit
        bits = np.array([[v & _MASK for v in row] for row in stats], dtype=np.uint64)
        return bits.view(np.int64).reshape(len(stats), _STAT_FIELDS)


_FIELDS = operator.attrgetter("st_size", "st_ino", "st_mtime_ns", "st_ctime_ns")


def stat_tuple(st: os.stat_result) -> tuple[int, int, int, int]:
    return _FIELDS(st)


def stat_fields(texts: list[str | None]) -> list[tuple[int, int, int, int] | None]:
    """(size, inode, mtime_ns, ctime_ns) of each file, or None where there is no file (or no path). (Two threads
    gained nothing measurable at 12,000 files on 2 cores: the stat objects are built holding the GIL.)"""
    try:  # the usual case, every file there: one C loop (a loop in Python was most of the cost)
        return list(map(_FIELDS, map(os.stat, texts)))
    except (OSError, ValueError, TypeError):  # a missing file, a NUL in a name, no path (None)
        found = []
        for text in texts:
            try:
                found.append(_FIELDS(os.stat(text)))
            except (OSError, ValueError, TypeError):
                found.append(None)
        return found


@dataclass
class FileStats:
    """The files among a run's records, stat-ed once: ``positions`` in the records, each file's path as given
    (``texts``) and relative to ``folder`` (``names``; ``folder`` is absolute), and its stat (``fields``: (size,
    inode, mtime_ns, ctime_ns) tuples; ``stats``: the same as [N, 4] int64). Files that cannot be stat-ed are left
    out (they fail, with their reason, when read)."""

    folder: str | None
    positions: list[int]
    texts: list[str]
    names: list[str]
    fields: list[tuple[int, int, int, int]]
    stats: np.ndarray  # [N, 4] int64

    @classmethod
    def of(cls, texts: list[str | None]) -> "FileStats":
        """``texts``: each record's path as a string, or None for a record that is no file (a dataset row)."""
        fields = stat_fields(texts)
        if None not in fields:
            positions, kept = list(range(len(texts))), texts
        else:
            positions = [i for i, stat in enumerate(fields) if stat is not None]
            kept, fields = [texts[i] for i in positions], [fields[i] for i in positions]
        if not kept:
            return cls(None, [], [], [], [], np.zeros((0, _STAT_FIELDS), np.int64))
        # the common folder of all the paths: the common prefix of the first and last in sort order, up to a '/'
        common = os.path.commonprefix([min(kept), max(kept)])
        prefix = common[: common.rfind(os.sep) + 1]
        try:
            folder = os.path.abspath(prefix or os.curdir)
        except (OSError, ValueError):  # the working folder is gone: no snapshot
            folder = None
        names = [text[len(prefix):] for text in kept] if prefix else kept
        return cls(folder, positions, kept, names, fields, stat_rows(fields))


@dataclass
class Snapshot:
    """What a snapshot holds, row by row: file name (relative to its folder), stat [N, 4], digest [N, 32] (raw
    sha256 bytes) and unit feature [N, D]."""

    names: list[str]
    stats: np.ndarray  # [N, 4] int64
    digests: np.ndarray  # [N, 32] uint8
    feats: np.ndarray  # [N, D] float32

    def to_bytes(self) -> bytes:
        count, dim = self.feats.shape
        names = "\0".join(self.names).encode("utf-8", "surrogatepass")  # a file name holds no NUL
        body = b"".join([np.ascontiguousarray(self.stats, "<i8").tobytes(),
                         np.ascontiguousarray(self.digests, np.uint8).tobytes(),
                         np.ascontiguousarray(self.feats, "<f4").tobytes(), names])
        header = np.zeros((), _HEADER)
        header["magic"], header["count"], header["dim"], header["names"] = _MAGIC, count, dim, len(names)
        header["crc"] = zlib.crc32(body)  # a check against damage (anyone who can write the store can write
        return header.tobytes() + body   # features too: those are checked for size and finiteness, as ever)

    @classmethod
    def from_bytes(cls, raw: bytes, dim: int) -> "Snapshot":
        """Parse and check a snapshot; ValueError when it is not one of ``dim``-sized features, whole."""
        if len(raw) < _HEADER.itemsize:
            raise ValueError("shorter than its header")
        if raw[:len(_MAGIC)] != _MAGIC:
            raise ValueError("not a snapshot of this format")
        header = np.frombuffer(raw, _HEADER, count=1)[0]
        count, got_dim, names_len = int(header["count"]), int(header["dim"]), int(header["names"])
        if got_dim != dim:
            raise ValueError(f"features of size {got_dim}, expected {dim}")
        sizes = [count * _STAT_FIELDS * 8, count * _DIGEST_BYTES, count * dim * 4, names_len]
        if len(raw) != _HEADER.itemsize + sum(sizes):
            raise ValueError(f"{len(raw)} bytes, expected {_HEADER.itemsize + sum(sizes)} (truncated?)")
        body = memoryview(raw)[_HEADER.itemsize:]
        if zlib.crc32(body) != int(header["crc"]):
            raise ValueError("its checksum does not match (damaged)")
        if count == 0:
            return cls([], np.zeros((0, _STAT_FIELDS), np.int64), np.zeros((0, _DIGEST_BYTES), np.uint8),
                       np.zeros((0, dim), np.float32))
        at = np.cumsum([0, *sizes]).tolist()
        stats = np.frombuffer(body, "<i8", count * _STAT_FIELDS, at[0]).reshape(count, _STAT_FIELDS)
        digests = np.frombuffer(body, np.uint8, count * _DIGEST_BYTES, at[1]).reshape(count, _DIGEST_BYTES)
        feats = np.frombuffer(body, "<f4", count * dim, at[2]).reshape(count, dim)
        names = bytes(body[at[3]:at[4]]).decode("utf-8", "surrogatepass").split("\0")
        if len(names) != count:
            raise ValueError(f"{len(names)} names for {count} rows")
        flat = feats.reshape(-1)
        if not np.isfinite(np.dot(flat, flat)):  # as the store's _all_finite: one NaN or inf makes it so
            raise ValueError("its features hold NaN or infinity")
        return cls(names, stats, digests, feats)

    def unchanged_on_disk(self, folder: str, rows: np.ndarray) -> np.ndarray:
        """Of ``rows``, those whose file under ``folder`` is still there with the stat held here (one stat each). A
        name that is absolute or climbs out of the folder (only a crafted snapshot holds one) is never stat-ed."""
        inside = [row for row in rows.tolist() if _inside(self.names[row])]
        fields = stat_fields([os.path.join(folder, self.names[row]) for row in inside]) if inside else []
        there = [(row, stat) for row, stat in zip(inside, fields) if stat is not None]
        if not there:
            return np.zeros(0, np.int64)
        found = np.array([row for row, _ in there], dtype=np.int64)
        return found[(self.stats[found] == stat_rows([stat for _, stat in there])).all(axis=1)]

    def match(self, files: FileStats) -> tuple[np.ndarray, np.ndarray]:
        """(which of ``files`` are unchanged [N] bool, their rows here [N] int, -1 where none)."""
        if self.names == files.names:  # the usual re-run: the same files in the same order
            rows = np.arange(len(self.names))
        else:
            where = {name: row for row, name in enumerate(self.names)}
            rows = np.array([where.get(name, -1) for name in files.names], dtype=np.int64)
        found = rows >= 0
        same = np.zeros(len(rows), dtype=bool)
        if found.any():
            same[found] = (self.stats[rows[found]] == files.stats[found]).all(axis=1)
        return same, rows


def _inside(name: str) -> bool:
    return bool(name) and not os.path.isabs(name) and os.pardir not in name.split(os.sep)


def save_snapshot(store: Store, key: str, snapshot: Snapshot) -> bool:
    """Keep ``snapshot`` under ``key`` unless it is larger than :data:`MAX_SNAPSHOT_BYTES`; True if kept."""
    size = snapshot.feats.nbytes + snapshot.stats.nbytes + snapshot.digests.nbytes
    if size > MAX_SNAPSHOT_BYTES:
        log.info("not snapshotting %d files (%d MB): re-runs look them up one by one", len(snapshot.names),
                 size >> 20)
        return False
    store.set_bytes(key, snapshot.to_bytes())
    return True
