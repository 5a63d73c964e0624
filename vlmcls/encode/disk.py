"""The store's files on disk, trusted for nothing: a diskcache ``Disk`` that never unpickles and reads or deletes only
the value files diskcache itself names inside the folder, the check of a database's settings, and the removal of a
cache folder's files (``vlmcls cache clear``). Anything else found there is a corrupted entry, dropped and
recomputed by :class:`vlmcls.encode.store.Store`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import stat
from pathlib import Path
from typing import Any

import diskcache

from ..errors import CacheError

__all__ = ["remove_cache_files"]

log = logging.getLogger(__name__)

class _CorruptEntry(Exception):
    """A cache row or value file that vlmcls did not write (damaged or crafted); the store drops it."""


# The only value-file names diskcache generates (``Disk.filename``): two hex folders, 28 hex digits, ``.val``.
_VALUE_FILE = re.compile(r"[0-9a-f]{2}[/\\][0-9a-f]{2}[/\\][0-9a-f]{28}\.val")
_DB_FILES = ("cache.db", "cache.db-wal", "cache.db-shm", "cache.db-journal")
_MODE_RAW, _MODE_BINARY, _MODE_TEXT = diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY, diskcache.core.MODE_TEXT


class _SafeDisk(diskcache.Disk):
    """diskcache's storage layer, minus everything a crafted ``cache.db`` could abuse.

    Keys are ``str``; values are ``str`` or ``bytes``, stored raw in the database or, when large, in a value file.
    Reading never unpickles (a pickle row is a corrupted entry), and a value file is read or deleted only when its
    name is one diskcache generates and its real path lies inside the cache folder.
    """

    def __init__(self, directory: str, min_file_size: int = 2**15, **_ignored: Any):
        # ``_ignored``: other ``disk_*`` settings (the pickle protocol) that diskcache passes along; none apply.
        super().__init__(directory, min_file_size=min_file_size)
        self._real_directory = os.path.realpath(directory)

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) is not str:
            raise TypeError(f"cache keys are str, not {type(key).__name__}")
        return key, True

    def get(self, key: Any, raw: bool) -> Any:
        # A pickled key (raw false) is never unpickled: it is handed back as its bytes, which match no vlmcls key.
        return bytes(key) if isinstance(key, (bytes, memoryview)) else key

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> tuple[int, int, str | None, Any]:
        if read or type(value) not in (str, bytes):
            raise TypeError(f"cache values are str or bytes, not {type(value).__name__}")
        return super().store(value, False, key)

    def filename(self, key: Any = diskcache.core.UNKNOWN, value: Any = diskcache.core.UNKNOWN) -> tuple[str, str]:
        filename, full_path = super().filename(key, value)
        try:
            self._value_path(filename)  # a value folder swapped for a symlink would send the write elsewhere
        except _CorruptEntry as exc:
            raise CacheError(f"not writing into the cache at '{self._directory}': {exc}. Empty it with "
                             f"`vlmcls cache clear --cache '{self._directory}'`.") from None
        return filename, full_path

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> str | bytes:
        if read:
            raise TypeError("the cache never hands out open value files")
        if mode == _MODE_RAW and type(value) in (str, bytes):
            return value
        if mode in (_MODE_BINARY, _MODE_TEXT) and value is None:
            data = _read_regular_file(self._value_path(filename))
            if mode == _MODE_BINARY:
                return data
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _CorruptEntry("its text file is not UTF-8") from exc
        raise _CorruptEntry(f"its row has storage mode {mode!r} with a {type(value).__name__} value, "
                            "which vlmcls never writes (a pickle is never loaded)")

    def remove(self, file_path: str) -> None:
        try:
            full_path = self._value_path(file_path)
        except _CorruptEntry as exc:
            log.warning("cache: not deleting %r: %s", file_path, exc)
            return
        with contextlib.suppress(OSError):
            os.remove(full_path)
        # Empty value folders go too, but never the cache folder itself or anything above it.
        folder = os.path.dirname(full_path)
        for _ in range(2):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
            folder = os.path.dirname(folder)

    def _value_path(self, filename: Any) -> str:
        if not isinstance(filename, str) or not _VALUE_FILE.fullmatch(filename):
            raise _CorruptEntry(f"value file name {filename!r} is not one the cache writes")
        full_path = os.path.join(self._directory, filename)
        real = os.path.realpath(full_path)
        if os.path.dirname(os.path.dirname(os.path.dirname(real))) != self._real_directory:
            raise _CorruptEntry(f"value file {filename!r} resolves outside the cache folder, to {real!r}")
        return full_path


def _read_regular_file(path: str) -> bytes:
    """The bytes of a regular file; a FIFO, device or symlink is a corrupted entry (reading one could hang)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise  # diskcache treats a vanished file as a miss (another process deleted the entry)
    except OSError as exc:
        raise _CorruptEntry(f"its value file cannot be opened ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _CorruptEntry("its value file is not a regular file")
        return fh.read()


def remove_cache_files(directory: str | os.PathLike) -> int:
    """Delete a cache folder's database and value files without opening the database (for a damaged one).

    Only the names diskcache creates are touched; symlinks are removed, never followed. Returns how many files
    were deleted.
    """
    root = Path(directory)
    removed = 0
    try:
        for name in _DB_FILES:
            with contextlib.suppress(FileNotFoundError):
                (root / name).unlink()
                removed += 1
        for outer in _hex_children(root):
            for inner in _hex_children(outer):
                for item in inner.iterdir():
                    if _VALUE_FILE.fullmatch(f"{outer.name}/{inner.name}/{item.name}") and not item.is_dir():
                        item.unlink()
                        removed += 1
                with contextlib.suppress(OSError):
                    inner.rmdir()
            with contextlib.suppress(OSError):
                outer.rmdir()
    except OSError as exc:
        raise CacheError(f"cannot delete '{exc.filename}' in the cache folder '{root}': {exc.strerror}. Delete the "
                         "folder by hand, or fix its permissions and run again.") from exc
    return removed


def _hex_children(folder: Path) -> list[Path]:
    """The two-hex-digit value folders inside ``folder`` (real folders, not symlinks)."""
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir()
            if re.fullmatch(r"[0-9a-f]{2}", p.name) and p.is_dir() and not p.is_symlink()]


