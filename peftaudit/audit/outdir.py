"""Output folders (a report, a method card): checked before any work, replaced only when they
hold a previous output of the same kind.

Nothing the user had is overwritten: `--out` must not exist, or be an empty folder; with
`force` it may also be a folder holding a previous peftaudit report (recognised by a
report.json whose schema is peftaudit's; a card by its card.json), which is then replaced
whole. A file, a link, or a folder with anything else in it is refused, with or without `force`.

An audit's out folder holds its results store (store/) while it runs; `--resume` takes such an
unfinished folder (a store, no report.json). A previous report replaced with `force` is moved to
a hidden sibling when the run starts and removed once the new report is in place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from peftaudit.errors import InputError

KINDS = {"report": ("report.json", "peftaudit.report/"), "card": ("card.json", "peftaudit.card/")}


def is_previous_report(path: Path, kind: str = "report") -> bool:
    """A folder written by `peftaudit audit` (its report.json names peftaudit's report schema), or
    for kind "card" by `peftaudit card`."""
    marker, prefix = KINDS[kind]
    report = path / marker
    if path.is_symlink() or not report.is_file() or report.is_symlink() or report.stat().st_size > 512 * 2**20:
        return False
    try:
        schema = json.loads(report.read_text()).get("schema", "")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(schema, str) and schema.startswith(prefix)


def install(tmp: Path, out_dir: Path, force: bool, kind: str = "report") -> None:
    """Move the finished folder `tmp` to out_dir, replacing a previous output (checked again here:
    the folder may have changed while the work ran)."""
    check_out_dir(out_dir, force, kind)
    if out_dir.exists() and any(out_dir.iterdir()):  # a previous output (checked just above), --force
        old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
        os.replace(out_dir, old / kind)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if out_dir.exists():
            out_dir.rmdir()  # empty
        os.replace(tmp, out_dir)


def set_aside(out_dir: Path, force: bool) -> None:
    """Move a previous report (allowed by check_out_dir with force) to a hidden sibling, whose path
    out_dir/.previous keeps; nothing when out_dir is new or empty."""
    if not (force and out_dir.is_dir() and any(out_dir.iterdir())):
        return
    old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.previous-"))
    os.replace(out_dir, old / "report")
    out_dir.mkdir()
    (out_dir / ".previous").write_text(str(old))


def is_unfinished_run(path: Path) -> bool:
    """An audit's out folder that a run left before its report: store/plan.json and no report.json."""
    return (path.is_dir() and not path.is_symlink() and (path / "store" / "plan.json").is_file()
            and not (path / "report.json").exists())


def check_resumable(folder: str | Path) -> Path:
    path = Path(folder)
    if path.is_symlink() or not path.is_dir():
        raise InputError("--resume", str(path), "the out folder of an unfinished audit (a folder, not a link)")
    if (path / "report.json").exists():
        raise InputError("--resume", str(path), "an unfinished audit (this one finished: report.json is there)")
    if not is_unfinished_run(path):
        raise InputError("--resume", str(path), "the out folder of an unfinished audit (no store/plan.json here)")
    return path


def install_run(tmp: Path, out_dir: Path) -> None:
    """Put the finished report folder `tmp` in place of the run's out_dir, taking its store along
    and removing a previous report that waited aside. Anything else found in out_dir is kept and
    the report is not installed."""
    from peftaudit.jsonio import read_regular_file

    note = out_dir / ".previous"
    previous = None
    if note.exists() or note.is_symlink():
        try:  # the note this run wrote: a regular file, read without following a link or blocking
            previous = Path(read_regular_file(note, ".previous", 4096, follow_links=False).decode())
        except (InputError, UnicodeDecodeError):
            previous = None
        note.unlink()
    others = [p.name for p in out_dir.iterdir() if p.name not in ("store", ".previous")]
    if others:
        raise InputError("--out", str(out_dir), f"a folder holding only this run's store (it also holds {others[:5]}; "
                                                f"the report was not written: move them away, then --resume)")
    os.replace(out_dir / "store", tmp / "store")
    out_dir.rmdir()
    os.replace(tmp, out_dir)
    if previous is not None and previous.parent == out_dir.parent and previous.name.startswith(f".{out_dir.name}.previous-"):
        shutil.rmtree(previous, ignore_errors=True)


def check_out_dir(out: str | Path, force: bool = False, kind: str = "report") -> Path:
    """Validate the report folder before any work; InputError naming what is wrong."""
    path = Path(out)
    if path.is_symlink():
        raise InputError("--out", str(path), "a folder path that is not a symbolic link")
    if path.exists():
        if not path.is_dir():
            raise InputError("--out", str(path), "a new or empty folder (this is an existing file; nothing is "
                                                  "overwritten)")
        if any(path.iterdir()):
            if is_unfinished_run(path):
                raise InputError("--out", str(path), "a new or empty folder (it holds an unfinished audit: finish it "
                                                      "with --resume, nothing is replaced)")
            if not force:
                raise InputError("--out", str(path), "a new or empty folder (it holds files; --force replaces a "
                                                      "previous peftaudit report, nothing else)")
            if not is_previous_report(path, kind):
                raise InputError("--out", str(path), f"a previous peftaudit {kind} to replace with --force (no "
                                                      f"{KINDS[kind][0]} of peftaudit's here; nothing is replaced)")
    parent = path.parent if str(path.parent) else Path(".")
    ancestor = parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError("--out", str(path), f"a folder that can be created ({ancestor} is not a writable folder)")
    return path
