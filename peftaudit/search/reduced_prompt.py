"""An attack on single-layer claims (L1, L1+) through an exact reduction of prompts of any length.

When every example ends in the same token x_0, the last position's attention output with a
prompt p_1..p_L prepended is z_i = lam_i V v + (1 - lam_i) a_i, where v = sum_j s_j p_j is the
prompt's softmax-weighted mean under x_0's query (key k = Wk^T Wq x_0), a_i the data's own
attention output, and lam_i = S_P / (S_P + S_i) with log S_P = <k, v> + H, H = -sum s_j log s_j
the weights' entropy, 0 <= H <= log L. So the least error over all prompts of at most L tokens is
a problem in (v, H) alone, d + 1 numbers: this module minimises the last-position max error
there (a minimax solved as an epigraph problem with SLSQP) from the relaxation's optimal point
(the primal of the L1+ linear system just above its certified radius) and from random starts,
then writes the optimum back as L concrete tokens. The tokens are evidence only: the audit
replays them in interval arithmetic, and one that beats a certified floor is ERROR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog, minimize

from peftaudit.instance import Instance

MAX_LENGTH = 1024      # the longest prompt written back (H <= log MAX_LENGTH)
RANDOM_STARTS = 24
START_SCALES = (-1.0, 3.0)  # random starts' norms are 10^uniform(these): optima can lie far out
ZERO_KEY = 1e-12       # ||k||^2 below this: every logit is 0, S_P = L exactly


@dataclass(frozen=True)
class Reduced:
    """The float data of the reduction (shapes: d model width, N examples)."""
    V: np.ndarray       # (d, d) value-to-output map
    key: np.ndarray     # (d,) the logit of a prompt token p is <p, key>
    x0: np.ndarray      # (d,) the shared last token, positionally encoded
    a: np.ndarray       # (N, d) the data's attention outputs at the last position
    lse: np.ndarray     # (N,) log S_i, the data's log normalisers
    Y: np.ndarray       # (N, d) the last-position targets
    W1: np.ndarray
    b1: np.ndarray
    W2: np.ndarray
    b2: np.ndarray


@dataclass(frozen=True)
class Attack:
    prompt: np.ndarray  # (L, d) tokens
    error: float        # float64 last-position max error of the reduced optimum
    start: str          # "relaxation" or "random"


def _single_layer(inst: Instance) -> bool:
    """One layer, one head, a residual MLP, no layer norm: the models both attacks describe."""
    spec = inst.spec
    return len(spec.layers) == 1 and len(spec.layers[0].heads) == 1 and not spec.layernorm and spec.mlp == "residual"


def _value_map(w) -> np.ndarray:
    """(d, d) the head's value-to-output map Wo Wv (or Wv)."""
    p = "layers.0.heads.0."
    return w[p + "Wo"] @ w[p + "Wv"] if p + "Wo" in w else w[p + "Wv"]


def _epigraph_minimax(residual, x: np.ndarray, bounds: list | None = None) -> np.ndarray:
    """A local minimum of max |residual(x)| from x: min t subject to -t <= residual(x) <= t (SLSQP).
    Returns the point found (x itself where the solver leaves the finite numbers)."""
    start = np.concatenate([x, [float(np.abs(residual(x)).max())]])

    def cons(y: np.ndarray) -> np.ndarray:
        res = residual(y[:-1]).ravel()
        return np.concatenate([y[-1] - res, y[-1] + res])

    out = minimize(lambda y: y[-1], start, jac=lambda y: np.eye(len(y))[-1], method="SLSQP",
                   bounds=None if bounds is None else bounds + [(0, None)],
                   constraints=[{"type": "ineq", "fun": cons}], options={"maxiter": 300, "ftol": 1e-12})
    return out.x[:-1] if np.all(np.isfinite(out.x)) else x


def reduced(inst: Instance) -> Reduced | None:
    """The reduction's data, or None where it does not apply (not one layer and head, no residual
    MLP, layer norm, a target beyond the last position, or examples with different last tokens)."""
    spec, w = inst.spec, inst.weights
    if not _single_layer(inst) or any(np.asarray(ex.Y).shape[0] != 1 for ex in inst.dataset):
        return None
    p = "layers.0.heads.0."
    V = _value_map(w)
    encoded = [np.asarray(ex.X, float) + (w["positional"][:len(ex.X)] if spec.positions else 0.0)
               for ex in inst.dataset]
    x0 = encoded[0][-1]
    if any(not np.array_equal(X[-1], x0) for X in encoded):
        return None
    key = w[p + "Wk"].T @ (w[p + "Wq"] @ x0)                           # (d,)
    a, lse = [], []
    for X in encoded:
        logits = X @ key                                               # (n,)
        top = logits.max()
        weights = np.exp(logits - top)                                 # (n,)
        lse.append(top + math.log(weights.sum()))
        a.append(V @ (weights @ X) / weights.sum())                    # (d,)
    Y = np.stack([np.asarray(ex.Y, float)[-1] for ex in inst.dataset])
    return Reduced(V, key, x0, np.stack(a), np.array(lse), Y, w["layers.0.W1"], w["layers.0.b1"],
                   w["layers.0.W2"], w["layers.0.b2"])


