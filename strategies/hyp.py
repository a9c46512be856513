"""Hypothesis strategies: small composable functions over the builders, plus adversarial draws.

Generic instances come from a drawn seed through the numpy builders (reproducible, shrink to
small seeds and dimensions); adversarial matrices are drawn entry by entry, so Hypothesis can
reach degenerate values (zeros, repeated entries, huge ratios).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from peftaudit.instance import Instance, make_instance
from peftaudit.models.spec import ModelSpec, simple_spec

from . import instances as builders
from .weights import contractive_mlp, model_weights, non_injective_plain_mlp, spectrum_matrix

seeds = st.integers(min_value=0, max_value=2**32 - 1)


def rngs() -> st.SearchStrategy[np.random.Generator]:
    return seeds.map(np.random.default_rng)


def adversarial_matrices(rows: int, cols: int, bound: float = 4.0) -> st.SearchStrategy[np.ndarray]:
    """Matrices drawn entry-wise (degenerate values included), entries in [-bound, bound]."""
    return hnp.arrays(np.float64, (rows, cols),
                      elements=st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=64))


@st.composite
def spectrum_matrices(draw: st.DrawFn, n: int, condition: float = 1e6) -> np.ndarray:
    """Square ill-conditioned matrices with a chosen spectrum between 1/condition and 1."""
    exps = draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))
    values = np.array(sorted((condition ** -e for e in exps), reverse=True))
    return spectrum_matrix(draw(rngs()), values)


def model_specs(d: st.SearchStrategy[int] = st.integers(2, 6), max_layers: int = 2,
                max_heads: int = 2) -> st.SearchStrategy[ModelSpec]:
    return st.builds(lambda d, layers, heads, mlp, attention, pos, ln: simple_spec(
        d, layers=layers, heads=heads, mlp=mlp, attention=attention, positions=4 if pos else 0, layernorm=ln),
        d, st.integers(1, max_layers), st.integers(1, max_heads), st.sampled_from(["residual", "plain"]),
        st.sampled_from(["encoder", "causal"]), st.booleans(), st.booleans())


@st.composite
def generic_instances(draw: st.DrawFn, specs: st.SearchStrategy[ModelSpec] | None = None,
                      max_examples: int = 3, max_tokens: int = 4) -> Instance:
    """Any model of the drawn spec with a random dataset (targets unrelated to the model)."""
    spec = draw(model_specs() if specs is None else specs)  # (a strategy has no truth value to test)
    rng = draw(rngs())
    weights = model_weights(rng, spec)
    E = draw(st.integers(1, max_examples))
    n = draw(st.integers(1, min(max_tokens, spec.positions or max_tokens)))
    k = draw(st.integers(1, n))
    data = [(rng.normal(size=(n, spec.d)), rng.normal(size=(k, spec.d))) for _ in range(E)]
    return make_instance(spec, weights, data)


def l1_instances(d: st.SearchStrategy[int] = st.integers(2, 8),
                 variant: st.SearchStrategy[str] = st.sampled_from(["skew", "exact"])) -> st.SearchStrategy[Instance]:
    """L1-family instances (robustly unmemorizable variants by default)."""
    return st.builds(lambda rng, d, v, pos: builders.l1_instance(rng, d, v, positional=pos and v != "exact"),
                     rngs(), d, variant, st.booleans())


def planted_prompt_instances(d: st.SearchStrategy[int] = st.integers(2, 8),
                             length: st.SearchStrategy[int] = st.integers(1, 4),
                             mlp: st.SearchStrategy[str] = st.sampled_from(["residual", "plain"]),
                             attention: st.SearchStrategy[str] = st.sampled_from(["encoder", "causal"]),
                             ) -> st.SearchStrategy[Instance]:
    """Instances memorizable by construction by a prompt of the given length."""
    return st.builds(lambda rng, d, k, m, a, t: builders.planted_prompt_instance(
        rng, d, k, mlp=m, attention=a, targets=t), rngs(), d, length, mlp, attention, st.sampled_from(["last", "all"]))


def planted_lora_instances(d: st.SearchStrategy[int] = st.integers(2, 8)) -> st.SearchStrategy[Instance]:
    return st.builds(lambda rng, d: builders.planted_lora_instance(rng, d), rngs(), d)


def contractive_mlps(d: st.SearchStrategy[int] = st.integers(1, 6),
                     kappa: st.SearchStrategy[float] = st.floats(0.05, 0.95)) -> st.SearchStrategy[dict]:
    return st.builds(lambda rng, d, k: contractive_mlp(rng, d, 2 * d, k), rngs(), d, kappa)


def non_injective_mlps(d: st.SearchStrategy[int] = st.integers(2, 4)) -> st.SearchStrategy[dict]:
    return st.builds(lambda rng, d: non_injective_plain_mlp(rng, d, 2 * d), rngs(), d)


def l2_lora_instances(d: st.SearchStrategy[int] = st.integers(3, 8)) -> st.SearchStrategy[Instance]:
    """L2's LoRA-generated variant (rank-1 LoRA on W_v memorizes; prompts need length >= N)."""
    return st.builds(lambda rng, d, a: builders.l2_lora_instance(rng, d, 2, attention=a), rngs(), d,
                     st.sampled_from(["encoder", "causal"]))


def m_invertible_instances(d: st.SearchStrategy[int] = st.integers(1, 6),
                           layers: st.SearchStrategy[int] = st.integers(1, 3)) -> st.SearchStrategy[Instance]:
    """Claim M's family: every condition holds at the instance's prompt bound by construction."""
    from . import m_instances
    return st.builds(lambda rng, d, L, a: m_instances.m_invertible_instance(rng, d, layers=L, attention=a),
                     rngs(), d, layers, st.sampled_from(["encoder", "causal"]))


def m_planted_instances(d: st.SearchStrategy[int] = st.integers(2, 6)) -> st.SearchStrategy[Instance]:
    """Non-invertible datasets memorized by a planted prompt, each dropping one condition of M."""
    from . import m_instances
    makers = [lambda rng, d: m_instances.m_fold_mlp_instance(rng, d),
              lambda rng, d: m_instances.m_fold_attention_instance(rng, d),
              lambda rng, d: m_instances.m_fold_attention_instance(rng, d, strong=True),
              lambda rng, d: m_instances.m_naive_encoder_instance(rng, d)]
    return st.builds(lambda make, rng, d: make(rng, d), st.sampled_from(makers), rngs(), d)
