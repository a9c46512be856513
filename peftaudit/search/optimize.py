"""Batched optimizers: masked Adam for exploration, Levenberg-Marquardt for a float64 polish.

Every problem owns its parameters; losses are summed only to get all gradients in one
backward pass, so problems stay independent. Converged problems are frozen (masked).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

Residuals = Callable[[dict[str, Tensor]], Tensor]  # trainable (B, ...) -> residuals (B, R)


def flat(trainable: dict[str, Tensor]) -> Tensor:
    """(B, P) view of all trainable tensors of each problem."""
    return torch.cat([t.reshape(t.shape[0], -1) for t in trainable.values()], dim=1)


def unflat(theta: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    out, o = {}, 0
    for name, t in like.items():
        n = t[0].numel()
        out[name] = theta[:, o:o + n].reshape(t.shape)
        o += n
    return out


def adam(residuals: Residuals, trainable: dict[str, Tensor], steps: int, *, lr: float = 0.05,
         tol_loss: float = 0.0, project: Callable[[dict[str, Tensor]], None] | None = None,
         on_step: Callable[[int], None] | None = None) -> tuple[dict[str, Tensor], Tensor]:
    """Masked Adam with a cosine schedule; returns each problem's best parameters and loss."""
    theta = flat(trainable).detach().clone()
    B = theta.shape[0]
    m, v = torch.zeros_like(theta), torch.zeros_like(theta)
    best_theta, best_loss = theta.clone(), torch.full((B,), math.inf, dtype=theta.dtype, device=theta.device)
    active = torch.ones(B, dtype=torch.bool, device=theta.device)
    b1, b2, eps = 0.9, 0.999, 1e-12
    for step in range(1, steps + 1):
        theta.requires_grad_(True)
        r = residuals(unflat(theta, trainable))                          # (B,R)
        loss = r.square().sum(dim=1)                                     # (B,)
        grad, = torch.autograd.grad(loss.sum(), theta)
        with torch.no_grad():
            loss = torch.nan_to_num(loss.detach(), nan=math.inf)
            better = loss < best_loss
            best_loss = torch.where(better, loss, best_loss)
            best_theta[better] = theta.detach()[better]
            active &= best_loss > tol_loss
            if not active.any():
                break
            grad = torch.nan_to_num(grad) * active[:, None]
            m.mul_(b1).add_((1 - b1) * grad)
            v.mul_(b2).add_((1 - b2) * grad * grad)
            rate = lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * step / steps)))
            update = rate * (m / (1 - b1 ** step)) / ((v / (1 - b2 ** step)).sqrt() + eps)
            theta = (theta.detach() - update * active[:, None])
            if project is not None:
                params = unflat(theta, trainable)
                project(params)
                theta = flat(params)
        if on_step is not None:
            on_step(step)
    return unflat(best_theta, trainable), best_loss


def damped_step(J: Tensor, r: Tensor, mu: Tensor) -> Tensor:
    """The Levenberg-Marquardt step argmin ||J delta + r||^2 + lam ||delta||^2, lam = mu * max diag(J^T J).

    Solved by Cholesky of the smaller of the two damped normal systems (P x P, or R x R with
    delta = J^T y), which is cheap in a batch on every device; problems whose factorization
    fails (rank-deficient and barely damped) fall back to the thin SVD of their Jacobian.
    """
    B, R, P = J.shape
    gram = J.transpose(1, 2) @ J if P <= R else J @ J.transpose(1, 2)   # (B,q,q), q = min(P, R)
    scale = gram.diagonal(dim1=1, dim2=2).amax(dim=1).clamp_min(1e-300)  # (B,) ~ s_max^2
    lam = mu * scale                                                     # (B,)
    damped = gram + lam[:, None, None] * torch.eye(gram.shape[1], dtype=J.dtype, device=J.device)
    chol, info = torch.linalg.cholesky_ex(damped)                        # (B,q,q), (B,)
    if P <= R:
        rhs = (J.transpose(1, 2) @ r.unsqueeze(2))                       # (B,P,1)
        delta = -torch.cholesky_solve(rhs, chol).squeeze(2)              # (B,P)
    else:
        y = torch.cholesky_solve(r.unsqueeze(2), chol)                   # (B,R,1)
        delta = -(J.transpose(1, 2) @ y).squeeze(2)                      # (B,P)
    failed = (info != 0) | ~torch.isfinite(delta).all(dim=1)             # (B,)
    if bool(failed.any()):
        idx = failed.nonzero().squeeze(1)
        delta[idx] = _svd_step(J[idx], r[idx], lam[idx])
    return delta


def _svd_step(J: Tensor, r: Tensor, lam: Tensor) -> Tensor:
    """The same damped step through the thin SVD of J: stable for any rank."""
    U, S, Vh = torch.linalg.svd(J, full_matrices=False)                  # (b,R,q) (b,q) (b,q,P)
    filt = S / (S.square() + lam[:, None].clamp_min(1e-300))            # (b,q)
    coef = filt * (U.transpose(1, 2) @ r.unsqueeze(2)).squeeze(2)        # (b,q)
    return -(Vh.transpose(1, 2) @ coef.unsqueeze(2)).squeeze(2)          # (b,P)


def levenberg_marquardt(residual_one: Callable[..., Tensor], theta: Tensor, data: tuple, steps: int, *,
                        residuals_all: Callable[[Tensor], Tensor], tol_loss: float = 0.0,
                        project: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Batched Levenberg-Marquardt on per-problem residuals, in the dtype of theta.

    residual_one(theta_b, *data_b) -> (R,) residuals of one problem (vmapped over theta and
    each element of `data`, all with a leading B dimension, for the Jacobian);
    residuals_all(theta) -> (B, R).
    """
    B, P = theta.shape
    mu = torch.full((B,), 1e-3, dtype=theta.dtype, device=theta.device)
    r = residuals_all(theta)
    loss = torch.nan_to_num(r.square().sum(1), nan=math.inf)
    R = r.shape[1]
    jac_fn = torch.func.jacfwd if P <= R else torch.func.jacrev  # fewer passes of the two
    jacobian = torch.func.vmap(jac_fn(residual_one))
    for _ in range(steps):
        active = loss > tol_loss
        if not active.any():
            break
        J = torch.nan_to_num(jacobian(theta, *data))                    # (B,R,P)
        delta = damped_step(J, r, mu)                                    # (B,P)
        delta = torch.nan_to_num(delta) * active[:, None]
        candidate = theta + delta
        if project is not None:
            candidate = project(candidate)
        r_new = residuals_all(candidate)
        loss_new = torch.nan_to_num(r_new.square().sum(1), nan=math.inf)
        accept = (loss_new < loss) & active
        theta = torch.where(accept[:, None], candidate, theta)
        r = torch.where(accept[:, None], r_new, r)
        loss = torch.where(accept, loss_new, loss)
        mu = torch.where(accept, (mu / 3).clamp_min(1e-12), (mu * 4).clamp_max(1e12))
    return theta, loss
