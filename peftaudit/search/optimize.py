"""Batched optimizers: Levenberg-Marquardt first, masked Adam to explore where it gets stuck.

Every problem owns its parameters and its data (weights, inputs, targets, each with a leading
problem dimension B); losses are summed only to get all gradients in one backward pass, so
problems stay independent. Both optimizers look at convergence every `check_every` steps only,
so a CUDA run does not wait on the host each step; Levenberg-Marquardt then drops the problems
that finished or stalled from its batch (compaction), so its work shrinks as they finish.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

# residuals(theta (b, P), *data_b) -> (b, R), for any subset b of the problems
Residuals = Callable[..., Tensor]
Project = Callable[[Tensor], Tensor]  # theta (b, P) -> theta on the norm ball
CHECK_EVERY = 8        # steps between convergence checks (the only host syncs on CUDA)
STALL_FRACTION = 1e-3  # LM: a problem whose loss fell by less than this fraction in a check window has stalled
HOPELESS_SLACK = 3.0   # LM drops a problem that, at its current rate, would need over 3x the steps left
HOPELESS_AFTER = 16    # but not in its first two windows, where LM is still finding its trust region
MU_START = 1e-3        # LM initial damping, relative to the largest diagonal of the normal system
MU_MAX = 1e12          # LM damping ceiling; a problem pinned there makes no progress
MU_MIN = 1e-16         # LM damping floor, relative to the largest diagonal of the normal system: low
                       # enough to resolve singular values ~1e-7 of the largest (ill-conditioned solutions)
JACOBIAN_CHUNK = 2**20  # Jacobian entries per call on the CPU (8 MB in float64)


def flat(trainable: dict[str, Tensor]) -> Tensor:
    """(B, P) view of all trainable tensors of each problem."""
    return torch.cat([t.reshape(t.shape[0], -1) for t in trainable.values()], dim=1)


def unflat(theta: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of `flat`, for any number of problems b: names and per-problem shapes from `like`."""
    out, o = {}, 0
    for name, t in like.items():
        n = t[0].numel()
        out[name] = theta[:, o:o + n].reshape(theta.shape[0], *t.shape[1:])
        o += n
    return out


def take(data: Any, index: Tensor) -> Any:
    """Rows `index` of every tensor in `data` (a tensor, or a tuple / dict of them)."""
    if isinstance(data, Tensor):
        return data[index]
    if isinstance(data, dict):
        return {k: take(v, index) for k, v in data.items()}
    return tuple(take(v, index) for v in data)


def _loss(r: Tensor) -> Tensor:
    return torch.nan_to_num(r.square().sum(dim=1), nan=math.inf)   # (b,)


def _max_error(r: Tensor) -> Tensor:
    return torch.nan_to_num(r.abs().amax(dim=1), nan=math.inf)     # (b,)


def adam(residuals: Residuals, theta: Tensor, data: tuple, steps: int, *, lr: float = 0.05,
         done_error: float = 0.0, project: Project | None = None,
         on_step: Callable[[int], None] | None = None) -> tuple[Tensor, Tensor]:
    """Masked Adam with a cosine schedule from theta (B, P); returns each problem's best point and loss.

    A problem stops moving once its max abs residual is at most `done_error`."""
    theta = theta.detach().clone()
    B = theta.shape[0]
    m, v = torch.zeros_like(theta), torch.zeros_like(theta)
    best_theta, best_loss = theta.clone(), torch.full((B,), math.inf, dtype=theta.dtype, device=theta.device)
    active = torch.ones(B, dtype=torch.bool, device=theta.device)
    b1, b2, eps = 0.9, 0.999, 1e-12
    for step in range(1, steps + 1):
        theta.requires_grad_(True)
        r = residuals(theta, *data)                                      # (B,R)
        loss = r.square().sum(dim=1)                                     # (B,)
        grad, = torch.autograd.grad(loss.sum(), theta)
        with torch.no_grad():
            loss = torch.nan_to_num(loss.detach(), nan=math.inf)
            better = loss < best_loss
            best_loss = torch.where(better, loss, best_loss)
            best_theta = torch.where(better[:, None], theta.detach(), best_theta)
            active &= _max_error(r.detach()) > done_error
            if step % CHECK_EVERY == 0 and not bool(active.any()):
                break
            grad = torch.nan_to_num(grad) * active[:, None]
            m.mul_(b1).add_((1 - b1) * grad)
            v.mul_(b2).add_((1 - b2) * grad * grad)
            rate = lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * step / steps)))
            update = rate * (m / (1 - b1 ** step)) / ((v / (1 - b2 ** step)).sqrt() + eps)
            theta = theta.detach() - update * active[:, None]
            if project is not None:
                theta = project(theta)
        if on_step is not None:
            on_step(step)
    return best_theta, best_loss


