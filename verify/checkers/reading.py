"""The checker's own copy of the number rule and of strict JSON reading (docs/design.md "Numbers").

A JSON number token is accepted only if, read as a decimal, it is exactly a finite binary64
value or that value's shortest round-trip decimal; it then stands for that binary64 value,
returned here as the exact `Fraction`. Integer tokens must be exact (`int`). Rationals the
certificate itself states are strings "p" or "p/q" of bounded length. Written apart from the
loader's copy (peftaudit/jsonio.py) on purpose; tests/test_numbers.py holds both to one corpus.
"""

from __future__ import annotations

import json
import os
import re
import stat
from fractions import Fraction
from typing import Any


class MalformedCertificate(ValueError):
    """The certificate is not a well-formed certificate (as opposed to a false one)."""


MAX_FILE_BYTES = 512 * 2**20   # a certificate embeds its instance; larger files are refused
MAX_DEPTH = 64
MAX_TOKEN = 1100               # characters of one JSON number token
MAX_RATIONAL_DIGITS = 20_000   # digits of p and of q in a "p/q" string
_NUMBER = re.compile(r"(-?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?")
_RATIONAL = re.compile(r"(-?\d+)(?:/(\d+))?")
_STRING = re.compile(rb'"(?:\\.|[^"\\])*"', re.S)
_BRACKET = re.compile(rb"[][{}]")


def shorten(text: str, keep: int = 40) -> str:
    return text if len(text) <= keep else text[: keep - 3] + "..."


def token_value(token: str) -> Fraction | None:
    """The exact rational of the binary64 value a number token stands for, or None."""
    m = _NUMBER.fullmatch(token) if len(token) <= MAX_TOKEN else None
    if m is None:
        return None
    sign, whole, frac, exp = m.groups()
    frac = frac or ""
    mantissa = int(whole + frac)
    if mantissa == 0:
        return Fraction(0)
    if exp is None:
        e10 = -len(frac)
    elif len(exp.lstrip("+-")) > 7:          # beyond any binary64 value either way; no big powers
        return None
    else:
        e10 = int(exp) - len(frac)
    magnitude = len(str(mantissa)) + e10      # value lies in [10^(magnitude-1), 10^magnitude)
    if magnitude > 309 or magnitude < -330:  # beyond binary64's finite non-zero range
        return None
    exact = Fraction(mantissa) * (Fraction(10) ** e10)
    if sign:
        exact = -exact
    try:
        nearest = float(exact)               # correctly rounded
    except OverflowError:
        return None
    if nearest in (float("inf"), float("-inf")):
        return None
    if Fraction(nearest) == exact:
        return exact
    if not frac and exp is None:             # integer tokens must be exact
        return None
    if Fraction(repr(nearest)) == exact:     # the shortest round-trip decimal of `nearest`
        return Fraction(nearest)
    return None


class _Bad(ValueError):
    pass


def _float_token(token: str) -> Fraction:
    value = token_value(token)
    if value is None:
        raise _Bad(f"number {shorten(token)} is not exactly a finite binary64 value")
    return value


def _int_token(token: str) -> int:
    value = _float_token(token)
    return int(value)


def _constant(token: str) -> Any:
    raise _Bad(f"{token} is not a JSON number")


def _pairs(pairs: list) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _Bad(f"duplicate key {shorten(key)!r}")
        out[key] = value
    return out


def parse(data: bytes) -> Any:
    """JSON bytes -> Python data with number tokens as int / Fraction; MalformedCertificate otherwise."""
    depth = 0
    for bracket in _BRACKET.findall(_STRING.sub(b"", data)):
        depth += 1 if bracket in b"[{" else -1
        if depth > MAX_DEPTH:
            raise MalformedCertificate(f"nesting deeper than {MAX_DEPTH}")
    try:
        return json.loads(data.decode("utf-8"), parse_float=_float_token, parse_int=_int_token,
                          parse_constant=_constant, object_pairs_hook=_pairs)
    except _Bad as exc:
        raise MalformedCertificate(str(exc)) from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MalformedCertificate(f"not valid JSON ({shorten(str(exc), 80)})") from None


def read_file(path: str) -> bytes:
    """A regular file's bytes, at most MAX_FILE_BYTES; MalformedCertificate otherwise."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise MalformedCertificate(f"{shorten(str(path), 200)}: not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise MalformedCertificate(f"{shorten(str(path), 200)}: larger than {MAX_FILE_BYTES} bytes")
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise MalformedCertificate(f"{shorten(str(path), 200)}: not readable ({exc.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise MalformedCertificate(f"{shorten(str(path), 200)}: larger than {MAX_FILE_BYTES} bytes")
    return data


def rational(x: Any, where: str) -> Fraction:
    """A number the certificate states: a JSON number (already exact) or a string 'p' / 'p/q'."""
    if isinstance(x, bool):
        raise MalformedCertificate(f"{where}: expected a number, got {x!r}")
    if isinstance(x, (int, Fraction)):
        return Fraction(x)
    if isinstance(x, str):
        m = _RATIONAL.fullmatch(x) if len(x) <= 2 * MAX_RATIONAL_DIGITS + 2 else None
        if m is None or len(m.group(1)) > MAX_RATIONAL_DIGITS + 1:
            raise MalformedCertificate(f"{where}: expected a rational 'p/q' of at most {MAX_RATIONAL_DIGITS} "
                                       f"digits each, got {shorten(x)!r}")
        den = int(m.group(2)) if m.group(2) else 1
        if den == 0:
            raise MalformedCertificate(f"{where}: zero denominator in {shorten(x)!r}")
        return Fraction(int(m.group(1)), den)
    raise MalformedCertificate(f"{where}: expected a number, got {type(x).__name__}")


def binary64(x: Any, where: str) -> Fraction:
    """A number of the embedded instance: a JSON number token only (never a 'p/q' string)."""
    if isinstance(x, bool) or not isinstance(x, (int, Fraction)):
        raise MalformedCertificate(f"{where}: expected a JSON number, got {shorten(repr(x))}")
    value = Fraction(x)
    if isinstance(x, int) and (abs(x) >= 2**1024 or Fraction(float(x)) != value):  # ints built by a caller, not by `parse`
        raise MalformedCertificate(f"{where}: {shorten(str(x))} is not exactly a binary64 value")
    return value
