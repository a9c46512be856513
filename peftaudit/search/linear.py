"""Claim Z1's search: LoRA factors on every layer of a deep linear network W_L ... W_1, by batched
Levenberg-Marquardt from random starts (the networks and the construction: models/linear.py).
Evidence only: a result can never beat the certified bound, and one that does is ERROR."""

from __future__ import annotations

import numpy as np
import torch


def search(layers: list[np.ndarray], target: np.ndarray, rank: int, *, restarts: int = 8, steps: int = 60,
           seed: int = 0) -> tuple[float, list[tuple[np.ndarray, np.ndarray]]]:
    """Batched Levenberg-Marquardt on ||W_bar - prod (W_l + B_l A_l)||_F^2 from random starts; returns
    the smallest spectral error found and its factors. Evidence only: it can never beat the bound."""
    L, D = len(layers), target.shape[0]
    gen = torch.Generator().manual_seed(seed)
    W = torch.as_tensor(np.stack(layers))                                                # (L,D,D)
    T = torch.as_tensor(target)                                                          # (D,D)
    n = 2 * L * D * rank
    theta = 0.1 * torch.randn(restarts, n, generator=gen, dtype=torch.float64)           # (S,n)

    def residual(t: torch.Tensor) -> torch.Tensor:
        BA = t.reshape(L, 2, D * rank)
        out = torch.eye(D, dtype=torch.float64)
        for l in range(L):
            B, A = BA[l, 0].reshape(D, rank), BA[l, 1].reshape(rank, D)
            out = (W[l] + B @ A) @ out                                                   # (D,D)
        return (T - out).reshape(-1)                                                     # (D*D,)

    jac = torch.func.vmap(torch.func.jacfwd(residual))
    res = torch.func.vmap(residual)
    damping = torch.full((restarts,), 1e-3, dtype=torch.float64)
    for _ in range(steps):
        r = res(theta)                                                                   # (S,D*D)
        J = jac(theta)                                                                   # (S,D*D,n)
        JtJ = J.transpose(1, 2) @ J                                                      # (S,n,n)
        g = (J.transpose(1, 2) @ r.unsqueeze(-1)).squeeze(-1)                            # (S,n)
        eye = torch.eye(n, dtype=torch.float64)
        step = torch.linalg.solve(JtJ + damping[:, None, None] * (eye + torch.diag_embed(
            torch.diagonal(JtJ, dim1=1, dim2=2))), g)                                    # (S,n)
        trial = theta - step
        better = (res(trial) ** 2).sum(1) < (r ** 2).sum(1)                              # (S,)
        theta = torch.where(better[:, None], trial, theta)
        damping = torch.where(better, damping / 3, damping * 4).clamp(1e-12, 1e12)
    errors = torch.linalg.matrix_norm(res(theta).reshape(restarts, D, D), ord=2)        # (S,)
    best = int(torch.argmin(errors))
    BA = theta[best].reshape(L, 2, D * rank).numpy()
    return float(errors[best]), [(BA[l, 0].reshape(D, rank), BA[l, 1].reshape(rank, D)) for l in range(L)]
