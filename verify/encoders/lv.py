"""Encoder for claim LV: no update of W_v of rank <= r fits the dataset; the system is documented
in verify/checkers/lv.py, which re-verifies every certificate independently.

An update of W_v alone leaves the attention weights as they are, so at the last position of
example i the state before the MLP is h_i = x_i + V u_i + Wo Delta u_i with u_i the frozen
attention average. With H_i = g^{-1}(Y_i) (g the residual MLP, a bijection when kappa < 1) and
R = [H_i - x_i - V u_i]_i, the states' errors form Wo Delta U - R, a rank-<=r matrix minus R: by
Eckart-Young its spectral norm is at least sigma_{r+1}(R). The certificate gives a lower bound on
sigma_{r+1} of the exact midpoint matrix (Courant-Fischer: Q^T (R~ R~^T - s^2 I) Q positive
definite), the enclosure error of R (Weyl), and the conversion to the layer output's max error.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from peftaudit.instance import Instance, digest, to_dict

from ..checkers import CERT_FORMAT
from .l1 import DEFAULT_TOLERANCE, CertifyResult
from .mlp import MLPWeights, branch_lipschitz, evaluate_exact, invert
from .rational import frac_str, matmul, matvec, positive_definite, qmat, qvec, sqrt_bounds, transpose
from .selfcheck import checked_result
from .softmax_bounds import attention_enclosure


def hypotheses(inst: Instance, rank: int = 1) -> str | None:
    """LV's hypotheses: one layer, one head, no layer norm, a residual MLP with kappa < 1, one target
    (the last position) per example, and rank + 1 <= min(d, N) (else nothing is left to bound)."""
    spec = inst.spec
    if not spec.single_head_single_layer or spec.layernorm:
        return "LV is about a single layer with a single head and no layer norm"
    if spec.mlp != "residual" or branch_lipschitz(MLPWeights.of_layer(spec.mlp, inst.weights)) >= 1:
        return "LV needs a residual MLP with branch bound kappa < 1 (an invertible layer output)"
    if inst.n_targets != 1:
        return "LV speaks about the last position's output: one target per example"
    if rank < 0 or rank + 1 > min(spec.d, len(inst.dataset)):
        return f"rank {rank} + 1 exceeds min(d, N) = {min(spec.d, len(inst.dataset))}: every such update may fit"
    return None


def residual_matrix(inst: Instance) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(R, H, U) in float64: R's columns H_i - x_i - V u_i (d, N), the preimages H_i = g^{-1}(Y_i),
    and U's columns u_i, the frozen attention averages (d, N)."""
    w, spec = inst.weights, inst.spec
    p = "layers.0.heads.0."
    V = w[p + "Wo"] @ w[p + "Wv"] if p + "Wo" in w else w[p + "Wv"]                 # (d,d)
    mlp = MLPWeights.of_layer(spec.mlp, w)
    cols, pre, avg = [], [], []
    for ex in inst.dataset:
        X = ex.X + (w["positional"][: len(ex.X)] if spec.positions else 0)            # (n,d)
        logits = X @ w[p + "Wk"].T @ (w[p + "Wq"] @ X[-1])                            # (n,)
        a = np.exp(logits - logits.max())
        u = (a / a.sum()) @ X                                                         # (d,)
        H = invert(mlp, ex.Y[-1])                                                     # (d,)
        pre.append(H)
        avg.append(u)
        cols.append(H - X[-1] - V @ u)
    return np.stack(cols, axis=1), pre, np.stack(avg, axis=1)


@dataclass(frozen=True)
class ExampleBox:
    """One example's exact facts for LV and LV-scale: its encoded last token x, a box [lo, hi]
    around M u (M a value map, u the frozen attention average), the preimage point H~ and rho >=
    ||H~ - g^{-1}(Y)||_inf (from H~'s exact residual through g, divided by 1 - kappa)."""
    last: list[Fraction]
    lo: list[Fraction]
    hi: list[Fraction]
    H: list[Fraction]
    rho: Fraction


def example_boxes(inst: Instance, value_map: list, preimages: list) -> tuple[list[ExampleBox], Fraction]:
    """Every example's ExampleBox for the value map `value_map` (exact), and the MLP's kappa."""
    w, spec = inst.weights, inst.spec
    p = "layers.0.heads.0."
    Wq, Wk = qmat(w[p + "Wq"]), qmat(w[p + "Wk"])
    mlp = MLPWeights.of_layer(spec.mlp, w)
    kappa = branch_lipschitz(mlp)
    E = qmat(w["positional"]) if spec.positions else None
    out = []
    for ex, H in zip(inst.dataset, preimages):
        X = qmat(ex.X)
        if E is not None:
            X = [[a + b for a, b in zip(x, pe)] for x, pe in zip(X, E)]
        lo, hi = attention_enclosure(value_map, matvec(transpose(Wk), matvec(Wq, X[-1])), X)
        rho = max(abs(o - t) for o, t in zip(evaluate_exact(mlp, H), qvec(ex.Y[-1]))) / (1 - kappa)
        out.append(ExampleBox(X[-1], lo, hi, H, rho))
    return out, kappa


@dataclass(frozen=True)
class ValueFacts:
    """The part of LV's certificate that no rank changes, for one instance: the preimage points
    H~ (exact), kappa, the exact Gram matrix R~ R~^T of the midpoint residuals, the squared
    Frobenius bound of the enclosure error, and R's float64 SVD (which picks Q and s)."""
    H: list
    kappa: Fraction
    G: list
    width2: Fraction
    U: np.ndarray
    S: np.ndarray