# Every diskcache setting, given explicitly so none is taken from a crafted database (its ``sqlite_*`` settings
# become PRAGMA statements, its ``disk_*`` ones arguments of the Disk).
_SETTINGS = {
    "statistics": 0,
    "tag_index": 0,
    "eviction_policy": "least-recently-stored",
    "cull_limit": 10,
    "sqlite_auto_vacuum": 1,
    "sqlite_cache_size": 2**13,
    "sqlite_journal_mode": "wal",
    "sqlite_mmap_size": 2**26,
    "sqlite_synchronous": 1,
    "disk_min_file_size": 2**15,
}
_KNOWN_SETTINGS = {*diskcache.core.DEFAULT_SETTINGS, *diskcache.core.METADATA}


def _check_settings(directory: Path) -> None:
    """Refuse a database whose Settings table holds keys diskcache never writes (they would run as PRAGMAs)."""
    db = directory / "cache.db"
    try:
        mode = os.lstat(db).st_mode
    except FileNotFoundError:
        return  # a new cache
    if not stat.S_ISREG(mode):  # sqlite would block forever on a FIFO, or write through a symlink
        raise sqlite3.DatabaseError("cache.db is not a regular file")
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
    try:
        keys = [row[0] for row in con.execute("SELECT key FROM Settings")]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return  # diskcache creates it
        raise
    finally:
        con.close()
    unknown = sorted(str(k) for k in keys if k not in _KNOWN_SETTINGS)
    if unknown:
        raise sqlite3.DatabaseError(f"unexpected settings {', '.join(repr(k) for k in unknown[:5])}")
