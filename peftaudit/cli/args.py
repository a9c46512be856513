"""Argument types and checks shared by the subcommands: every value is checked (and bounded)
before any work starts, with a message naming what was expected."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from peftaudit.errors import InputError
from peftaudit.limits import MAX_SEED, MAX_SIZE


def int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum, with a message naming what was expected."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse




def bounded(low: int, high: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (checked before the text is converted when
    it is longer than the bound could be)."""
    parse_low = int_at_least(low, what)

    def parse(text: str) -> int:
        if len(text.strip()) > len(str(high)) + 1:
            raise argparse.ArgumentTypeError(f"expected {what} (at most {high}), got {text[:40]!r}")
        value = parse_low(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"expected {what} (at most {high}), got {value}")
        return value
    return parse


seed = bounded(0, MAX_SEED, "a seed, an integer >= 0")


def names(text: str, what: str) -> list[str]:
    """Comma-separated names; an empty list is an error, never 'all'."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise InputError(what, text, "one or more comma-separated names (leave the option out for all)")
    return names


def positive_float(text: str) -> float:
    value = nonneg_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    if any(v > MAX_SIZE for v in values):
        raise argparse.ArgumentTypeError(f"expected sizes of at most {MAX_SIZE}, got {text!r}")
    return values


def new_file(path: str | None, force: bool) -> None:
    """An --out file must be new, or --force must say that replacing a regular file is meant."""
    if path is None:
        return
    target = Path(path)
    if target.exists() or target.is_symlink():
        if not force or not target.is_file() or target.is_symlink():
            raise InputError("--out", path, "a new file (it exists; --force replaces a regular file)")
    if target.parent.exists() and not target.parent.is_dir():
        raise InputError("--out", path, f"a path in a folder ({target.parent} is not one)")


def method_options(args: argparse.Namespace) -> dict:
    """--option key=value pairs (values read as JSON where they parse, else as text), with --targets
    for the methods that take targets."""
    options: dict = {}
    for item in args.option or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise InputError("--option", item, "key=value")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    if args.targets is not None or args.method == "lora":
        options.setdefault("targets", args.targets or "v")
    return options
