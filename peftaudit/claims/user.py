"""Claims about a user's method in a line of Python, in the units papers use, audited by the
verdict rules of peftaudit/evidence/verdict.py (docs/design.md).

    from peftaudit.claims.user import cannot_memorize, memorizes
    register_claim(memorizes("my_pkg:MyMethod", "random", params=8, examples=6, d=4))
    register_claim(cannot_memorize("my_pkg:MyMethod", "random", params=4, examples=6, d=4))
    register_claim(memorizes("my_pkg:MyMethod", "planted-lora", size=1))      # by the method's size

A "can" claim (`memorizes`) is CERTIFIED only when every drawn instance carries a witness: an
adapter of the method whose memorization the interval replay of the method's declared exact
model confirms. An instance without one leaves it NOT-SHOWN, which fails CI (a search miss is
no proof either way); a checked certificate of impossibility (the family's prompt certificate,
for an input-space method at a size it covers) refutes it. A "cannot" claim is refuted by a
found adapter, replayed and confirmed the same way. The method is the claim's subject: `--methods`
never drops it.
"""

from __future__ import annotations

from typing import Sequence

from peftaudit.errors import InputError
from peftaudit.models.methods.abilities import ability
from peftaudit.settings import Profile
from peftaudit.strategies.families import draw_family, family_name, get_family

from .base import Claim, MethodRun, get_claim

MAX_BUDGET_SIZE = 4096  # sizes tried when a parameter budget is turned into the method's size


def _draw(family: str, count: int | None, d: int | None):
    def draw(profile: Profile, seed: int):
        dims = [d] if d is not None else [x for x in profile.dims if x >= get_family(family).min_d] or \
            [get_family(family).min_d]
        n = count or profile.instances
        out = []
        for i in range(n):  # one draw per instance, each at its width (reproducible from the seed)
            out.extend(draw_family(family, 1, dims[i % len(dims)], seed * 1000 + i))
        return out
    return draw


def _hypotheses(family: str):
    claim_id = get_family(family).prompt_certificate
    if not claim_id:
        return lambda inst: None
    return get_claim(claim_id).hypotheses


def _certifier(method: str, options: dict, family: str, size: int):
    """The family's prompt certificate, where it covers this method at this size."""
    from peftaudit.models.methods import get_method

    claim_id = get_family(family).prompt_certificate
    m = get_method(method, **options)
    if ability(m, "kind") != "input-space" or claim_id not in ("L1", "L2"):
        return None
    if claim_id == "L2" and size >= 2:  # L2 rules out prompts shorter than N = 2 only
        return None
    return get_claim(claim_id).certify


def sizes_within(method: str, options: dict, family: str, d: int | None, params: int) -> list[tuple[int, int]]:
    """(size, trainable parameters) for every size of the method whose count at width d is at
    most `params`, smallest first. A budget needs the width (counts grow with d)."""
    from peftaudit.models.methods import get_method
    from peftaudit.models.methods.base import one_size

    if isinstance(params, bool) or not isinstance(params, int) or params < 1:
        raise InputError("params", params, "a positive integer (trainable parameters)")
    if d is None:
        raise InputError("d", d, "the width d beside params= (a method's parameter count depends on it)")
    spec = draw_family(family, 1, d, 0)[0].spec
    m = get_method(method, **options)
    out = []
    for size in [1] if one_size(m) else range(1, MAX_BUDGET_SIZE + 1):
        count = m.param_count(spec, size)
        if count > params:
            break
        out.append((size, count))
    if not out:
        raise InputError("params", params, f"a budget of at least {m.param_count(spec, 1)} ({method}'s smallest "
                                           f"size at d = {d})")
    return out


def _units(method: str, family: str, params: int | None, d: int | None, sizes: Sequence[int], size_name: str) -> str:
    data = get_family(family).description
    budget = f"at most {params} trainable parameters" if params is not None else \
        f"{size_name} {', '.join(map(str, sizes))}"
    return f"{method} with {budget} on {data}" + (f" at d = {d}" if d is not None else "")


def cannot_memorize(method: str, family: str, *, sizes: Sequence[int] | None = None, params: int | None = None,
                    examples: int | None = None, options: dict | None = None, id: str | None = None,
                    count: int | None = None, d: int | None = None, source: str = "user claim") -> Claim:
    """'`method` cannot memorize any instance of `family`', at these sizes (default 1, 2, 4) or
    within `params` trainable parameters at width `d` (every size that fits the budget);
    `examples=N` picks the family's N (family "random")."""
    from peftaudit.models.methods import get_method

    family = family_name(family, examples)
    get_family(family)
    options = dict(options or {})
    if params is not None and sizes is not None:
        raise InputError("sizes", sizes, "either sizes= or params=, not both")
    if params is not None:
        sizes = tuple(s for s, _ in sizes_within(method, options, family, d, params))
    sizes = tuple(sizes or (1, 2, 4))
    statement = _units(method, family, params, d, sizes, get_method(method, **options).size_name)
    return Claim(
        id=id or f"{method} cannot memorize {family}" + (f" with {params} params" if params is not None else ""),
        title=f"{statement}: no adapter memorizes an instance",
        source=source, formalization=f"No adapter of {statement} brings the replayed max error on an instance to "
                                     "1e-8 or below.",
        kind="cannot", draw=_draw(family, count, d), hypotheses=_hypotheses(family),
        falsifiers=(MethodRun(method, options, sizes),), subject=method)


def memorizes(method: str, family: str, *, size: int | None = None, params: int | None = None,
              examples: int | None = None, options: dict | None = None, id: str | None = None,
              count: int | None = None, d: int | None = None, source: str = "user claim") -> Claim:
    """'`method` memorizes every instance of `family`', at `size`, or with at most `params`
    trainable parameters at width `d` (its largest size within the budget); `examples=N` picks
    the family's N (family "random")."""
    from peftaudit.models.methods import get_method

    family = family_name(family, examples)
    get_family(family)
    options = dict(options or {})
    if (size is None) == (params is None):
        raise InputError("size", size, "exactly one of size= and params=")
    if params is not None:
        size = sizes_within(method, options, family, d, params)[-1][0]
    statement = _units(method, family, params, d, (size,), get_method(method, **options).size_name)
    return Claim(
        id=id or f"{method} memorizes {family}" + (f" with {params} params" if params is not None else ""),
        title=f"{statement}: every instance memorized",
        source=source, formalization=f"For every instance, some adapter of {statement} has an exact-model max error "
                                     "<= 1e-8, confirmed by interval replay (a witness per instance).",
        kind="can", draw=_draw(family, count, d), hypotheses=_hypotheses(family),
        falsifiers=(MethodRun(method, options, (size,)),),
        certify=_certifier(method, options, family, size), subject=method,
        refuted_by="a checked certificate of impossibility (the family's prompt certificate, for input-space "
                   "methods)")
