"""Public errors. Every message names the argument, its value and what was expected."""

from __future__ import annotations


class PeftauditError(Exception):
    """Base class of every error peftaudit raises on purpose."""


class Terminated(BaseException):
    """SIGTERM, handled like Ctrl-C (cleaned up, nothing partial left). Not a KeyboardInterrupt:
    CPython kills itself with SIGINT at exit when a KeyboardInterrupt passed through some C-level
    evaluation during the run, even one caught later, so SIGTERM would end as -2, not 130."""


class InputError(PeftauditError, ValueError):
    """Bad input: a file, an argument or an option that cannot be used as given."""

    def __init__(self, field: str, value: object, expected: str):
        shown = repr(value)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        super().__init__(f"{field}: got {shown}, expected {expected}")
        self.field = field
        self.value = value
        self.expected = expected

    def __reduce__(self):  # pickled by the field, value and expectation (it crosses process boundaries)
        return (InputError, (self.field, self.value, self.expected))


class UnknownNameError(InputError):
    """A name that no registry knows; the message lists the known names."""

    def __init__(self, kind: str, name: str, known: list[str]):
        super().__init__(kind, name, "one of " + ", ".join(sorted(known)))
        self.known = list(known)

    def __reduce__(self):
        return (UnknownNameError, (self.field, self.value, self.known))


# What code a user brings (a method, a claim, a plugin module) may raise when it fails: any
# Exception, and SystemExit (a `sys.exit` inside a plugin is that plugin's failure, not the
# command's exit). Ctrl-C and SIGTERM (KeyboardInterrupt, Terminated) are not in it: they pass.
PLUGIN_FAILURES = (Exception, SystemExit)


def last_line(trace: str, limit: int = 200) -> str:
    """The last line of a traceback (the exception and its message), shortened: what a terminal
    or a report shows of a stored traceback."""
    lines = trace.strip().splitlines()
    return (lines[-1] if lines else "")[:limit]


def one_line(exc: BaseException, limit: int = 200) -> str:
    """'ExcType: first line of the message', shortened: what a reason column or a terminal shows
    of an exception (its traceback goes to a log file)."""
    if isinstance(exc, SystemExit):
        return f"SystemExit: the code called sys.exit({exc.code!r})"[:limit]
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    shown = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."
