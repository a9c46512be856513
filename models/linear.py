"""Claim Z1's models: deep linear networks f(x) = W_L ... W_1 x with LoRA W_l + B_l A_l on every layer.

Zeng and Lee (ICLR 2024): with E = W_bar - W_L ... W_1, every rank-R LoRA on all L layers leaves a
spectral error of at least sigma_{RL+1}(E) (the product's update has rank <= RL), and their
construction attains it when the partial products it inverts are non-singular:

    Delta_l = A_l^{-1} E_l B_{l-1}^{-1},   A_l = W_L ... W_{l+1},   B_{l-1} = (W_{l-1} + Delta_{l-1}) ... (W_1 + Delta_1)

with E_1 + ... + E_L the best rank-RL approximation of E split into L pieces of rank <= R. Then the
adapted product is W_L ... W_1 + E_1 + ... + E_L. The condition numbers of A_l and B_{l-1} are
returned so that a caller can say the assumption was checked, not assumed. The search for LoRA
factors on these networks is peftaudit/search/linear.py.
"""

from __future__ import annotations

import numpy as np


def product(layers: list[np.ndarray]) -> np.ndarray:
    """W_L ... W_1 for layers [W_1, ..., W_L] (each D x D)."""
    out = np.eye(layers[0].shape[0])
    for W in layers:
        out = W @ out                                                                    # (D,D)
    return out


def construction(layers: list[np.ndarray], target: np.ndarray, rank: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """Zeng and Lee's LoRA factors (B_l (D, R), A_l (R, D)) per layer and the largest condition number
    of the matrices it inverts (inf when one is singular: the construction does not apply)."""
    L, D = len(layers), target.shape[0]
    E = target - product(layers)                                                         # (D,D)
    U, s, Vt = np.linalg.svd(E)
    factors, worst = [], 1.0
    before = np.eye(D)                                                                   # B_{l-1}
    for l in range(L):
        after = product(layers[l + 1:]) if l + 1 < L else np.eye(D)                      # A_l
        lo, hi = l * rank, min((l + 1) * rank, D)
        piece_u = U[:, lo:hi] * s[lo:hi]                                                 # (D,r_l)
        piece_v = Vt[lo:hi]                                                              # (r_l,D)
        for M in (after, before):
            c = np.linalg.cond(M)
            worst = max(worst, c if np.isfinite(c) else np.inf)
        if not np.isfinite(worst) or worst > 1e12:
            return [], np.inf
        B = np.zeros((D, rank))
        A = np.zeros((rank, D))
        B[:, : hi - lo] = np.linalg.solve(after, piece_u)                                # (D,r_l)
        A[: hi - lo] = np.linalg.solve(before.T, piece_v.T).T                            # (r_l,D)
        factors.append((B, A))
        before = (layers[l] + B @ A) @ before
    return factors, worst


def adapted_error(layers: list[np.ndarray], target: np.ndarray, factors) -> np.ndarray:
    """W_bar - prod_l (W_l + B_l A_l)."""
    return target - product([W + B @ A for W, (B, A) in zip(layers, factors)])
