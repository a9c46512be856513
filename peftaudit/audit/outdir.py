"""The report folder: checked before any work, replaced only when it is a previous report.

Nothing the user had is overwritten: `--out` must not exist, or be an empty folder; with
`force` it may also be a folder holding a previous peftaudit report (recognised by a
report.json whose schema is peftaudit's), which is then replaced whole. A file, a link, or a
folder with anything else in it is refused, with or without `force`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from peftaudit.errors import InputError


def is_previous_report(path: Path) -> bool:
    """A folder written by `peftaudit audit` (its report.json names peftaudit's report schema)."""
    report = path / "report.json"
    if path.is_symlink() or not report.is_file() or report.is_symlink() or report.stat().st_size > 512 * 2**20:
        return False
    try:
        schema = json.loads(report.read_text()).get("schema", "")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(schema, str) and schema.startswith("peftaudit.report/")


def check_out_dir(out: str | Path, force: bool = False) -> Path:
    """Validate the report folder before any work; InputError naming what is wrong."""
    path = Path(out)
    if path.is_symlink():
        raise InputError("--out", str(path), "a folder path that is not a symbolic link")
    if path.exists():
        if not path.is_dir():
            raise InputError("--out", str(path), "a new or empty folder (this is an existing file; nothing is "
                                                  "overwritten)")
        if any(path.iterdir()):
            if not force:
                raise InputError("--out", str(path), "a new or empty folder (it holds files; --force replaces a "
                                                      "previous peftaudit report, nothing else)")
            if not is_previous_report(path):
                raise InputError("--out", str(path), "a previous peftaudit report to replace with --force (no "
                                                      "report.json of peftaudit's here; nothing is replaced)")
    parent = path.parent if str(path.parent) else Path(".")
    ancestor = parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError("--out", str(path), f"a folder that can be created ({ancestor} is not a writable folder)")
    return path
