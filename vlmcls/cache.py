"""The cache: one key function and one store for LLM answers and embeddings.

Everything is kept in a diskcache ``Cache`` under ``$VLMCLS_CACHE``, or ``cache/`` when vlmcls runs from a
checkout, or ``~/.cache/vlmcls``. Values are only ever ``str`` (JSON) or ``bytes`` (``.npy`` arrays loaded with
``allow_pickle=False``): diskcache stores both raw, so nothing read back from the cache is ever unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .errors import CacheError

__all__ = ["FORMAT_VERSION", "cache_key", "cache_key_for", "default_cache_dir", "Store", "file_digest", "known_digest", "stat_key", "clear_digest_memo"]

log = logging.getLogger(__name__)

# Bump when the meaning of a cached value changes; it is part of every key.
FORMAT_VERSION = 1

_ENV_VAR = "VLMCLS_CACHE"


def default_cache_dir() -> Path:
    """Where the cache lives: ``$VLMCLS_CACHE``, a checkout's ``cache/``, else ``~/.cache/vlmcls``."""
    env = os.environ.get(_ENV_VAR)
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "cache").is_dir():
        return checkout / "cache"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vlmcls"


def cache_key(kind: str, **parts: Any) -> str:
    """The one cache-key function: ``kind:`` + sha256 of every input that changes the value.

    ``parts`` must be JSON-serialisable; keys are sorted so argument order never matters.
    """
    payload = json.dumps(
        {"v": FORMAT_VERSION, "kind": kind, **parts}, sort_keys=True, ensure_ascii=False, default=str
    )
    return f"{kind}:{hashlib.sha256(payload.encode('utf-8')).hexdigest()}"


def cache_key_for(kind: str, varying: str, **parts: Any) -> Callable[[str], str]:
    """A fast ``value -> cache_key(kind, **parts, **{varying: value})``: the fixed parts are serialised and hashed
    once, not once per key (a re-run of 48,000 images makes 48,000 feature keys). Gives exactly cache_key's keys."""
    marker = "\x00vlmcls-varying-part\x00"
    payload = json.dumps({"v": FORMAT_VERSION, "kind": kind, **parts, varying: marker}, sort_keys=True,
                         ensure_ascii=False, default=str)
    head, tail = payload.split(json.dumps(marker, ensure_ascii=False))
    prefix, suffix = hashlib.sha256(head.encode("utf-8")), tail.encode("utf-8")

    def key(value: str) -> str:
        digest = prefix.copy()
        digest.update(json.dumps(value, ensure_ascii=False).encode("utf-8"))
        digest.update(suffix)
        return f"{kind}:{digest.hexdigest()}"

    return key


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (content addressing: a renamed file keeps its key).

    Memoised per process by (path, size, mtime), so a re-run in the same process reads no file twice.
    """
    st = os.stat(path)
    memo_key = (os.fspath(path), st.st_size, st.st_mtime_ns)
    digest = _DIGESTS.get(memo_key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        digest = h.hexdigest()
        if len(_DIGESTS) >= _DIGEST_MEMO_SIZE:
            _DIGESTS.clear()
        _DIGESTS[memo_key] = digest
    return digest


def known_digest(path: str | os.PathLike, st: os.stat_result | None = None) -> str | None:
    """The memoised digest of an unchanged file, or None (never reads the file, never raises). ``st``: the file's
    stat when the caller has it already."""
    if st is None:
        try:
            st = os.stat(path)
        except OSError:
            return None
    return _DIGESTS.get((os.fspath(path), st.st_size, st.st_mtime_ns))


def stat_key(path: str | os.PathLike, st: os.stat_result | None = None) -> str | None:
    """A store key for "this file, unchanged": absolute path, size, inode, mtime and ctime (ctime moves on every
    write and cannot be set back, so an edit that restores the old mtime still misses). None if it cannot be
    stat-ed. ``st``: the file's stat when the caller has it already."""
    if st is None:
        try:
            st = os.stat(path)
        except OSError:
            return None
    return cache_key("digest", path=os.path.abspath(path), size=st.st_size, inode=st.st_ino,
                     mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)


