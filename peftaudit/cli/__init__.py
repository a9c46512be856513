"""The `peftaudit` command line: one module per subcommand (certify, generate, search, audit, card),
argument checks in args.py, the exit codes in exits.py. Each subcommand validates its input
before any work starts; here every exception becomes its exit code and one line."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from peftaudit.errors import InputError, PeftauditError, Terminated, one_line

from . import audit, card, certify, exits, generate, search

SUBCOMMANDS = (certify, generate, search, audit, card)   # each has register(subparsers)


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors in one line (the usage block is what --help is for)."""

    def error(self, message: str):
        self.exit(exits.BAD_INPUT, f"{self.prog}: error: {message} (`{self.prog} --help` shows the usage)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="peftaudit", description="Audit what a parameter-efficient fine-tuning method can and cannot learn: certificates checked in exact arithmetic, replayed counterexamples, reports.")
    sub = parser.add_subparsers(dest="command", required=True)

    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def _internal_error(command: str, exc: BaseException) -> int:
    """Exit 3 with one line; the traceback goes to a log file, never to the terminal."""
    import tempfile
    import traceback
    from datetime import datetime, timezone

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        fd, log = tempfile.mkstemp(prefix=f"peftaudit-{command}-{stamp}-", suffix=".log")
        with open(fd, "w") as fh:
            fh.write(text)
        where = f"traceback in {log}"
    except OSError:
        where = "no log could be written"
    print(f"peftaudit {command}: internal error: {one_line(exc)} ({where})", file=sys.stderr)
    return exits.INTERNAL


def _terminate(signum: int, frame: object) -> None:
    raise Terminated  # SIGTERM is handled like Ctrl-C: cleaned up, nothing partial left


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help exits 0
        return int(exc.code or 0)
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (e.g. called from a test runner's worker thread)
        previous = None
    try:
        return args.func(args)
    except InputError as exc:
        print(f"peftaudit {args.command}: bad input: {exc}", file=sys.stderr)
        return exits.BAD_INPUT
    except PeftauditError as exc:
        print(f"peftaudit {args.command}: {exc}", file=sys.stderr)
        return exits.BAD_INPUT
    except (KeyboardInterrupt, Terminated):
        print(f"peftaudit {args.command}: interrupted", file=sys.stderr)
        return exits.INTERRUPTED
    except OSError as exc:  # a full disk, a vanished folder: say which file, no traceback
        print(f"peftaudit {args.command}: cannot read or write {exc.filename or 'a file'}: {exc.strerror or exc}",
              file=sys.stderr)
        return exits.INTERNAL
    except MemoryError:
        print(f"peftaudit {args.command}: out of memory (lower the sizes or --max-memory)", file=sys.stderr)
        return exits.INTERNAL
    except Exception as exc:  # noqa: BLE001  an internal error: one line, exit 3, traceback to a log
        return _internal_error(args.command, exc)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
