"""What a checker returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction


@dataclass(frozen=True)
class CheckResult:
    valid: bool
    reason: str
    margin: Fraction | None = None  # the margin the checker established
    facts: dict = field(default_factory=dict)  # other numbers the checker established (e.g. L2's N)