def clear_digest_memo() -> None:
    """Forget every memoised digest (benchmarks use this to time a first run inside one process)."""
    _DIGESTS.clear()


_DIGEST_MEMO_SIZE = 1 << 18
_DIGESTS: dict[tuple[str, int, int], str] = {}  # dict get/set are atomic under the GIL: safe from hash threads


def _array_to_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, order="C"), allow_pickle=False)  # (ascontiguousarray would make 0-d arrays 1-d)
    return buf.getvalue()


def _bytes_to_array(raw: bytes) -> np.ndarray:
    """Parse .npy bytes. Every feature of one model shares one header, so headers are parsed once, not per array
    (numpy parses each with ``ast.literal_eval``, which was most of a cached re-run's time)."""
    if raw[:7] == b"\x93NUMPY\x01" and len(raw) >= 10:
        end = 10 + int.from_bytes(raw[8:10], "little")
        layout = _NPY_HEADERS.get(raw[:end])
        if layout is not None:
            dtype, shape, count = layout
            return np.frombuffer(raw, dtype=dtype, count=count, offset=end).reshape(shape).copy()
        array = np.load(io.BytesIO(raw), allow_pickle=False)
        if array.flags.c_contiguous and array.dtype != object and len(_NPY_HEADERS) < 1024:
            _NPY_HEADERS[raw[:end]] = (array.dtype, array.shape, array.size)
        return array
    return np.load(io.BytesIO(raw), allow_pickle=False)


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], int]] = {}