def damped_step(J: Tensor, r: Tensor, mu: Tensor, *, svd_fallback: bool = True) -> Tensor:
    """The Levenberg-Marquardt step argmin ||J delta + r||^2 + lam ||delta||^2, lam = mu * max diag(J^T J).

    Solved by LU of the smaller of the two damped normal systems (P x P, or R x R with
    delta = J^T y), which is cheap in a batch on every device (torch's batched Cholesky took twice
    as long at P = 128 on the CPU). A system with a pivot below q * eps of its largest diagonal
    (numerically singular: where Cholesky would fail) falls back to the thin SVD of its Jacobian,
    or, with svd_fallback=False (CUDA: no host sync), gets a zero step, which LM rejects and damps.
    """
    B, R, P = J.shape
    gram = J.transpose(1, 2) @ J if P <= R else J @ J.transpose(1, 2)   # (B,q,q), q = min(P, R)
    diagonal = gram.diagonal(dim1=1, dim2=2)                             # (B,q) a view
    scale = diagonal.amax(dim=1).clamp_min(1e-300)                       # (B,) ~ s_max^2
    lam = mu * scale                                                     # (B,)
    diagonal.add_(lam[:, None])                                          # gram is now the damped system
    LU, pivots, info = torch.linalg.lu_factor_ex(gram)                   # (B,q,q) (B,q) (B,)
    if P <= R:
        rhs = (J.transpose(1, 2) @ r.unsqueeze(2))                       # (B,P,1)
        delta = -torch.linalg.lu_solve(LU, pivots, rhs).squeeze(2)       # (B,P)
    else:
        y = torch.linalg.lu_solve(LU, pivots, r.unsqueeze(2))            # (B,R,1)
        delta = -(J.transpose(1, 2) @ y).squeeze(2)                      # (B,P)
    floor = gram.shape[1] * torch.finfo(J.dtype).eps * scale             # (B,)
    singular = LU.diagonal(dim1=1, dim2=2).abs().amin(dim=1) <= floor    # (B,)
    failed = (info != 0) | singular | ~torch.isfinite(delta).all(dim=1)  # (B,)
    if not svd_fallback:
        return torch.where(failed[:, None], torch.zeros_like(delta), delta)
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


def jacobian(residuals: Callable[[Tensor], Tensor], theta: Tensor, R: int) -> Tensor:
    """Per-problem Jacobians (b, R, P) of batched residuals (b, P) -> (b, R), with one vmap level.

    Problems are independent, so one tangent e_p set for every problem at once gives column p
    of every Jacobian (forward mode, P passes), and one cotangent e_j gives row j (reverse mode,
    R passes); the cheaper of the two is used. Cheaper in dispatch than a vmap over problems of
    a per-problem jacfwd, which matters for the small batches of an audit."""
    b, P = theta.shape
    if P <= R:
        tangents = torch.eye(P, dtype=theta.dtype, device=theta.device)[:, None, :].expand(P, b, P)  # (P,b,P)
        column = lambda t: torch.func.jvp(residuals, (theta,), (t,))[1]     # (b,R)  # noqa: E731
        return torch.func.vmap(column, out_dims=2)(tangents)                # (b,R,P)
    _, pullback = torch.func.vjp(residuals, theta)
    cotangents = torch.eye(R, dtype=theta.dtype, device=theta.device)[:, None, :].expand(R, b, R)    # (R,b,R)
    return torch.func.vmap(lambda c: pullback(c)[0], out_dims=1)(cotangents)  # (b,R,P)


