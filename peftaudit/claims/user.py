"""Claims about a user's method in a line of Python, audited by the verdict rules of DESIGN.md.

    from peftaudit.claims.user import cannot_memorize, memorizes
    register_claim(cannot_memorize("my_pkg:MyMethod", "random-8", sizes=(1, 2)))
    register_claim(memorizes("my_pkg:MyMethod", "planted-lora", size=1))

"cannot" claims are refuted by a found adapter (replayed, and confirmed by the interval replay
of the exact model the method declares); "can" claims are refuted by a checked certificate of
impossibility, which applies when the method declares itself input-space and the family has a
prompt certificate that covers its size (L1: any prompt length; L2: prompts shorter than N).
A "can" claim whose search fails on an instance is SURVIVED with the failures listed: a search
miss is never a proof.
"""

from __future__ import annotations

from typing import Sequence

from peftaudit.settings import Profile
from peftaudit.strategies.families import draw_family, get_family

from .base import Claim, MethodRun, get_claim


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
    if getattr(m, "kind", "") != "input-space" or claim_id not in ("L1", "L2"):
        return None
    if claim_id == "L2" and size >= 2:  # L2 rules out prompts shorter than N = 2 only
        return None
    return get_claim(claim_id).certify


def cannot_memorize(method: str, family: str, *, sizes: Sequence[int] = (1, 2, 4), options: dict | None = None,
                    id: str | None = None, count: int | None = None, d: int | None = None,
                    source: str = "user claim") -> Claim:
    """'`method` cannot memorize any instance of `family` at these sizes.'"""
    get_family(family)
    return Claim(
        id=id or f"{method} cannot memorize {family}", title=f"{method} cannot memorize {family} at sizes {list(sizes)}",
        source=source, formalization=f"No adapter of {method} at sizes {list(sizes)} brings the replayed max error "
                                     f"on an instance of {get_family(family).description} to 1e-8 or below.",
        kind="cannot", draw=_draw(family, count, d), hypotheses=_hypotheses(family),
        falsifiers=(MethodRun(method, dict(options or {}), tuple(sizes)),))


def memorizes(method: str, family: str, *, size: int, options: dict | None = None, id: str | None = None,
              count: int | None = None, d: int | None = None, source: str = "user claim") -> Claim:
    """'`method` at `size` memorizes every instance of `family`.'"""
    get_family(family)
    options = dict(options or {})
    return Claim(
        id=id or f"{method} memorizes {family}", title=f"{method} at size {size} memorizes every {family} instance",
        source=source, formalization=f"For every instance of {get_family(family).description}, some adapter of "
                                     f"{method} at size {size} has replayed max error <= 1e-8.",
        kind="can", draw=_draw(family, count, d), hypotheses=_hypotheses(family),
        falsifiers=(MethodRun(method, options, (size,)),),
        certify=_certifier(method, options, family, size),
        refuted_by="a checked certificate of impossibility (the family's prompt certificate, for input-space "
                   "methods)")
