"""Claim Z1's ReLU form (Zeng and Lee, ICLR 2024): a frozen ReLU network of depth L with LoRA of rank R
on every layer and tuned biases represents a target of depth L_bar <= L exactly on a bounded domain
when R >= ceil(D L_bar / L).

Construction: group the L layers into L_bar groups of M = L / L_bar. In group g the adapted matrices
multiply to the target's W_bar_g (the linear construction of models/linear.py on the group, rank
ceil(D / M)); the biases of the group's inner layers are raised until their pre-activations are
>= 1 on the group's input box (so those ReLUs are the identity there), and the last layer's bias
removes the accumulated offset and adds b_bar_g. The box is why the domain must be bounded: outside
it an inner pre-activation turns negative and the network leaves the target.
"""

from __future__ import annotations

import numpy as np

from .linear import construction

Layers = list[tuple[np.ndarray, np.ndarray]]


def evaluate(layers: Layers, X: np.ndarray) -> np.ndarray:
    """ReLU network (ReLU after every layer but the last) on inputs X (N, D) -> (N, D)."""
    H = X
    for i, (W, b) in enumerate(layers):
        H = H @ W.T + b                                                                  # (N,D)
        if i < len(layers) - 1:
            H = np.maximum(H, 0.0)
    return H


def _affine_min(N: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Coordinatewise min of N h over the box [lo, hi]."""
    return np.minimum(N * lo, N * hi).sum(axis=1)                                        # (D,)


def construct(layers: Layers, target: Layers, bound: float) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[np.ndarray], int]:
    """LoRA factors (B_l, A_l) and tuned biases per layer, and the rank R used; ValueError when the
    depths do not divide or a partial product is singular."""
    L, Lbar, D = len(layers), len(target), layers[0][0].shape[0]
    if L % Lbar:
        raise ValueError(f"the model's depth {L} must be a multiple of the target's {Lbar}")
    M = L // Lbar
    R = -(-D // M)
    factors, biases = [], []
    lo, hi = np.full(D, -bound), np.full(D, bound)                                       # the group's input box
    for g, (Wbar, bbar) in enumerate(target):
        group = [W for W, _ in layers[g * M:(g + 1) * M]]
        parts, cond = construction(group, Wbar, R)
        if not parts:
            raise ValueError(f"group {g}: a partial product is singular; the construction does not apply")
        G, c = np.eye(D), np.zeros(D)                                                    # h_l = G h_0 + c
        for j, (W, (B, A)) in enumerate(zip(group, parts)):
            Wa = W + B @ A
            if j < M - 1:
                N, o = Wa @ G, Wa @ c
                wide = 1e-6 * (1 + np.abs(lo) + np.abs(hi))  # slack for the adapted network's own box
                b = -(_affine_min(N, lo - wide, hi + wide) + o) + 1.0
                G, c = N, o + b
            else:
                b = bbar - Wa @ c
            factors.append((B, A))
            biases.append(b)
        pre_lo = _affine_min(Wbar, lo, hi) + bbar
        pre_hi = -_affine_min(-Wbar, lo, hi) + bbar
        lo, hi = np.maximum(pre_lo, 0.0), np.maximum(pre_hi, 0.0)
    return factors, biases, R


def adapted(layers: Layers, factors, biases) -> Layers:
    return [(W + B @ A, b) for (W, _), (B, A), b in zip(layers, factors, biases)]


def outside_point(layers: Layers, target: Layers, factors, biases, bound: float, seed: int = 0,
                  tries: int = 256) -> tuple[np.ndarray, float]:
    """The input, among random directions at 2x to 64x the bound, where the adapted network is
    farthest from the target (the unbounded statement's counterexample candidate)."""
    rng = np.random.default_rng(seed)
    D = layers[0][0].shape[0]
    U = rng.standard_normal((tries, D))
    U /= np.abs(U).max(axis=1, keepdims=True)
    X = np.concatenate([U * bound * s for s in (2, 4, 8, 16, 32, 64)])                   # (6T,D)
    gap = np.abs(evaluate(adapted(layers, factors, biases), X) - evaluate(target, X)).max(axis=1)
    i = int(np.argmax(gap))
    return X[i], float(gap[i])
