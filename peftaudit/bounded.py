"""Run a piece of work within a wall-clock and a memory budget that hold whatever the work does.

Exact certification of a hostile instance (magnitudes near the binary64 range, thousands of
examples) can grow rationals without bound inside single C-level operations, where neither a
signal handler nor a watchdog thread gets to run. So the work runs in a forked child: this
process only watches it (its resident memory above what it had when forked, and the clock) and
kills it when a budget is spent. The child's result (or exception) comes back pickled through a
pipe. Where fork is missing (Windows) the work runs here with SIGALRM as its only limit.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import sys
import time
import traceback
from typing import Callable, TypeVar

T = TypeVar("T")
_POLL_S = 0.05


class BudgetExceeded(Exception):
    """The work was stopped: `what` is "time" or "memory"."""

    def __init__(self, what: str, detail: str):
        super().__init__(detail)
        self.what = what


def _rss_bytes(pid: int) -> int | None:
    """Resident memory of a process (Linux /proc), None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _child(work: Callable[[], T], fd: int) -> None:
    """In the forked child: run the work, send ("ok", value) or ("raise", exception), exit."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; it kills the child
    try:
        payload = ("ok", work())
    except BaseException as exc:  # noqa: BLE001 - every exception goes back to the parent
        exc.__notes__ = [*getattr(exc, "__notes__", []), "in the bounded child:\n" + traceback.format_exc()]
        payload = ("raise", exc)
    try:
        data = pickle.dumps(payload)
        pickle.loads(data)  # what does not come back whole is sent as a one-line error instead
    except Exception as exc:  # noqa: BLE001 - an exception (or value) that does not pickle
        data = pickle.dumps(("raise", RuntimeError(f"the result could not be sent back: {exc}")))
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os._exit(0)


def run_bounded(work: Callable[[], T], *, seconds: float | None, max_mb: int | None) -> T:
    """work() computed in a child within `seconds` of wall clock and `max_mb` MB of resident
    memory above the child's start (None: no limit); BudgetExceeded when one is spent, the
    work's own exception re-raised here otherwise."""
    if not hasattr(os, "fork"):
        return _run_here(work, seconds)
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_fd)
        _child(work, write_fd)
    os.close(write_fd)
    base = _rss_bytes(pid)
    started = time.monotonic()
    chunks: list[bytes] = []
    stopped: BudgetExceeded | None = None
    try:
        while True:
            ready, _, _ = select.select([read_fd], [], [], _POLL_S)
            if ready:
                data = os.read(read_fd, 1 << 20)
                if not data:
                    break
                chunks.append(data)
                continue
            elapsed = time.monotonic() - started
            if seconds and elapsed > seconds:
                stopped = BudgetExceeded("time", f"timed out after {seconds:g} s (--timeout)")
                break
            rss = _rss_bytes(pid)
            if max_mb and rss is not None and base is not None and rss - base > max_mb * 2**20:
                stopped = BudgetExceeded("memory", f"stopped at the memory budget of {max_mb} MB (--max-memory) "
                                                   f"after {elapsed:.1f} s")
                break
    finally:
        if stopped is not None or chunks == [] or sys.exc_info()[0] is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    if stopped is not None:
        raise stopped
    try:
        kind, value = pickle.loads(b"".join(chunks))
    except Exception:  # noqa: BLE001 - the child died before it sent a whole result
        raise RuntimeError(f"the certifying process ended without a result (status {status})") from None
    if kind == "raise":
        raise value
    return value


def _run_here(work: Callable[[], T], seconds: float | None) -> T:
    """work() in this process, with SIGALRM as the time limit (main thread only)."""
    import threading

    if not seconds or not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        return work()

    def expire(signum: int, frame: object) -> None:
        raise BudgetExceeded("time", f"timed out after {seconds:g} s (--timeout)")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return work()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
