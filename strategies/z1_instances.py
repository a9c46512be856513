"""Claim Z1's instances: deep linear networks with a target whose gap E has a chosen rank."""

from __future__ import annotations

import numpy as np

from peftaudit.linear_instance import LinearInstance
from peftaudit.models.linear import product


def _well_conditioned(rng: np.random.Generator, D: int) -> np.ndarray:
    Q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    return Q * rng.uniform(0.5, 1.5, size=D)                                            # (D,D), cond <= 3


def z1_instance(rng: np.random.Generator, D: int, L: int, rank_e: int, *, singular: bool = False) -> LinearInstance:
    """W_l with singular values in [0.5, 1.5]; W_bar = W_L ... W_1 + E with rank(E) = rank_e and
    singular values spread over [0.1, 2]. `singular` zeroes a column of the last layer, which breaks
    the construction's non-singularity assumption (a planted hypothesis violation)."""
    if not 1 <= rank_e <= D:
        raise ValueError(f"rank_e: expected 1..{D}, got {rank_e}")
    layers = [_well_conditioned(rng, D) for _ in range(L)]
    if singular:
        layers[-1][:, 0] = 0.0
    U, _ = np.linalg.qr(rng.standard_normal((D, D)))
    V, _ = np.linalg.qr(rng.standard_normal((D, D)))
    s = np.sort(rng.uniform(0.1, 2.0, size=rank_e))[::-1]
    E = (U[:, :rank_e] * s) @ V[:, :rank_e].T                                           # (D,D)
    family = "z1-singular" if singular else "z1-generic"
    return LinearInstance(tuple(layers), product(layers) + E,
                          {"family": family, "rank_e": rank_e, "threshold": -(-rank_e // L)})


def relu_instance(rng: np.random.Generator, D: int, L: int, L_target: int, bound: float = 1.0):
    """A frozen ReLU network of depth L (well-conditioned weights, small biases) and a random target of
    depth L_target (weights of scale 1/sqrt(D)), on the domain [-bound, bound]^D."""
    from peftaudit.linear_instance import ReluInstance
    layers = tuple((_well_conditioned(rng, D), 0.1 * rng.standard_normal(D)) for _ in range(L))
    target = tuple((rng.standard_normal((D, D)) / np.sqrt(D), 0.3 * rng.standard_normal(D)) for _ in range(L_target))
    return ReluInstance(layers, target, bound, {"family": f"z1-relu-{L}-over-{L_target}",
                                                "rank_needed": -(-D * L_target // L)})