def residuals(r: Reduced, v: np.ndarray, H: float) -> np.ndarray:
    """(N, d) last-position errors g(x0 + z_i) - y_i of the prompts reduced to (v, H)."""
    lam = 1.0 / (1.0 + np.exp(np.clip(r.lse - (v @ r.key + H), -700, 700)))  # (N,)
    z = lam[:, None] * (r.V @ v)[None, :] + (1 - lam)[:, None] * r.a          # (N, d)
    h = r.x0[None, :] + z                                                      # (N, d)
    out = h + np.maximum(h @ r.W1.T + r.b1, 0.0) @ r.W2.T + r.b2               # (N, d)
    return out - r.Y


def _minimax(r: Reduced, v: np.ndarray, H: float, H_bounds: tuple[float, float]) -> tuple[np.ndarray, float, float]:
    """Local minimum of max |residuals| over (v, H) from one start; never worse than the start."""
    d = len(v)
    t0 = float(np.abs(residuals(r, v, H)).max())
    x = _epigraph_minimax(lambda y: residuals(r, y[:d], y[d]), np.concatenate([v, [H]]),
                          [(None, None)] * d + [H_bounds])
    v_best, H_best = x[:d], float(np.clip(x[d], *H_bounds))
    err = float(np.abs(residuals(r, v_best, H_best)).max())
    return (v_best, H_best, err) if err <= t0 else (v, H, t0)


def relaxation_start(r: Reduced, delta: float, targets: np.ndarray) -> tuple[np.ndarray, float] | None:
    """(v, H) from a feasible point of the L1+ relaxation at attention radius delta (float LP):
    |V v + s_i a_i - (1 + s_i) c_i| <= delta (1 + s_i) with s_i = sigma exp(lse_i), sigma >= 0.
    targets: (N, d) the attention outputs c_i the targets need."""
    N, d = r.a.shape
    scale = np.exp(r.lse - r.lse.max())                                # S_i / max S (no overflow)
    rows, rhs = [], []
    for i in range(N):
        for sign in (1.0, -1.0):  # sign (V v + s_i (a_i - c_i) - c_i) <= delta (1 + s_i)
            coef_sigma = scale[i] * (sign * (r.a[i] - targets[i]) - delta)   # (d,)
            rows.append(np.hstack([sign * r.V, coef_sigma[:, None]]))
            rhs.append(delta + sign * targets[i])
    A, b = np.vstack(rows), np.concatenate(rhs)
    lp = linprog(np.zeros(d + 1), A_ub=A, b_ub=b, bounds=[(None, None)] * d + [(0, None)], method="highs")
    if lp.status != 0:
        return None
    v, sigma = lp.x[:d], lp.x[d]
    if sigma <= 0:
        return v, math.log(MAX_LENGTH)  # the prompt dominates: as long a prompt as allowed
    log_SP = r.lse.max() - math.log(sigma)                             # S_P = max S / sigma
    return v, float(np.clip(log_SP - v @ r.key, 0.0, math.log(MAX_LENGTH)))


def realize(r: Reduced, v: np.ndarray, H: float) -> np.ndarray:
    """(L, d) prompt tokens with softmax-weighted mean v and weight entropy H (S_P = exp(<k, v> + H))."""
    k2 = float(r.key @ r.key)
    if k2 < ZERO_KEY:
        return np.tile(v, (max(1, round(math.exp(H))), 1))
    L = max(1, math.ceil(math.exp(H) - 1e-9))
    if L == 1:
        return v[None, :]
    lo, hi = 1.0 / L, 1.0  # weights (alpha, beta, ..., beta): entropy falls from log L to 0 as alpha grows

    def entropy(alpha: float) -> float:
        beta = (1 - alpha) / (L - 1)
        return -(alpha * math.log(alpha) + ((L - 1) * beta * math.log(beta) if beta > 0 else 0.0))
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if entropy(mid) > H else (lo, mid)
    alpha = (lo + hi) / 2
    s = np.array([alpha] + [(1 - alpha) / (L - 1)] * (L - 1))          # (L,)
    shift = (np.log(s) + entropy(alpha)) / k2                          # (L,) logit offsets from <k, v>, over |k|^2
    return v[None, :] + shift[:, None] * r.key[None, :]                # (L, d)


