"""Named instance families, for method cards and for users' claims about their methods.

Each family builds instances from a numpy Generator and a width d, and names the certificate
that proves its instances unmemorizable by prompt tuning, where one exists (so it applies to a
method that declares itself input-space). `random-N` families (any N, the card uses
N = 1, 2, 4, 8) are random datasets of N examples (two tokens each, a target on the last token):
how many examples a parameter budget memorizes is the method's capacity curve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from peftaudit.errors import InputError, UnknownNameError
from peftaudit.instance import Instance, make_instance
from peftaudit.models.spec import simple_spec

from .instances import l1_instance, l2_instance, planted_lora_instance, planted_prompt_instance
from .m_instances import m_invertible_instance
from .weights import model_weights

CAPACITY_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    build: Callable[[np.random.Generator, int], Instance]
    prompt_certificate: str = ""   # the claim whose certificate rules out every prompt ("" none)
    min_d: int = 2


def random_dataset(rng: np.random.Generator, d: int, examples: int) -> Instance:
    """`examples` random inputs of two tokens with random last-token targets, random weights."""
    spec = simple_spec(d)
    weights = model_weights(rng, spec)
    data = [(rng.normal(size=(2, d)), rng.normal(size=(1, d))) for _ in range(examples)]
    return make_instance(spec, weights, data, meta={"family": f"random-{examples}"})


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("l1", "two examples sharing their last token whose targets need skew attention outputs (L1)",
           lambda rng, d: l1_instance(rng, d, "skew"), prompt_certificate="L1"),
    Family("l2", "two examples whose targets need two independent attention directions (L2, N = 2)",
           lambda rng, d: l2_instance(rng, d, 2), prompt_certificate="L2", min_d=4),
    Family("m-non-invertible", "X_1 != X_2 with Y_1 = Y_2 on invertible layers (M; certified for prompts of "
           "norm <= 1)", lambda rng, d: m_invertible_instance(rng, d), prompt_certificate="M"),
    Family("planted-prompt", "targets from a hidden one-token prompt (memorizable by prompts)",
           lambda rng, d: planted_prompt_instance(rng, d, 1, targets="last")),
    Family("planted-lora", "targets from a hidden rank-1 update of W_v (memorizable by LoRA)",
           lambda rng, d: planted_lora_instance(rng, d, 1)),
    *(Family(f"random-{k}", f"{k} random example(s), random last-token targets",
             lambda rng, d, k=k: random_dataset(rng, d, k)) for k in CAPACITY_SIZES),
]}


MAX_EXAMPLES = 4096  # the largest N of a random-N family (memory stays small: two tokens an example)


def family_name(family: str, examples: int | None = None) -> str:
    """The family's name with its number of examples N: ("random", 6) -> "random-6". A named
    family (l1, random-4, ...) is returned as it is when `examples` is None or agrees with it."""
    if examples is None:
        return family
    if isinstance(examples, bool) or not isinstance(examples, int) or not 1 <= examples <= MAX_EXAMPLES:
        raise InputError("examples", examples, f"an integer N with 1 <= N <= {MAX_EXAMPLES}")
    if family != "random" and not (family.startswith("random-") and family == f"random-{examples}"):
        raise InputError("examples", examples, f"no N for the family {family!r} (only 'random' takes a number "
                                               "of examples, e.g. family='random', examples=6)")
    return f"random-{examples}"


def get_family(name: str) -> Family:
    """A named family; 'random-N' for any N in 1..MAX_EXAMPLES (N random examples)."""
    if name in FAMILIES:
        return FAMILIES[name]
    count = name.rpartition("-")[2] if isinstance(name, str) and name.startswith("random-") else ""
    if count.isdigit() and count == str(int(count)) and 1 <= int(count) <= MAX_EXAMPLES:
        k = int(count)
        return Family(name, f"{k} random example(s), random last-token targets",
                      lambda rng, d: random_dataset(rng, d, k))
    raise UnknownNameError("family", name, list(FAMILIES) + [f"random-N (1 <= N <= {MAX_EXAMPLES})"])


def draw_family(name: str, count: int, d: int, seed: int) -> list[Instance]:
    """`count` instances of a family at width d, reproducible from the seed."""
    family = get_family(name)
    rng = np.random.default_rng([seed, *name.encode()])
    return [family.build(rng, max(d, family.min_d)) for _ in range(count)]