def _parts(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Store:
    """A diskcache-backed store of JSON values and numpy arrays, keyed by :func:`cache_key`."""

    def __init__(self, directory: str | os.PathLike | None = None, size_limit_gb: float = 20.0):
        import diskcache

        self.directory = Path(directory) if directory is not None else default_cache_dir()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._cache = diskcache.Cache(str(self.directory), size_limit=int(size_limit_gb * 2**30))
        except Exception as exc:  # sqlite or filesystem errors
            raise CacheError(
                f"cannot open the cache at '{self.directory}': {exc}. "
                f"Point ${_ENV_VAR} at a writable folder."
            ) from exc

    # -- JSON ---------------------------------------------------------------------------------------
    def get_json(self, key: str) -> Any | None:
        return self.get_jsons([key]).get(key)

    def set_json(self, key: str, value: Any) -> None:
        self.set_many(jsons={key: value})

    def get_jsons(self, keys: Iterable[str]) -> dict[str, Any]:
        """The JSON values found for ``keys`` (missing keys are absent from the result), in bulk queries."""
        found: dict[str, Any] = {}
        for key, raw in self._get_raw(keys).items():
            if not isinstance(raw, str):
                log.warning("cache entry %s is not JSON text; ignoring it", key)
                continue
            found[key] = json.loads(raw)
        return found

    def set_jsons(self, items: Mapping[str, Any]) -> None:
        """Write many JSON values in one transaction."""
        self.set_many(jsons=items)

    def file_digest(self, path: str | os.PathLike) -> str:
        """:func:`file_digest`, kept in the store under the file's :func:`stat_key`, so a later process does not
        read an unchanged file again (model weights: 0.5 s per GB-scale load here)."""
        key = stat_key(path)
        known = self.get_json(key) if key is not None else None
        if isinstance(known, str):
            return known
        digest = file_digest(path)
        if key is not None:
            self.set_json(key, digest)
        return digest

    # -- arrays -------------------------------------------------------------------------------------
    def get_array(self, key: str) -> np.ndarray | None:
        return self.get_arrays([key]).get(key)

    def get_arrays(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """The arrays found for ``keys`` (missing keys are absent from the result), in bulk queries."""
        found: dict[str, np.ndarray] = {}
        for key, raw in self._get_raw(keys).items():
            if not isinstance(raw, bytes):
                log.warning("cache entry %s is not an array; ignoring it", key)
                continue
            found[key] = _bytes_to_array(raw)
        return found

    def set_arrays(self, items: Mapping[str, np.ndarray]) -> None:
        """Write many arrays in one transaction (one batch of a run: all or nothing)."""
        self.set_many(arrays=items)

    def set_array(self, key: str, array: np.ndarray) -> None:
        self.set_arrays({key: array})

    # -- bulk access ------------------------------------------------------------------------------------
    # diskcache's get/set cost several SQLite statements per key; a run of 48,000 small images spent more time there
    # than in the model. These read and write its table directly, many keys per statement, and turn every stored
    # value into bytes/str through the Disk alone (_value_from_row), so what the Disk refuses is refused here too.
    _KEYS_PER_QUERY = 500  # under SQLite's default limit of 999 bound parameters

    def set_many(self, arrays: Mapping[str, np.ndarray] | None = None, jsons: Mapping[str, Any] | None = None) -> None:
        """Write arrays and JSON values in one transaction (all or nothing)."""
        items = [(key, _array_to_bytes(arr)) for key, arr in (arrays or {}).items()]
        items += [(key, json.dumps(value, ensure_ascii=False)) for key, value in (jsons or {}).items()]
        if not items:
            return
        cache, disk = self._cache, self._cache._disk
        inline_limit = getattr(disk, "min_file_size", 0)  # larger values go to files: diskcache's own set does that
        now = time.time()
        with cache.transact():
            existing = set()
            for part in _parts([key for key, _ in items], self._KEYS_PER_QUERY):
                marks = ",".join("?" * len(part))
                existing.update(row[0] for row in cache._sql(
                    f"SELECT key FROM Cache WHERE raw = 1 AND key IN ({marks})", part))
            rows = []
            for key, value in items:
                if key in existing or len(value) >= inline_limit:
                    cache.set(key, value)  # replaces through diskcache, which keeps its bookkeeping
                    continue
                size, mode, filename, db_value = disk.store(value, False, key=key)
                if filename is not None:  # cannot happen below min_file_size; never leave a file unrecorded
                    cache.set(key, value)
                    continue
                rows.append((key, now, now, size, mode, db_value))
            cache._con.executemany(
                "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size, mode,"
                " filename, value) VALUES (?, 1, ?, NULL, ?, 0, NULL, ?, ?, NULL, ?)", rows)

    def _get_raw(self, keys: Iterable[str]) -> dict[str, Any]:
        """The stored values (bytes or str) of ``keys``, a few hundred keys per query."""
        found: dict[str, Any] = {}
        wanted = list(dict.fromkeys(keys))
        now = time.time()
        for part in _parts(wanted, self._KEYS_PER_QUERY):
            marks = ",".join("?" * len(part))
            rows = self._cache._sql(
                "SELECT key, mode, filename, value FROM Cache WHERE raw = 1 AND key IN (" + marks + ")"
                " AND (expire_time IS NULL OR expire_time > ?)", (*part, now)).fetchall()
            for key, mode, filename, value in rows:
                found[key] = self._value_from_row(key, mode, filename, value)
        return {key: found[key] for key in wanted if found.get(key) is not None}

    def _value_from_row(self, key: str, mode: int, filename: str | None, value: Any) -> Any:
        """One stored value as bytes/str, through the Disk (the one place a row becomes a value); None if the
        entry is gone or unreadable."""
        try:
            return self._cache._disk.fetch(mode, filename, value, False)
        except OSError:  # its file was removed meanwhile (another process culled it)
            log.warning("cache entry %s lost its file; ignoring it", key)
            return None

    # -- housekeeping -------------------------------------------------------------------------------
    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def info(self) -> dict[str, Any]:
        """Counts per kind of entry and the size on disk."""
        kinds: dict[str, int] = {}
        for key in self._cache.iterkeys():
            kind = str(key).split(":", 1)[0]
            kinds[kind] = kinds.get(kind, 0) + 1
        return {
            "directory": str(self.directory),
            "entries": sum(kinds.values()),
            "by_kind": kinds,
            "size_bytes": int(self._cache.volume()),
        }

    def clear(self, kind: str | None = None) -> int:
        """Remove every entry, or only those of one kind; returns how many were removed."""
        if kind is None:
            return int(self._cache.clear())
        doomed = [k for k in self._cache.iterkeys() if str(k).startswith(f"{kind}:")]
        for key in doomed:
            self._cache.delete(key)
        return len(doomed)

    def close(self) -> None:
        self._cache.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
