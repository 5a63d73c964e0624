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
import hashlib
import io
import itertools
import json
import logging
import math
import os
import re
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import diskcache
import numpy as np

from ..errors import CacheError
from ..gcpause import paused_gc

__all__ = ["FORMAT_VERSION", "cache_key", "cache_key_for", "default_cache_dir", "Store", "file_digest", "known_digest",
           "stat_key", "stat_key_of", "clear_digest_memo", "remove_cache_files"]

log = logging.getLogger(__name__)

# Bump when the meaning of a cached value changes; it is part of every key.
FORMAT_VERSION = 1

_ENV_VAR = "VLMCLS_CACHE"


def default_cache_dir() -> Path:
    """Where the cache lives: ``$VLMCLS_CACHE``, a checkout's ``cache/``, else ``~/.cache/vlmcls``."""
    env = os.environ.get(_ENV_VAR)
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parents[2]  # vlmcls/encode/store.py -> the checkout
    if (checkout / "pyproject.toml").is_file() and (checkout / "cache").is_dir():
        return checkout / "cache"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vlmcls"


def cache_key(kind: str, **parts: Any) -> str:
    """The one cache-key function: ``kind:`` + sha256 of every input that changes the value.

    ``parts`` must be JSON-serialisable; keys are sorted so argument order never matters.
    """
    # surrogatepass: a non-UTF-8 file name arrives with surrogate escapes (os.fsdecode); other text is plain UTF-8.
    payload = _KEY_JSON.encode({"v": FORMAT_VERSION, "kind": kind, **parts})
    return f"{kind}:{hashlib.sha256(payload.encode('utf-8', 'surrogatepass')).hexdigest()}"


_KEY_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str)  # json.dumps with these settings


def cache_key_for(kind: str, *varying: str, **parts: Any) -> Callable[..., str]:
    """A fast ``(*values) -> cache_key(kind, **parts, **dict(zip(varying, values)))``: the fixed parts are
    serialised once, not once per key (a re-run of 48,000 images makes 48,000 stat keys and 48,000 feature keys).
    Gives exactly cache_key's keys."""
    markers = [f"\x00vlmcls-varying-part-{n}\x00" for n in range(len(varying))]
    payload = _KEY_JSON.encode({"v": FORMAT_VERSION, "kind": kind, **parts, **dict(zip(varying, markers))})
    # the payload's text between the varying values, and which value fills each gap (the keys are sorted)
    gaps = sorted((payload.index(_KEY_JSON.encode(marker)), n) for n, marker in enumerate(markers))
    pieces, order, start = [], [], 0
    for at, n in gaps:
        pieces.append(payload[start:at])
        order.append(n)
        start = at + len(_KEY_JSON.encode(markers[n]))
    prefix = hashlib.sha256(pieces[0].encode("utf-8", "surrogatepass"))
    rest = list(zip(order, pieces[1:] + [payload[start:]]))
    encode = _KEY_JSON.encode

    def key(*values: Any) -> str:
        text = []
        for n, piece in rest:
            value = values[n]
            text.append(str(value) if type(value) is int else encode(value))  # json writes an int as its str
            text.append(piece)
        digest = prefix.copy()
        digest.update("".join(text).encode("utf-8", "surrogatepass"))
        return f"{kind}:{digest.hexdigest()}"

    return key


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (content addressing: a renamed file keeps its key).

    Memoised per process by path and stat (as :func:`stat_key`), so a re-run in the same process reads no file twice.
    """
    st = os.stat(path)
    memo_key = _memo_key(path, st)
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
    return _DIGESTS.get(_memo_key(path, st))


def _memo_key(path: str | os.PathLike, st: os.stat_result) -> tuple[str, int, int, int, int]:
    # The same fields as stat_key: a same-size rewrite with its mtime set back still changes the inode or ctime.
    return os.fspath(path), st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns


def stat_key(path: str | os.PathLike, st: os.stat_result | None = None) -> str | None:
    """A store key for "this file, unchanged": absolute path, size, inode, mtime and ctime (ctime moves on every
    write and cannot be set back, so an edit that restores the old mtime still misses). None if it cannot be
    stat-ed or keyed (a bad path is reported with its reason when the file is read). ``st``: the file's stat when
    the caller has it already."""
    try:
        if st is None:
            st = os.stat(path)
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        return None
    return stat_key_of(path, (st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns))


def stat_key_of(path: str | os.PathLike, fields: tuple[int, int, int, int]) -> str | None:
    """:func:`stat_key` from a stat already taken, as (size, inode, mtime_ns, ctime_ns)."""
    try:
        return _stat_key(os.path.abspath(path), *fields)
    except (OSError, ValueError, UnicodeError):  # ValueError: a NUL byte in the path
        return None


# cache_key("digest", path=, size=, inode=, mtime_ns=, ctime_ns=) of a file, with no dict serialised per file
_stat_key = cache_key_for("digest", "path", "size", "inode", "mtime_ns", "ctime_ns")


def clear_digest_memo() -> None:
    """Forget every memoised digest (benchmarks use this to time a first run inside one process)."""
    _DIGESTS.clear()


_DIGEST_MEMO_SIZE = 1 << 18
_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}  # dict get/set are atomic under the GIL: safe from hash threads


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
                             f"`vlmcls cache clear --cache-dir '{self._directory}'`.") from None
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
                f"Point ${_ENV_VAR} (or --cache-dir) at a writable folder."
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
                f"empty it with `vlmcls cache clear --cache-dir '{self.directory}'`, then run again."
            )
        return CacheError(
            f"cannot use the cache in '{self.directory}' ({exc}). If the folder is not writable, point "
            f"${_ENV_VAR} (or --cache-dir) at one that is; if its database is damaged, empty it with "
            f"`vlmcls cache clear --cache-dir '{self.directory}'`."
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
