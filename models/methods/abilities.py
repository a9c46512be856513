"""The optional part of the method contract, declared once: each ability with its default and
what it means. Code reads an ability through `ability(method, name)`, the one place its default
lives, never by probing a method with getattr or hasattr. docs/methods.md lists the same table.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass


@dataclass(frozen=True)
class Ability:
    name: str
    default: object
    doc: str


ABILITIES = {a.name: a for a in (
    Ability("kind", "", "'input-space': it only prepends trainable tokens, its size their number (it inherits the "
                        "prompt claims as their falsifier, and must declare a pure prompt as its exact model); "
                        "'weight-space': it changes how the frozen weights act; '': undeclared"),
    Ability("update_class", "", "'value-rank': it changes W_v only, by an update of rank <= its size (LoRA on v, "
                                "VeRA on W_v): claim LV applies to it; 'value-scale': it only scales the rows of W_v, "
                                "diag(l) W_v (IA3 on v): claim LV-scale applies to it. Such a method is searched as "
                                "the claim's falsifier, and a conformance rule checks the declaration on random "
                                "adapters; '': undeclared"),
    Ability("projectable", False, "True when project(trainable, bound) keeps its tokens in a norm ball (claim M "
                                  "searches it under the ball only then)"),
    Ability("sized", True, "False for a method with one size (full fine-tuning, IA3): it runs at size 1 only"),
    Ability("outputs_and_jacobian", None, "outputs_and_jacobian(spec, params, trainable, X, keep=k) -> (outputs "
                                          "(B, E, k, d), Jacobian (B, E*k*d, P)): Levenberg-Marquardt takes its "
                                          "Jacobians from it instead of torch.func"),
    Ability("refusal", None, "refusal(spec, size) -> '' or why torch.func's vmap or jvp refuses the method's "
                             "forward (module methods detect it once, when prepared): the search then runs it "
                             "problem by problem, with Jacobians by plain autograd"),
    Ability("identity_adapter", None, "identity_adapter(spec, size) -> (params, trainable) at which the method "
                                      "leaves the frozen model's outputs unchanged (a conformance rule)"),
    Ability("declared_params", None, "declared_params(spec, size) -> the trainable count a paper states, checked "
                                     "against the trainable tensors (a conformance rule)"),
)}


def ability(method: object, name: str) -> object:
    """The method's declared ability `name`, or its default (an unknown name is a KeyError: every
    ability is declared above)."""
    return getattr(method, name, ABILITIES[name].default)


def takes_keep(method: object) -> bool:
    """The method's outputs accept keep=k (the last k positions only), read from its signature."""
    try:
        return "keep" in inspect.signature(method.outputs).parameters
    except (TypeError, ValueError, AttributeError):
        return False
