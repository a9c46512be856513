"""Reading untrusted JSON files under one number rule and resource caps.

The number rule (docs/design.md "Numbers"): every number in a file is a binary64 value. A JSON number
token is accepted only if, read as a decimal, it equals a finite binary64 value exactly or is
that value's shortest round-trip decimal (what every float printer writes, e.g. `0.1`); it then
means that binary64 value, read as the rational `Fraction(float(token))`. Integer tokens must be
exactly representable. Anything else (`9007199254740993`, `1e999`, `0.1000000000000000000001`,
a 400-digit integer) is an InputError naming the field. The independent checker keeps its own
copy of this rule (verify/checkers/numbers.py); a test holds both to one corpus.

Caps before any parsing: file size, nesting depth, token length; duplicate keys are refused
(JSON leaves them undefined, and a reader that keeps the last one hides the first).
"""

from __future__ import annotations

import json
import errno
import os
import re
import stat
from fractions import Fraction
from pathlib import Path
from typing import Any

from peftaudit.errors import InputError

MAX_JSON_BYTES = 256 * 2**20      # an instance or adapter file larger than this is refused
MAX_DEPTH = 64                    # nesting of arrays and objects
MAX_NUMBER_CHARS = 1100           # a binary64's exact decimal has at most 767 significant digits
_TOKEN = re.compile(r"-?(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?\Z")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_BRACKETS = re.compile(rb"[\[\]{}]")


def binary64_of_token(token: str) -> float | None:
    """The binary64 value a JSON number token stands for under the number rule, or None."""
    if len(token) > MAX_NUMBER_CHARS:
        return None
    match = _TOKEN.match(token)
    if match is None:
        return None
    whole, frac, exp = match.groups()
    digits = (whole + (frac or "")).lstrip("0")
    if exp is not None and len(exp.lstrip("+-").lstrip("0")) > 5:
        return 0.0 if not digits else None        # 0e99999999 is zero; 1e99999999 is out of range
    value = float(token)
    if value in (float("inf"), float("-inf")):
        return None
    if not digits:
        return value
    scale = (int(exp) if exp else 0) - len(frac or "")
    if not -1200 <= scale + len(digits) <= 330:   # far outside binary64's range: no Fraction of it
        return None
    exact = Fraction(token)
    if Fraction(value) == exact:
        return value
    if frac is None and exp is None:              # an integer token must be exact
        return None
    return value if Fraction(repr(value)) == exact else None


def _number_hook(token: str) -> float:
    value = binary64_of_token(token)
    if value is None:
        shown = token if len(token) <= 40 else token[:37] + "..."
        raise _BadNumber(shown)
    return value


def _int_hook(token: str) -> int | float:
    value = _number_hook(token)
    return int(value)


class _BadNumber(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


class _Duplicate(ValueError):
    pass


def check_depth(data: bytes, where: str, limit: int = MAX_DEPTH) -> None:
    """Refuse nesting deeper than `limit` before the parser recurses into it."""
    depth = 0
    for m in _BRACKETS.finditer(_STRING.sub(b'""', data)):
        depth += 1 if m.group() in (b"[", b"{") else -1
        if depth > limit:
            raise InputError(where, f"nesting deeper than {limit}", f"at most {limit} nested arrays/objects")


def regular_file(path: str | Path, where: str, limit: int) -> int:
    """The size of a regular file of at most `limit` bytes (no devices, FIFOs or folders)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise InputError(where, str(path), f"an existing readable file ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(where, str(path), "a regular file (not a folder, device or pipe)")
    if info.st_size > limit:
        raise InputError(where, f"{path} ({info.st_size} bytes)", f"a file of at most {limit} bytes")
    return info.st_size


def read_regular_file(path: str | Path, where: str, limit: int = MAX_JSON_BYTES, *, follow_links: bool = True) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (no devices, FIFOs or folders: the
    file is opened without blocking and checked on its open descriptor). With follow_links=False
    a symbolic link is refused too (files of a results store: nothing there may point outside)."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (0 if follow_links else getattr(os, "O_NOFOLLOW", 0))
    if not follow_links and path.is_symlink():  # where O_NOFOLLOW is missing, and for a clearer message
        raise InputError(where, str(path), "a regular file, not a symbolic link")
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(where, str(path), "a regular file, not a symbolic link") from None
        raise InputError(where, str(path), f"an existing readable file ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(where, str(path), "a regular file (not a folder, device or pipe)")
        if info.st_size > limit:
            raise InputError(where, f"{path} ({info.st_size} bytes)", f"a file of at most {limit} bytes")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise InputError(where, str(path), f"a readable file ({exc.strerror})") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise InputError(where, str(path), f"a file of at most {limit} bytes")
    return data


def loads(data: bytes | str, where: str) -> Any:
    """Parse JSON under the number rule and the caps; InputError naming `where` otherwise."""
    raw = data.encode() if isinstance(data, str) else data
    check_depth(raw, where)
    try:
        text = raw.decode("utf-8")
        return json.loads(text, parse_float=_number_hook, parse_int=_int_hook, parse_constant=_reject_constant,
                          object_pairs_hook=_no_duplicates)
    except _BadNumber as exc:
        raise InputError(where, str(exc), "numbers that are exactly finite binary64 values "
                                          "(or their shortest decimal); see docs/design.md 'Numbers'") from None
    except _Duplicate as exc:
        raise InputError(where, f"duplicate key {str(exc)!r}", "each key once per object") from None
    except UnicodeDecodeError as exc:
        raise InputError(where, "bytes that are not UTF-8", f"a UTF-8 JSON file ({exc.reason})") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InputError(where, "invalid JSON", f"valid JSON ({str(exc)[:80]})") from None


def _reject_constant(token: str) -> float:
    raise _BadNumber(token)


def load(path: str | Path, where: str, limit: int = MAX_JSON_BYTES) -> Any:
    """Read and parse a JSON file with `loads`."""
    return loads(read_regular_file(path, where, limit), where)
