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


class UnknownNameError(InputError):
    """A name that no registry knows; the message lists the known names."""

    def __init__(self, kind: str, name: str, known: list[str]):
        super().__init__(kind, name, "one of " + ", ".join(sorted(known)))
