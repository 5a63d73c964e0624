"""Reading the text users and LLMs hand us: size-limited, encoding-detected, nesting-checked, never crashing.

Every loader of a user file (descriptors, pairs, prompts, classes, templates, metric files) reads through
:func:`read_text_file` and parses JSON with :func:`parse_json` / TOML with :func:`parse_toml`: a file too big,
not text, not UTF-8 (after a UTF-8/16/32 byte-order mark or BOM-less UTF-16 is recognised), too deeply nested or
not valid is one ConfigError naming the file and the place (line, column), never a RecursionError or a
UnicodeDecodeError. LLM answers use :func:`json_nesting_error` before ``json.loads`` for the same reason.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .limits import current_limits, variable_for

__all__ = ["read_text_file", "read_file_bytes", "decode_text", "parse_json", "parse_toml", "json_nesting_error", "load_json_file"]

_BOMS = (  # UTF-32 LE starts with the UTF-16 LE mark, so it is tested first
    (codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32"), (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32"),
    (codecs.BOM_UTF8, "utf-8", "UTF-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16"), (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16"),
)
# Strings and comments hide brackets from the nesting count; newlines inside them are kept so lines still count.
_JSON_SKIP = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_TOML_SKIP = re.compile(r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*')


def _size_text(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.1f} KB" if n >= 1024 else f"{n} bytes"


def read_text_file(path: str | os.PathLike, what: str) -> str:
    """The text of a user's file (``what`` names it in errors: "descriptor file"), checked and decoded.

    Refused with ConfigError: a missing or unreadable file, one that is not a regular file (a FIFO would block),
    one over the size limit (``VLMCLS_MAX_FILE_MB``), binary data, or text that is not UTF-8/16/32."""
    return decode_text(read_file_bytes(path, what), what, path)


def read_file_bytes(path: str | os.PathLike, what: str) -> bytes:
    """The bytes of a user's file, read once and size-limited (see :func:`read_text_file`)."""
    path = Path(path)
    limit = current_limits().file_bytes
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{what} '{path}' is not a regular file; pass the path of a file.")
        if st.st_size > limit:
            raise _too_big(path, what, st.st_size, limit)
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)  # a file that grew since the stat is still bounded
    except ConfigError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot read {what} '{path}': {exc.strerror or exc}. Check the path and its permissions.") from exc
    if len(data) > limit:
        raise _too_big(path, what, len(data), limit)
    return data


def _too_big(path: Path, what: str, size: int, limit: int) -> ConfigError:
    variable = variable_for("file_bytes")
    return ConfigError(f"{what} '{path}' is {_size_text(size)}, over the limit of {_size_text(limit)}; "
                       f"split it, or raise the limit with {variable}=N (megabytes) if the file is what you meant.")


def _utf16_guess(data: bytes) -> str | None:
    """BOM-less UTF-16 of mostly ASCII text: every other byte is NUL."""
    head = data[:4096]
    if len(head) < 4 or len(head) % 2:
        return None
    even, odd = head[0::2].count(0), head[1::2].count(0)
    half = len(head) // 2
    if odd >= 0.9 * half and even <= 0.1 * half:
        return "utf-16-le"
    if even >= 0.9 * half and odd <= 0.1 * half:
        return "utf-16-be"
    return None


def decode_text(data: bytes, what: str, path: str | os.PathLike) -> str:
    """Bytes of a text file -> str: a byte-order mark picks UTF-8/16/32 (and is dropped), BOM-less UTF-16 is
    recognised, anything else must be UTF-8; binary data and other encodings are a ConfigError with the place."""
    codec, name = "utf-8", "UTF-8"
    for bom, bom_codec, bom_name in _BOMS:
        if data.startswith(bom):
            data, codec, name = data[len(bom):], bom_codec, bom_name
            break
    else:
        if b"\0" in data[:8192]:
            guess = _utf16_guess(data)
            if guess is None:
                raise ConfigError(f"{what} '{path}' is binary (it holds NUL bytes), not text. Give a UTF-8 text file.")
            codec, name = guess, "UTF-16"
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1 if codec == "utf-8" else None
        where = f"byte 0x{data[exc.start]:02x} at offset {exc.start}" + (f" (line {line})" if line else "")
        raise ConfigError(
            f"{what} '{path}' is not {name} text ({where}; Latin-1 or another legacy encoding?). "
            "Save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 FILE > NEW`."
        ) from None


def _nesting_error(text: str, skip: re.Pattern[str], limit: int) -> tuple[int, int] | None:
    """(line, depth) where brackets first nest deeper than ``limit``, or None. Linear: no parser recursion."""
    if text.count("[") + text.count("{") <= limit:
        return None
    stripped = skip.sub(lambda m: "\n" * m.group().count("\n"), text)
    depth = 0
    for match in re.finditer(r"[\[\]{}]", stripped):
        depth += 1 if match.group() in "[{" else -1
        if depth > limit:
            return stripped.count("\n", 0, match.start()) + 1, depth
    return None


def json_nesting_error(text: str, limit: int | None = None) -> tuple[int, int] | None:
    """(line, depth) where the JSON ``text`` nests deeper than the limit (64), or None."""
    return _nesting_error(text, _JSON_SKIP, limit or current_limits().nesting)


def parse_json(text: str, what: str, path: str | os.PathLike) -> Any:
    """The JSON value of a user's file; a ConfigError naming the file, line and column when it is not valid or
    nests deeper than vlmcls's formats ever do."""
    limit = current_limits().nesting
    deep = json_nesting_error(text, limit)
    if deep is not None:
        raise ConfigError(f"{what} '{path}' nests deeper than {limit} levels (line {deep[0]}); its format is at "
                          "most a few levels deep. Fix or regenerate it.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} '{path}' is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}. "
                          "Fix or regenerate it.") from None
    except (RecursionError, ValueError) as exc:  # belt and braces: the count above should have caught it
        raise ConfigError(f"{what} '{path}' cannot be parsed as JSON ({type(exc).__name__}). Fix or regenerate it.") from None


def load_json_file(path: str | os.PathLike, what: str) -> Any:
    """:func:`read_text_file` then :func:`parse_json`."""
    return parse_json(read_text_file(path, what), what, path)


def parse_toml(text: str, what: str, source: str | os.PathLike, error: type[ConfigError] = ConfigError) -> dict[str, Any]:
    """The TOML table of a user's file; ``error`` (a ConfigError kind) naming the file and the place when it is
    not valid or nests too deep."""
    limit = current_limits().nesting
    deep = _nesting_error(text, _TOML_SKIP, limit)
    if deep is not None:
        raise error(f"{what} '{source}' nests deeper than {limit} levels (line {deep[0]}). Fix the file there.")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} '{source}' is not valid TOML: {exc}. Fix the syntax there.") from None
    except RecursionError:
        raise error(f"{what} '{source}' nests too deep to be read as TOML. Fix the file.") from None
