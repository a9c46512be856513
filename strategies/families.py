"""Named instance families, for method cards and for users' claims about their methods.

Each family builds instances from a numpy Generator and a width d, and names the certificate
that proves its instances unmemorizable by prompt tuning, where one exists (so it applies to a
method that declares itself input-space). `random-K` families are random datasets of K
examples (two tokens each, a target on the last token): how many examples a parameter budget
memorizes is the method's capacity curve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from peftaudit.errors import UnknownNameError
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


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise UnknownNameError("family", name, list(FAMILIES))
    return FAMILIES[name]


def draw_family(name: str, count: int, d: int, seed: int) -> list[Instance]:
    """`count` instances of a family at width d, reproducible from the seed."""
    family = get_family(name)
    rng = np.random.default_rng([seed, *name.encode()])
    return [family.build(rng, max(d, family.min_d)) for _ in range(count)]
