"""The cache: one key function and one store for LLM answers and embeddings.

Everything is kept in a diskcache ``Cache`` under ``$VLMCLS_CACHE``, or ``cache/`` when vlmcls runs from a
checkout, or ``~/.cache/vlmcls``. Values are only ever ``str`` (JSON) or ``bytes`` (``.npy`` arrays loaded with
``allow_pickle=False``, or a folder snapshot that :mod:`vlmcls.sources.snapshot` parses and checks).

Nothing in a cache folder is trusted: anyone who can write a shared ``$VLMCLS_CACHE`` can craft ``cache.db``.
diskcache's own ``Disk`` unpickles a row whose ``mode`` says "pickle" and joins the row's ``filename`` to the folder
(an absolute one wins), so :class:`_SafeDisk` replaces it: it never unpickles, reads and deletes only value files
with the exact names diskcache generates that resolve inside the folder, and reports anything else as a corrupted
entry, which the store drops and recomputes.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import math
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import diskcache
import numpy as np

from ..errors import CacheError
from ..gcpause import paused_gc
from .disk import _SETTINGS, _CorruptEntry, _SafeDisk, _check_settings, remove_cache_files  # noqa: F401
from .keys import (  # noqa: F401  (the store's names, as callers import them)
    _ENV_VAR,
    FORMAT_VERSION,
    cache_key,
    cache_key_for,
    clear_digest_memo,
    default_cache_dir,
    file_digest,
    known_digest,
    stat_key,
    stat_key_of,
)

__all__ = ["FORMAT_VERSION", "cache_key", "cache_key_for", "default_cache_dir", "Store", "file_digest", "known_digest",
           "stat_key", "stat_key_of", "clear_digest_memo", "remove_cache_files"]

log = logging.getLogger(__name__)

def _array_to_bytes(array: np.ndarray) -> bytes:
    """``np.save``'s bytes. Its header depends only on the dtype and shape, so it is made once per layout (np.save
    took most of a first run's store writes: one per image)."""
    array = np.asarray(array, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
    layout = (array.dtype.str, array.shape) if array.dtype.isbuiltin == 1 else None
    header = _NPY_SAVE_HEADERS.get(layout) if layout is not None else None
    if header is not None:
        return header + array.tobytes()
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    raw = buf.getvalue()
    if layout is not None and len(_NPY_SAVE_HEADERS) < 1024:
        _NPY_SAVE_HEADERS[layout] = raw[: len(raw) - array.nbytes]
    return raw


_NPY_SAVE_HEADERS: dict[tuple[str, tuple[int, ...]], bytes] = {}  # (dtype, shape) -> np.save's header


def _bytes_to_array(raw: bytes) -> np.ndarray:
    """Parse .npy bytes; ValueError when they are not exactly one array. Every feature of one model shares one
    header, so headers are parsed once, not per array (numpy parses each with ``ast.literal_eval``, which was most
    of a cached re-run's time)."""
    if raw[:6] != b"\x93NUMPY" or len(raw) < 10:
        raise ValueError("not a .npy array")
    if raw[6:7] == b"\x01":
        end = 10 + int.from_bytes(raw[8:10], "little")
        layout = _NPY_HEADERS.get(raw[:end])
        if layout is not None:
            dtype, shape, count, total = layout
            if len(raw) != total:
                raise ValueError(f"{len(raw)} bytes for a {shape} {dtype} array")
            return np.frombuffer(raw, dtype=dtype, count=count, offset=end).reshape(shape).copy()
        array = np.load(io.BytesIO(raw), allow_pickle=False)
        if len(raw) != end + array.nbytes:
            raise ValueError(f"{len(raw)} bytes for a {array.shape} {array.dtype} array")
        if array.flags.c_contiguous and array.dtype != object and len(_NPY_HEADERS) < 1024:
            _NPY_HEADERS[raw[:end]] = (array.dtype, array.shape, array.size, end + array.nbytes)
        return array
    return np.load(io.BytesIO(raw), allow_pickle=False)


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], int, int]] = {}  # header: dtype, shape, size, bytes
# A run of JSON strings without escapes or control characters, one per line (JSON text holds no raw newline).
_PLAIN_JSON_STRINGS = re.compile(r'(?:"[^"\\\x00-\x1f]*"\n)*"[^"\\\x00-\x1f]*"')