def attack(inst: Instance, *, delta: float | None, seed: int | list[int],
           random_starts: int = RANDOM_STARTS) -> Attack | None:
    """The best prompt the reduction finds (None where the reduction does not apply).

    delta: the relaxation's radius where it turns feasible (the L1 certificate's best_error);
    without it only random starts are used."""
    from peftaudit.verify.encoders.mlp import MLPWeights, invert

    r = reduced(inst)
    if r is None:
        return None
    mlp = MLPWeights.of_layer("residual", inst.weights)
    targets = np.stack([invert(mlp, y) - r.x0 for y in r.Y])          # (N, d) attention outputs c_i
    rng = np.random.default_rng(seed)
    d = r.V.shape[0]
    bounds = (0.0, math.log(MAX_LENGTH))
    starts: list[tuple[np.ndarray, float, str]] = []
    if delta is not None and delta > 0:
        for grow in (1e-6, 1e-3, 1e-1):
            found = relaxation_start(r, delta * (1 + grow), targets)
            if found is not None:
                starts.append((*found, "relaxation"))
                break
    starts += [(rng.normal(size=d) * 10 ** rng.uniform(*START_SCALES), float(rng.uniform(*bounds)), "random")
               for _ in range(random_starts)]
    best = None
    for v, H, how in starts:
        v, H, err = _minimax(r, v, H, bounds)
        if float(r.key @ r.key) < ZERO_KEY:  # only whole lengths exist: H = log L, L in {floor, ceil}
            options = {max(1, math.floor(math.exp(H))), min(MAX_LENGTH, math.ceil(math.exp(H)))}
            v, H, err = min((_minimax(r, v, math.log(L), (math.log(L), math.log(L))) for L in options),
                            key=lambda x: x[2])
        if best is None or err < best[2]:
            best = (v, H, err, how)
    v, H, err, how = best
    return Attack(realize(r, v, H), err, how)


def _one_token_data(inst: Instance) -> tuple | None:
    """(V, the MLP, per target position (visible tokens (n, d), query key (d,), query token (d,),
    target (d,))) for one-layer one-head residual models without layer norm; None otherwise."""
    from peftaudit.verify.encoders.mlp import MLPWeights

    spec, w = inst.spec, inst.weights
    if not _single_layer(inst):
        return None
    p = "layers.0.heads.0."
    out = []
    for ex in inst.dataset:
        X = np.asarray(ex.X, float) + (w["positional"][:len(ex.X)] if spec.positions else 0.0)   # (n, d)
        Y = np.asarray(ex.Y, float)                                                            # (k, d)
        for row, pos in enumerate(range(len(X) - len(Y), len(X))):
            visible = X if spec.attention == "encoder" else X[:pos + 1]
            out.append((visible, w[p + "Wk"].T @ (w[p + "Wq"] @ X[pos]), X[pos], Y[row]))
    return _value_map(w), MLPWeights.of_layer("residual", w), out


def _one_token_residuals(data: tuple, p: np.ndarray) -> np.ndarray:
    """(positions, d) errors with the one-token prompt p prepended (float64); data: _one_token_data's."""
    V, mlp, rows = data
    out = []
    for visible, key, x, y in rows:
        Z = np.vstack([p[None, :], visible])                              # (1 + n, d)
        logits = Z @ key                                                  # (1 + n,)
        s = np.exp(logits - logits.max())
        h = x + V @ (s @ Z) / s.sum()                                      # (d,)
        out.append(h + np.maximum(h @ mlp.W1.T + mlp.b1, 0) @ mlp.W2.T + mlp.b2 - y)
    return np.stack(out)


def one_token_attack(inst: Instance, *, seed: int | list[int], random_starts: int = 2 * RANDOM_STARTS
                     ) -> Attack | None:
    """The best one-token prompt from random starts at many scales (claim L2 with N = 2: its
    falsifier's whole class), minimising the max error (epigraph SLSQP); None where the model is
    not one layer and one head with a residual MLP."""
    data = _one_token_data(inst)
    if data is None:
        return None
    rng = np.random.default_rng(seed)
    d = inst.spec.d
    best = None
    for _ in range(random_starts):
        p0 = rng.normal(size=d) * 10 ** rng.uniform(*START_SCALES)
        err0 = float(np.abs(_one_token_residuals(data, p0)).max())
        p = _epigraph_minimax(lambda x: _one_token_residuals(data, x), p0)
        err = float(np.abs(_one_token_residuals(data, p)).max())
        if err > err0:
            p, err = p0, err0
        if best is None or err < best.error:
            best = Attack(p[None, :], err, "random")
    return best