def value_facts(inst: Instance, residual: tuple | None = None) -> ValueFacts:
    """ValueFacts of an instance that meets LV's hypotheses: the preimages and exact enclosures,
    computed once for every rank the caller certifies (`residual`: residual_matrix(inst), when the
    caller has it)."""
    d = inst.spec.d
    p = "layers.0.heads.0."
    Wv = qmat(inst.weights[p + "Wv"])
    V = matmul(qmat(inst.weights[p + "Wo"]), Wv) if p + "Wo" in inst.weights else Wv
    R_float, preimages, _ = residual if residual is not None else residual_matrix(inst)
    H_cert = [qvec(H) for H in preimages]
    boxes, kappa = example_boxes(inst, V, H_cert)
    columns = [[h - x - (a + b) / 2 for h, x, a, b in zip(box.H, box.last, box.lo, box.hi)] for box in boxes]
    width2 = sum((sum(((box.rho + (b - a) / 2) ** 2 for a, b in zip(box.lo, box.hi)), Fraction(0))
                  for box in boxes), Fraction(0))
    G = [[sum((ci[a] * ci[b] for ci in columns), Fraction(0)) for b in range(d)] for a in range(d)]  # R~ R~^T
    U, S, _ = np.linalg.svd(R_float)
    return ValueFacts(H_cert, kappa, G, width2, U, S)


def certify_lv(inst: Instance, rank: int = 1, tolerance: float = DEFAULT_TOLERANCE,
               facts: ValueFacts | None = None) -> CertifyResult:
    """Certify that no update of W_v of rank <= `rank` gets the last-position error below a margin
    (`facts`: value_facts(inst), when the caller certifies several ranks)."""
    why = hypotheses(inst, rank)
    if why is not None:
        return CertifyResult("LV", "not-applicable", why)
    d, N = inst.spec.d, len(inst.dataset)
    f = facts if facts is not None else value_facts(inst)
    H_cert, kappa, G, width2, U, S = f.H, f.kappa, f.G, f.width2, f.U, f.S
    Q = [qvec(U[:, j]) for j in range(rank + 1)]                                      # r+1 columns, each (d,)
    QtGQ = [[sum((qi[a] * sum((G[a][b] * qj[b] for b in range(d)), Fraction(0)) for a in range(d)), Fraction(0))
             for qj in Q] for qi in Q]
    QtQ = [[sum((a * b for a, b in zip(qi, qj)), Fraction(0)) for qj in Q] for qi in Q]
    s = Fraction(float(S[rank]) * (1 - 1e-6)) if S[rank] > 0 else Fraction(0)
    for _ in range(60):
        if s > 0 and positive_definite([[g - s * s * t for g, t in zip(rg, rt)] for rg, rt in zip(QtGQ, QtQ)]):
            break
        s /= 2
    else:
        s = Fraction(0)
    e = sqrt_bounds(width2)[1]
    c = sqrt_bounds(Fraction(d * N))[1]
    margin = (1 - kappa) * (s - e) / c
    if s <= 0 or float(margin) <= tolerance:
        return CertifyResult("LV", "not-certified", f"sigma_{rank + 1} of the targets' residual matrix gives no margin "
                             f"above {tolerance:g} (its float64 value {float(S[rank]):.3g}, enclosure error "
                             f"{float(e):.3g}): a rank-{rank} update of W_v may fit", best_error=float(S[rank]))
    enc = lambda v: frac_str(v) if isinstance(v, Fraction) else [enc(x) for x in v]  # noqa: E731
    cert = {"format": CERT_FORMAT, "claim": "LV", "instance": to_dict(inst), "instance_sha256": digest(inst),
            "rank": rank, "H": enc(H_cert), "Q": enc(Q), "s": enc(s), "e": enc(e), "c": enc(c),
            "margin": enc(margin),
            "uncertified": {"sigma_float": [float(x) for x in S], "kappa": float(kappa),
                            "threshold_rank_float": int(np.sum(S > 1e-9 * max(1.0, float(S[0]))))}}
    return checked_result("LV", cert, f"every update of W_v of rank <= {rank} keeps a last-position error >= "
                          f"{float(margin):.6g} (sigma_{rank + 1} >= {float(s - e):.3g}); checked", margin=margin)


def construct_update(inst: Instance, rank: int, residual: tuple | None = None) -> dict[str, np.ndarray]:
    """The ceiling's construction, as a LoRA adapter on W_v of `rank`: Delta = R U^+ truncated to
    its best rank-`rank` part (Wo^{-1} first when the head has Wo), which fits every example
    exactly when R's rows lie in U's row space and rank(R) <= rank (planted instances). It is a
    candidate witness only: the interval replay of the exact model decides whether it memorizes
    (`residual`: residual_matrix(inst), when the caller has it)."""
    R, _, U = residual if residual is not None else residual_matrix(inst)
    p = "layers.0.heads.0."
    if p + "Wo" in inst.weights:
        R = np.linalg.solve(inst.weights[p + "Wo"], R)
    delta = R @ np.linalg.pinv(U)                                                     # (d,d)
    P, S, Qt = np.linalg.svd(delta)
    return {p + "Wv.B": P[:, :rank] * S[:rank], p + "Wv.A": Qt[:rank]}
