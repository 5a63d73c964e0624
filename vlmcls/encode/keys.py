"""Cache keys and file digests: the one key function, and content digests memoised by each file's stat.

Every cache key hashes every input that changes the output (DESIGN.md); a file's digest is read once per unchanged
stat, so a re-run hashes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

__all__ = ["FORMAT_VERSION", "cache_key", "cache_key_for", "default_cache_dir", "file_digest", "known_digest",
           "stat_key", "stat_key_of", "clear_digest_memo"]

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