def autograd_jacobian(residuals: Callable[[Tensor], Tensor], theta: Tensor, R: int) -> Tensor:
    """Per-problem Jacobians (b, R, P) by plain autograd, row by row (R backward passes, each
    giving row j of every problem, since problems are independent): for methods whose module
    torch.func refuses (an autograd.Function without setup_context, index_put_ or .data under
    vmap). Slower than `jacobian`, and exact in the same sense."""
    th = theta.detach().requires_grad_(True)
    with torch.enable_grad():
        r = residuals(th)                                                                  # (b,R)
        rows = []
        for j in range(R):
            g, = torch.autograd.grad(r[:, j].sum(), th, retain_graph=j + 1 < R, allow_unused=True)
            rows.append(torch.zeros_like(th) if g is None else g)                          # (b,P)
    return torch.stack(rows, dim=1).detach()                                               # (b,R,P)


def _jacobian_at(residuals: Residuals, theta: Tensor, data: tuple, R: int,
                 jacobian_of: Residuals | None = None) -> Tensor:
    """Finite per-problem Jacobians (b, R, P) of residuals(theta, *data): by jacobian_of(theta,
    *data) where the method gives one, else by torch.func. On the CPU JACOBIAN_CHUNK numbers at a
    time: the intermediate tangents of one call are as large as its Jacobians, and past a few MB
    they leave the cache (torch.func, planted LoRA at d = 64: 1.2 ms per problem in calls of 64
    problems, 1.9 ms in calls of 256); a GPU gets the whole batch at once."""
    def part(th: Tensor, d: tuple) -> Tensor:
        J = jacobian_of(th, *d) if jacobian_of is not None else jacobian(lambda t: residuals(t, *d), th, R)
        return torch.nan_to_num(J)
    b, P = theta.shape
    step = max(1, JACOBIAN_CHUNK // (R * P)) if theta.device.type == "cpu" else b
    if b <= step:
        return part(theta, data)
    pieces = [torch.arange(i, min(i + step, b), device=theta.device) for i in range(0, b, step)]
    return torch.cat([part(theta[rows], take(data, rows)) for rows in pieces])


def solved_owners(owners: Tensor, solved: Tensor) -> Tensor:
    """(max owner + 1,) flags: owner o has a solved problem (owners, solved: (B,))."""
    flags = torch.zeros(int(owners.max()) + 1 if owners.numel() else 0, dtype=torch.bool, device=owners.device)
    return flags.index_fill_(0, owners[solved], True)


def levenberg_marquardt(residuals: Residuals, theta: Tensor, data: tuple, steps: int, *,
                        done_error: float = 0.0, project: Project | None = None,
                        stall_fraction: float = STALL_FRACTION, hopeless_slack: float = 0.0,
                        mu_start: float = MU_START,
                        owners: Tensor | None = None, jacobian_of: Residuals | None = None,
                        on_step: Callable[[int], None] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Batched Levenberg-Marquardt from theta (B, P) with per-problem damping, in theta's dtype.

    Problems whose max abs residual is at most `done_error` leave the batch (on the CPU after
    every step, elsewhere every CHECK_EVERY steps), and every CHECK_EVERY steps so do those whose
    loss fell by less than `stall_fraction` over the window or whose damping hit MU_MAX; on the
    CPU a rejected step keeps its problem's Jacobian for the next try. With `owners` (B,) (the
    instance each problem is a restart of), so do the siblings of a finished problem: the first
    solved restart ends an instance. `jacobian_of(theta, *data)` (b, R, P), where given, replaces
    torch.func's Jacobian of `residuals`. Returns each problem's final point, loss and max abs
    residual (accepted steps only ever lower the loss, so the final point is the best one).
    `on_step(n)` gets the problems still in the batch after each step.
    """
    B, P = theta.shape
    theta = theta.detach().clone()
    r = residuals(theta, *data)                                          # (B,R)
    loss, err = _loss(r), _max_error(r)                                  # (B,) (B,)

    on_cpu = theta.device.type == "cpu"  # no host sync to save: SVD fallback, finished problems leave
                                          # after every step, rejected steps keep their Jacobian
    running = err > done_error                                           # (B,)
    if owners is not None:
        running &= ~solved_owners(owners, ~running)[owners]
    idx = running.nonzero().squeeze(1)                                   # (b,) problems still running
    th, d, rr, ls = theta[idx], take(data, idx), r[idx], loss[idx]
    mu = torch.full_like(ls, mu_start)                                   # (b,)
    nu = torch.full_like(ls, 2.0)                                        # (b,) growth factor on rejection
    window_start, window_mu = ls.clone(), mu.clone()
    J = moved = None                                                     # (b,R,P) (b,): J stale where moved
    for step in range(1, steps + 1):
        if idx.numel() == 0:
            break
        if J is None or not on_cpu:
            J = _jacobian_at(residuals, th, d, rr.shape[1], jacobian_of)            # (b,R,P)
        else:  # a rejected step left its problem where it was: its Jacobian still holds
            redo = moved.nonzero().squeeze(1)                            # (s,)
            if redo.numel():
                J[redo] = _jacobian_at(residuals, th[redo], take(d, redo), rr.shape[1], jacobian_of)
        delta = torch.nan_to_num(damped_step(J, rr, mu, svd_fallback=on_cpu))  # (b,P)
        candidate = th + delta
        if project is not None:
            candidate = project(candidate)
        r_new = residuals(candidate, *d)                                 # (b,R)
        loss_new = _loss(r_new)
        linear = rr + (J @ (candidate - th).unsqueeze(2)).squeeze(2)     # (b,R) the model's residual
        predicted = (ls - linear.square().sum(dim=1)).clamp_min(1e-300)  # (b,)
        gain = (ls - loss_new) / predicted                               # (b,) actual / predicted
        accept = loss_new < ls                                           # (b,)
        moved = accept
        th = torch.where(accept[:, None], candidate, th)
        rr = torch.where(accept[:, None], r_new, rr)
        ls = torch.where(accept, loss_new, ls)
        # Nielsen's damping update: shrink by how well the linear model predicted the gain
        shrink = (1 - (2 * gain.clamp(0, 1) - 1) ** 3).clamp_min(1 / 3)
        mu = torch.where(accept, (mu * shrink).clamp_min(MU_MIN), (mu * nu).clamp_max(MU_MAX))
        nu = torch.where(accept, torch.full_like(nu, 2.0), nu * 2)
        if on_step is not None:
            on_step(idx.numel())
        window_end = step % CHECK_EVERY == 0 or step == steps
        if not (window_end or on_cpu):
            continue
        row_err = _max_error(rr)                                          # (b,)
        theta[idx], loss[idx], err[idx] = th, ls, row_err
        keep = row_err > done_error
        if owners is not None:
            keep &= ~solved_owners(owners, err <= done_error)[owners[idx]]
        if window_end:
            progress = (ls < window_start * (1 - stall_fraction)) | (mu > window_mu)  # rejected steps: still damping up
            keep &= progress & (mu < MU_MAX)
            if hopeless_slack and done_error > 0 and step > HOPELESS_AFTER:
                # at this window's rate, would the loss reach done_error^2 within the steps left (with slack)?
                windows_left = (steps - step) / CHECK_EVERY + 1
                need = torch.log(ls / max(done_error, 1e-300) ** 2).clamp_min(0)       # (b,) nats to go
                rate = torch.log(window_start / ls).clamp_min(1e-300)                  # (b,) nats per window
                keep &= need <= rate * windows_left * hopeless_slack
        if not bool(keep.all()):
            idx, th, d, rr, ls, mu, nu = idx[keep], th[keep], take(d, keep), rr[keep], ls[keep], mu[keep], nu[keep]
            J, moved = J[keep], moved[keep]
            window_start, window_mu = window_start[keep], window_mu[keep]
        if window_end:
            window_start, window_mu = ls.clone(), mu.clone()
    return theta, loss, err
