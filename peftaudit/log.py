"""The one progress line format of long work ('[peftaudit] message' on stderr)."""

from __future__ import annotations

import sys


def log_stderr(message: str) -> None:
    print(f"[peftaudit] {message}", file=sys.stderr, flush=True)
