"""Conformance rules generated from the method registry: every registered method (built-in, peft
guest, entry-point plugin) against every rule of peftaudit/conformance.py."""

import pytest

from peftaudit.conformance import RULES, check_rule
from peftaudit.models.methods import method_names


def _available() -> list[str]:
    names = method_names()
    try:
        import peft  # noqa: F401
    except ImportError:  # the guests need the peft extra (part of the test install)
        names = [n for n in names if not n.startswith("peft-")]
    return names


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("name", _available())
def test_registered_method_conforms(name, rule):
    result = check_rule(rule, name)
    assert result.ok, f"{name} breaks '{rule}': {result.detail}"
    assert result.detail  # every rule says what it checked
    if result.skipped:  # an ability the method does not offer: judged nothing, so no pass
        pytest.skip(result.detail)


def test_a_rule_can_fail():
    """The rules are not vacuous: a scaled LoRA whose count is off is caught."""
    from peftaudit.models.methods.lora import LoRA
    from peftaudit.models.methods import registered_method

    class Miscounted(LoRA):
        def param_count(self, spec, size):
            return super().param_count(spec, size) - 1

    with registered_method("miscounted-lora", Miscounted):
        assert not check_rule("the parameter count matches the trainable tensors", "miscounted-lora").ok
