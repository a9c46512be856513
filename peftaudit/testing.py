"""Helpers for users' own test suites: check a PEFT method against the conformance rules.

    from peftaudit.testing import assert_conforms
    def test_my_method_conforms():
        assert_conforms("my_pkg.methods:GatedAdapter")
"""

from __future__ import annotations

from peftaudit.conformance import RULES, RuleResult, check_method

__all__ = ["RULES", "RuleResult", "assert_conforms", "check_method"]


def assert_conforms(name: str, options: dict | None = None, size: int | None = None) -> list[RuleResult]:
    """Run every rule; raise AssertionError naming each broken rule and why. Returns the results."""
    results = check_method(name, options, size)
    broken = [r for r in results if not r.ok]
    if broken:
        raise AssertionError(f"{name} breaks {len(broken)} conformance rule(s):\n" +
                             "\n".join(f"- {r.rule}: {r.detail.splitlines()[0] if r.detail else ''}" for r in broken))
    return results