def _plain_strings_in_bulk(raws: Mapping[str, Any]) -> dict[str, str]:
    """When every value in ``raws`` is the JSON text of a string without escapes (the digests kept under stat
    keys), those strings, checked by one regex pass over them all instead of one ``json.loads`` each; else
    nothing, for the one-by-one path. ``'"abc"'`` -> ``'abc'``, exactly as json.loads reads it."""
    texts = list(raws.values())
    if not texts or not all(type(text) is str for text in texts):
        return {}
    joined = "\n".join(texts)
    if joined.count("\n") != len(texts) - 1 or not _PLAIN_JSON_STRINGS.fullmatch(joined):
        return {}  # a newline inside a value would let one value pass as two
    return {key: text[1:-1] for key, text in raws.items()}


_BULK_BYTES = 1 << 26  # bytes of arrays parsed per numpy call in _arrays_in_bulk: bounds its extra memory


def _arrays_in_bulk(raws: Mapping[str, Any], shape: tuple[int, ...] | None) -> dict[str, np.ndarray]:
    """The arrays among ``raws`` (key -> stored value) that are .npy bytes with one common header and length (of
    ``shape`` when given) and finite (as :func:`_all_finite`), parsed a few thousand at a time instead of one by
    one: every feature of a model has the same header. The rows of each result share one matrix. Anything else is
    left out, for the one-by-one path that drops corrupted entries."""
    layout = None
    for raw in itertools.islice(raws.values(), 8):  # the header of the first values that parse to the shape
        if type(raw) is not bytes or raw[:7] != b"\x93NUMPY\x01" or len(raw) < 10:
            continue
        header = raw[:10 + int.from_bytes(raw[8:10], "little")]
        try:
            _bytes_to_array(raw)  # learns the header, or refuses it
        except (ValueError, EOFError, OSError):  # as Store._decode
            continue
        layout = _NPY_HEADERS.get(header)
        if layout is not None and layout[1] and (shape is None or layout[1] == shape):
            break  # (the rows of 0-d arrays would come out as numpy scalars: not here)
        layout = None
    if layout is None:
        return {}
    dtype, item_shape, _, total = layout
    end = len(header)
    expected = np.frombuffer(header, np.uint8)
    keys = [key for key, raw in raws.items() if type(raw) is bytes and len(raw) == total]
    found: dict[str, np.ndarray] = {}
    for part in _parts(keys, max(1, _BULK_BYTES // total)):
        rows = np.frombuffer(b"".join([raws[key] for key in part]), np.uint8).reshape(len(part), total)
        ok = (rows[:, :end] == expected).all(axis=1)  # [N] the same header byte for byte
        values = rows[:, end:].copy().view(dtype).reshape(len(part), *item_shape)
        if dtype.kind == "f":  # as _all_finite: a NaN or inf anywhere makes the sum of squares NaN or inf
            flat = values.reshape(len(part), -1)
            ok &= np.isfinite(np.einsum("ij,ij->i", flat, flat))
        found.update(zip([part[i] for i in np.flatnonzero(ok)], values[ok]))
    return found


def _all_finite(array: np.ndarray) -> bool:
    """No NaN or infinity in a float array. One BLAS dot product (a NaN or inf anywhere makes it NaN or inf) costs
    a fifth of ``isfinite(array).all()``, which matters on a cached re-run of many features; it also refuses values
    beyond ~1e19, which no feature holds."""
    if array.dtype.kind != "f":
        return True
    flat = array.reshape(-1)
    return math.isfinite(float(np.dot(flat, flat)))


def _parts(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Store:
    """A diskcache-backed store of JSON values and numpy arrays, keyed by :func:`cache_key`.

    A corrupted entry (damaged or crafted: not JSON, not an array, a wrong shape, a pickle, a file outside the
    folder) reads as missing: it is deleted, so it is recomputed, and the first one is logged as a warning.
    """

    def __init__(self, directory: str | os.PathLike | None = None, size_limit_gb: float = 20.0):
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.dropped = 0  # corrupted entries deleted so far
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"cannot create the cache folder '{self.directory}': {exc.strerror or exc}. "
                f"Point ${_ENV_VAR} (or --cache DIR) at a writable folder."
            ) from exc
        try:
            _check_settings(self.directory)
            self._cache = diskcache.Cache(str(self.directory), disk=_SafeDisk,
                                          size_limit=int(size_limit_gb * 2**30), **_SETTINGS)
        except (sqlite3.Error, OSError) as exc:
            raise self._open_error(exc) from exc

    def _open_error(self, exc: BaseException) -> CacheError:
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
            return CacheError(
                f"the cache database in '{self.directory}' is damaged ({exc}). Everything in it can be recomputed: "
                f"empty it with `vlmcls cache clear --cache '{self.directory}'`, then run again."
            )
        return CacheError(
            f"cannot use the cache in '{self.directory}' ({exc}). If the folder is not writable, point "
            f"${_ENV_VAR} (or --cache DIR) at one that is; if its database is damaged, empty it with "
            f"`vlmcls cache clear --cache '{self.directory}'`."
        )

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        """sqlite errors mid-run (a database damaged after it opened, a full disk) as one clear CacheError."""
        try:
            yield
        except sqlite3.Error as exc:
            raise self._open_error(exc) from exc

    # -- reading and decoding: the one place cached values are trusted ---------------------------------
    def _decode(self, key: str, raw: str | bytes | None, kind: str, shape: tuple[int, ...] | None = None) -> Any:
        """A raw value as JSON (``kind`` "json"), an array (``kind`` "array", of ``shape`` when given, finite) or
        bytes (``kind`` "bytes", which their reader checks); None for a missing entry or a corrupted one, which is
        dropped.

        Every read goes row -> :meth:`_value_from_row` (through :class:`_SafeDisk`) -> here."""
        if raw is None:
            return None
        try:
            if kind == "array":
                if type(raw) is not bytes:
                    raise _CorruptEntry(f"it holds {type(raw).__name__}, not array bytes")
                array = _bytes_to_array(raw)
                if shape is not None and array.shape != shape:
                    raise _CorruptEntry(f"its array has shape {array.shape}, expected {shape}")
                if not _all_finite(array):
                    raise _CorruptEntry("its array holds NaN or infinity")
                return array
            if kind == "bytes":
                if type(raw) is not bytes:
                    raise _CorruptEntry(f"it holds {type(raw).__name__}, not bytes")
                return raw
            if type(raw) is not str:
                raise _CorruptEntry(f"it holds {type(raw).__name__}, not JSON text")
            return json.loads(raw)
        except _CorruptEntry as exc:
            reason = str(exc)
        except (ValueError, EOFError, OSError) as exc:  # json.JSONDecodeError is a ValueError
            reason = f"it cannot be parsed ({exc})"
        self._drop(key, reason)
        return None

    def delete(self, key: str) -> None:
        """Forget one entry (absent already is fine)."""
        with self._guarded():
            self._cache.delete(key)

    def drop(self, key: str, reason: str) -> None:
        """Delete a corrupted entry that a reader found (the first one per store is logged as a warning)."""
        self._drop(key, reason)

    def _drop(self, key: str, reason: str) -> None:
        self.dropped += 1
        if self.dropped == 1:
            log.warning("cache: dropped a corrupted entry in '%s' (%s); it is recomputed. Further corrupted "
                        "entries are logged at debug level.", self.directory, reason)
        else:
            log.debug("cache: dropped corrupted entry %s (%s)", key, reason)
        with contextlib.suppress(sqlite3.Error):
            self._cache.delete(key)

    # -- JSON ---------------------------------------------------------------------------------------
    def get_json(self, key: str) -> Any | None:
        return self.get_jsons([key]).get(key)

    def set_json(self, key: str, value: Any) -> None:
        self.set_many(jsons={key: value})

    def get_jsons(self, keys: Iterable[str]) -> dict[str, Any]:
        """The JSON values found for ``keys`` (missing keys are absent from the result), in bulk queries."""
        return self._get_decoded(keys, "json", _plain_strings_in_bulk)

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
    def get_array(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
        """The array under ``key``; with ``shape``, an array of another shape counts as corrupted."""
        return self.get_arrays([key], shape).get(key)

    def get_arrays(self, keys: Iterable[str], shape: tuple[int, ...] | None = None) -> dict[str, np.ndarray]:
        """The arrays found for ``keys`` (missing and corrupted keys are absent from the result), in bulk queries;
        with ``shape``, an array of another shape counts as corrupted."""
        shape = None if shape is None else tuple(shape)
        return self._get_decoded(keys, "array", lambda raws: _arrays_in_bulk(raws, shape), shape)

    @paused_gc()
    def _get_decoded(self, keys: Iterable[str], kind: str, bulk: Callable[[dict[str, Any]], dict[str, Any]],
                     shape: tuple[int, ...] | None = None) -> dict[str, Any]:
        """The values of ``keys``: what ``bulk`` decodes at once (the common case), the rest one by one, each
        corrupted value dropped (``_decode``)."""
        with self._guarded():
            raws = self._get_raw(keys)
            found = bulk(raws)
            for key, raw in raws.items():
                if key not in found:
                    value = self._decode(key, raw, kind, shape)
                    if value is not None:
                        found[key] = value
        return found

    def set_arrays(self, items: Mapping[str, np.ndarray]) -> None:
        """Write many arrays in one transaction (one batch of a run: all or nothing). An array holding NaN or
        infinity is not kept: it would read back as corrupted, and a re-run should compute it again."""
        self.set_many(arrays=items)

    def set_array(self, key: str, array: np.ndarray) -> None:
        self.set_arrays({key: array})

    # -- bytes --------------------------------------------------------------------------------------
    def get_bytes(self, key: str) -> bytes | None:
        """The bytes kept under ``key`` (a folder snapshot, :mod:`vlmcls.sources.snapshot`, which checks them), or None."""
        return self._get_decoded([key], "bytes", lambda raws: {}).get(key)

    def set_bytes(self, key: str, value: bytes) -> None:
        """Keep ``value`` under ``key``, replacing what was there (a large value is a file of its own, written
        before the row that names it: a reader sees the old value or the new one, never half of one)."""
        with self._guarded():
            self._cache.set(key, bytes(value))

    # -- bulk access ------------------------------------------------------------------------------------
    # diskcache's get/set cost several SQLite statements per key; a run of 48,000 small images spent more time there
    # than in the model. These read and write its table directly, many keys per statement, and turn every stored
    # value into bytes/str through the Disk alone (_value_from_row), so what the Disk refuses is refused here too.
    _KEYS_PER_QUERY = 500  # under SQLite's default limit of 999 bound parameters

    def set_many(self, arrays: Mapping[str, np.ndarray] | None = None, jsons: Mapping[str, Any] | None = None) -> None:
        """Write arrays and JSON values in one transaction (all or nothing)."""
        items = []
        for key, arr in (arrays or {}).items():
            arr = np.asarray(arr)
            if _all_finite(arr):
                items.append((key, _array_to_bytes(arr)))
            else:  # it would read back as corrupted; a re-run computes it again
                log.debug("cache: not storing %s, which holds NaN or infinity", key)
        items += [(key, json.dumps(value, ensure_ascii=False, allow_nan=False)) for key, value in (jsons or {}).items()]
        if not items:
            return
        cache, disk = self._cache, self._cache._disk
        inline_limit = getattr(disk, "min_file_size", 0)  # larger values go to files: diskcache's own set does that
        now = time.time()
        with self._guarded(), cache.transact():
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
        """The stored values (bytes or str) of ``keys`` that were found (in no particular order), a few hundred keys
        per query."""
        found: dict[str, Any] = {}
        wanted = list(dict.fromkeys(keys))
        now = time.time()
        for part in _parts(wanted, self._KEYS_PER_QUERY):
            marks = ",".join("?" * len(part))
            rows = self._cache._sql(
                "SELECT key, mode, filename, value FROM Cache WHERE raw = 1 AND key IN (" + marks + ")"
                " AND (expire_time IS NULL OR expire_time > ?)", (*part, now)).fetchall()
            for key, mode, filename, value in rows:
                value = self._value_from_row(key, mode, filename, value)
                if value is not None:
                    found[key] = value
        return found

    def _value_from_row(self, key: str, mode: int, filename: str | None, value: Any) -> Any:
        """One stored value as bytes/str, through the Disk (the one place a row becomes a value); None if the
        entry is gone or unreadable."""
        try:
            return self._cache._disk.fetch(mode, filename, value, False)
        except _CorruptEntry as exc:  # a pickle, a file outside the folder, ...: never loaded, dropped
            self._drop(key, str(exc))
            return None
        except OSError:  # its file was removed meanwhile (another process culled it)
            log.warning("cache entry %s lost its file; ignoring it", key)
            return None

    # -- housekeeping -------------------------------------------------------------------------------
    def __contains__(self, key: str) -> bool:
        with self._guarded():
            return key in self._cache

    def info(self) -> dict[str, Any]:
        """Counts per kind of entry and the size on disk."""
        kinds: dict[str, int] = {}
        with self._guarded():
            for key in self._cache.iterkeys():
                kind = key.split(":", 1)[0] if isinstance(key, str) else "(not vlmcls)"
                kinds[kind] = kinds.get(kind, 0) + 1
            size = int(self._cache.volume())
        return {"directory": str(self.directory), "entries": sum(kinds.values()), "by_kind": kinds,
                "size_bytes": size}

    def clear(self, kind: str | None = None) -> int:
        """Remove every entry, or only those of one kind; returns how many were removed."""
        with self._guarded():
            if kind is None:
                return int(self._cache.clear())
            doomed = [k for k in self._cache.iterkeys() if isinstance(k, str) and k.startswith(f"{kind}:")]
            for key in doomed:
                self._cache.delete(key)
        return len(doomed)

    def close(self) -> None:
        self._cache.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
