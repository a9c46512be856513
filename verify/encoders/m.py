"""Encoder for claim M (prompts on invertible layers learn only invertible maps).

It computes exact rational upper bounds on every norm the argument needs, runs the layer
chain of verify/check_m.py (where the derivation is written out) and emits a certificate that
the independent checker re-verifies. Nothing here is trusted: the checker recomputes it all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from peftaudit.instance import Instance, digest, to_dict

from ..checkers import CERT_FORMAT
from .selfcheck import checked_result
from .l1 import CertifyResult, DEFAULT_TOLERANCE
from .rational import frac_str, matmul, positive_definite, qmat, sqrt_bounds, transpose

NORM_BOUND_KEY = "prompt_norm_bound"  # instance meta: the bound B on every prompt token's 2-norm


def upper_sqrt(x: Fraction) -> Fraction:
    return sqrt_bounds(x)[1]


def lower_sqrt(x: Fraction) -> Fraction:
    return sqrt_bounds(x)[0]


def _gram(W: list[list[Fraction]]) -> list[list[Fraction]]:
    """The smaller of W^T W and W W^T, exactly."""
    rows = W if len(W) <= len(W[0]) else transpose(W)
    return matmul(rows, transpose(rows))


def spectral_upper(M: list[list[Fraction]]) -> Fraction:
    """A rational s >= ||M||_2, proved by s^2 I - Gram(M) positive definite (0 when M = 0).

    Starts just above the float estimate; if that fails a few times (or the float underflows),
    falls back to just above the Frobenius norm, which always succeeds."""
    if not any(x for row in M for x in row):
        return Fraction(0)
    G = _gram(M)

    def proves(s: Fraction) -> bool:
        return positive_definite([[(s * s if i == j else 0) - g for j, g in enumerate(row)]
                                  for i, row in enumerate(G)])
    estimate = float(np.linalg.norm(np.array([[float(x) for x in r] for r in M]), 2))
    if estimate > 1e-150 and math.isfinite(estimate):
        s = Fraction(estimate) * (1 + Fraction(1, 10**9))
        for _ in range(8):
            if proves(s):
                return s
            s *= 1 + Fraction(1, 10**6)
    s = sqrt_bounds(sum((g for i, row in enumerate(G) for j, g in enumerate(row) if i == j), Fraction(0)))[1]
    s = s * (1 + Fraction(1, 2**40))
    assert proves(s)  # s > ||M||_F >= ||M||_2
    return s


def _head_maps(w, layer: int, head: int) -> tuple[list[list[Fraction]], list[list[Fraction]]]:
    """Exact (V, A) of one head: V = Wo Wv (or Wv), A = Wk^T Wq (logits are x_j^T A x_i)."""
    p = f"layers.{layer}.heads.{head}."
    V = matmul(qmat(w[p + "Wo"]), qmat(w[p + "Wv"])) if p + "Wo" in w else qmat(w[p + "Wv"])
    return V, matmul(transpose(qmat(w[p + "Wk"])), qmat(w[p + "Wq"]))


def _norm_upper(v: np.ndarray) -> Fraction:
    return upper_sqrt(sum((x * x for x in map(Fraction, np.asarray(v, dtype=np.float64).tolist())), Fraction(0)))


@dataclass(frozen=True)
class LayerBounds:
    """Exact upper bounds on the norms of one layer (2-norms; V_h = Wo Wv, A_h = Wk^T Wq)."""
    sV: tuple[Fraction, ...]
    sA: tuple[Fraction, ...]
    sW1: Fraction
    sW2: Fraction
    rb1: Fraction
    rb2: Fraction

    @property
    def kappa(self) -> Fraction:
        """Lipschitz bound of the residual MLP's branch W2 relu(W1 . + b1) in the 2-norm."""
        return self.sW1 * self.sW2

    def attention_lipschitz(self, radius: Fraction) -> Fraction:
        """alpha: Lipschitz bound (max-token 2-norm) of Att on sequences whose tokens have norm <= radius."""
        return sum((v * (1 + 4 * a * radius * radius) for v, a in zip(self.sV, self.sA)), Fraction(0))

    def next_radius(self, radius: Fraction) -> Fraction:
        """Token-norm bound after the layer: attention outputs are convex mixes of V-images."""
        H = radius * (1 + sum(self.sV, Fraction(0)))
        return H + self.sW2 * (self.sW1 * H + self.rb1) + self.rb2

    def to_json(self) -> dict:
        return {"sV": [frac_str(x) for x in self.sV], "sA": [frac_str(x) for x in self.sA],
                "sW1": frac_str(self.sW1), "sW2": frac_str(self.sW2), "rb1": frac_str(self.rb1),
                "rb2": frac_str(self.rb2)}


def layer_bounds(inst: Instance) -> list[LayerBounds]:
    w, out = inst.weights, []
    for li, layer in enumerate(inst.spec.layers):
        sV, sA = [], []
        for h in range(len(layer.heads)):
            V, A = _head_maps(w, li, h)
            sV.append(spectral_upper(V))
            sA.append(spectral_upper(A))
        b = f"layers.{li}."
        out.append(LayerBounds(tuple(sV), tuple(sA), spectral_upper(qmat(w[b + "W1"])),
                               spectral_upper(qmat(w[b + "W2"])), _norm_upper(w[b + "b1"]), _norm_upper(w[b + "b2"])))
    return out


def encoded_inputs(inst: Instance) -> np.ndarray:
    """(E, n, d) inputs after the positional encoding (prompts are never encoded)."""
    X = inst.inputs()
    return X + inst.weights["positional"][None, : X.shape[1]] if inst.spec.positions else X


def input_radius(inst: Instance) -> Fraction:
    """r0 >= every encoded input token's 2-norm, with the encoding added in exact arithmetic
    (a float sum can round below the exact token the certificate speaks about)."""
    E = qmat(inst.weights["positional"]) if inst.spec.positions else None
    best = Fraction(0)
    for ex in inst.dataset:
        for t, x in enumerate(qmat(ex.X)):
            token = [a + b for a, b in zip(x, E[t])] if E is not None else x
            best = max(best, sum((v * v for v in token), Fraction(0)))
    return upper_sqrt(best)


def noninvertible_pair(inst: Instance) -> tuple[int, int] | None:
    """Examples i < j with X_i != X_j and Y_i == Y_j exactly, the farthest such pair; None if none."""
    best, best_gap = None, 0.0
    for i, a in enumerate(inst.dataset):
        for j in range(i + 1, len(inst.dataset)):
            b = inst.dataset[j]
            if a.X.shape == b.X.shape and np.array_equal(a.Y, b.Y) and not np.array_equal(a.X, b.X):
                gap = float(np.linalg.norm(a.X - b.X, axis=1).max())
                if gap > best_gap:
                    best, best_gap = (i, j), gap
    return best


def prompt_norm_bound(inst: Instance) -> float | None:
    B = inst.meta.get(NORM_BOUND_KEY)
    return float(B) if isinstance(B, (int, float)) and not isinstance(B, bool) and B > 0 and math.isfinite(B) \
        else None


@dataclass(frozen=True)
class Chain:
    """The layer chain of verify/check_m.py: per layer alpha, kappa, and the ratios lam, rho, up."""
    alphas: list[Fraction]
    kappas: list[Fraction]
    lam: list[Fraction]    # lower bounds on ||dZ_l|| / ||dX|| (content), l = 1..L+1
    failed_at: int | None  # first layer where the lower bound vanishes (None: the chain holds)

    @property
    def c(self) -> Fraction:
        return self.lam[-1] if self.failed_at is None else Fraction(0)


def chain(bounds: list[LayerBounds], r0: Fraction, B: Fraction, encoder: bool) -> Chain:
    """Propagate radii and the joint (encoder) or per-layer (causal) lower Lipschitz bound."""
    radius = max(r0, B)
    lam, rho, up = [Fraction(1)], Fraction(0), Fraction(1)
    alphas, kappas = [], []
    failed = None
    for li, lb in enumerate(bounds):
        a, k = lb.attention_lipschitz(radius), lb.kappa
        alphas.append(a)
        kappas.append(k)
        low = lam[-1] - a * max(rho, lam[-1])
        if failed is None and (k >= 1 or low <= 0):
            failed = li
        lam.append((1 - k) * low)
        if encoder:  # the prompt states move with X after layer 1
            grow = a * max(rho, up)
            rho, up = (1 + k) * (rho + grow), (1 + k) * (up + grow)
        radius = lb.next_radius(radius)
    return Chain(alphas, kappas, lam, failed)


def structure_problem(inst: Instance, need_bound: bool = True) -> str | None:
    """Why M's argument does not apply to the instance's shape, or None."""
    spec = inst.spec
    if spec.layernorm:
        return "M's bounds assume no layer norm"
    if spec.mlp != "residual":
        return "M's margin needs residual MLPs (the 2-norm branch bound kappa < 1)"
    if inst.n_targets != inst.n_tokens:
        return "M needs targets at every input position (the output is the whole last-m block)"
    if noninvertible_pair(inst) is None:
        return "M needs two examples with X_i != X_j and Y_i == Y_j"
    if need_bound and prompt_norm_bound(inst) is None:
        return f"M needs meta[{NORM_BOUND_KEY!r}], a positive bound B on the prompt tokens' 2-norms"
    return None


def _per_layer_chain(inst: Instance, bound: float) -> Chain:
    """The chain without the encoder's prompt-state terms: per-layer alpha and kappa at bound B."""
    return chain(layer_bounds(inst), input_radius(inst), Fraction(bound), encoder=False)


def layer_conditions(inst: Instance, bound: float | None = None) -> dict[str, bool]:
    """The per-layer sufficient conditions at prompt bound B: every MLP a contraction-perturbed
    identity (kappa_l < 1) and every attention Lipschitz bound alpha_l < 1."""
    ch = _per_layer_chain(inst, bound if bound is not None else prompt_norm_bound(inst))
    return {"mlp": all(k < 1 for k in ch.kappas), "attention": all(a < 1 for a in ch.alphas)}


def hypotheses(inst: Instance) -> str | None:
    why = structure_problem(inst)
    if why is not None:
        return why
    cond = layer_conditions(inst)
    if not cond["mlp"]:
        return "some layer's MLP branch bound kappa = ||W2|| ||W1|| is not below 1"
    if not cond["attention"]:
        return "some layer's attention Lipschitz bound is not below 1 at the prompt bound B"
    return None


def certify_m(inst: Instance, tolerance: float = DEFAULT_TOLERANCE, bound: float | None = None) -> CertifyResult:
    """Certify that no prompt with token norms <= B brings the max error below a margin."""
    why = structure_problem(inst, need_bound=bound is None)
    if why is not None:
        return CertifyResult("M", "not-applicable", why)
    B = Fraction(bound if bound is not None else prompt_norm_bound(inst))
    bounds, r0 = layer_bounds(inst), input_radius(inst)
    encoder = inst.spec.attention == "encoder"
    ch = chain(bounds, r0, B, encoder)
    i, j = noninvertible_pair(inst) or (0, 1)
    gap = max(sum((Fraction(a) - Fraction(b)) ** 2 for a, b in zip(x1.tolist(), x2.tolist()))
              for x1, x2 in zip(inst.dataset[i].X, inst.dataset[j].X))
    D, t = lower_sqrt(gap), lower_sqrt(Fraction(1, inst.spec.d))
    margin = ch.c * D * t / 2
    info = {"alphas": [float(a) for a in ch.alphas], "kappas": [float(k) for k in ch.kappas],
            "lower_lipschitz": float(ch.c), "B": float(B), "pair": [i, j], "joint": encoder and len(bounds) > 1}
    if ch.failed_at is not None or float(margin) <= tolerance:
        where = f"layer {ch.failed_at}" if ch.failed_at is not None else "the margin"
        return CertifyResult("M", "not-certified", f"the {'joint ' if encoder and len(bounds) > 1 else ''}lower Lipschitz chain fails "
                             f"at {where} (alpha={[round(float(a), 4) for a in ch.alphas]}, kappa="
                             f"{[round(float(k), 4) for k in ch.kappas]})", best_error=None)
    cert = {"format": CERT_FORMAT, "claim": "M", "instance": to_dict(inst),
            "instance_sha256": digest(inst), "pair": [i, j], "B": frac_str(B),
            "r0": frac_str(r0), "layers": [lb.to_json() for lb in bounds], "D": frac_str(D), "t": frac_str(t),
            "margin": frac_str(margin), "uncertified": info}
    return checked_result("M", cert, f"every prompt with token norms <= {float(B):g} keeps a max error >= "
                          f"{float(margin):.6g} (lower Lipschitz {float(ch.c):.4g}); checked", margin=margin,
                          delta=margin)


def _det(M: list[list[Fraction]]) -> Fraction:
    """Exact determinant by Gaussian elimination with row swaps."""
    A, det = [row[:] for row in M], Fraction(1)
    n = len(A)
    for k in range(n):
        pivot = next((i for i in range(k, n) if A[i][k] != 0), None)
        if pivot is None:
            return Fraction(0)
        if pivot != k:
            A[k], A[pivot], det = A[pivot], A[k], -det
        det *= A[k][k]
        for i in range(k + 1, n):
            f = A[i][k] / A[k][k]
            if f:
                A[i] = [a - f * b for a, b in zip(A[i], A[k])]
    return det


def uniform_layer_injective(inst: Instance, layer: int) -> bool | None:
    """Exact per-layer injectivity for every fixed prompt state, for layers with zero logits.

    When Wk^T Wq = 0 in every head, every token receives V mean(tokens) (V = sum of the heads'
    value maps), so with m input tokens and k prompt states the token map is Z -> Z + 1 (x) V
    (sum P + sum Z) / (k + m), injective iff det(I + c V) != 0 with c = m / (k + m). Only
    k < m (||V||_F - 1) + 1 can make it vanish (beyond, 1/c exceeds the spectral radius).
    Returns None when some logit matrix is nonzero (the criterion does not apply)."""
    w, d, m = inst.weights, inst.spec.d, inst.n_tokens
    V = [[Fraction(0)] * d for _ in range(d)]
    for h in range(len(inst.spec.layers[layer].heads)):
        Vh, A = _head_maps(w, layer, h)
        if any(x for row in A for x in row):
            return None
        V = [[a + b for a, b in zip(r1, r2)] for r1, r2 in zip(V, Vh)]
    frob = upper_sqrt(sum((x * x for row in V for x in row), Fraction(0)))
    k_max = max(0, math.ceil(m * (frob - 1))) + 1
    for k in range(k_max + 1):
        c = Fraction(m, k + m)
        if _det([[(1 if i == j else 0) + c * x for j, x in enumerate(row)] for i, row in enumerate(V)]) == 0:
            return False
    return True


def per_layer_injective(inst: Instance) -> list[str | None]:
    """Per layer: None when the layer is injective in its input tokens for every fixed prompt
    state (MLP: kappa < 1; attention: alpha < 1 at the propagated radius, or the exact zero-logit
    criterion), else why not (or why it is not known)."""
    bound = prompt_norm_bound(inst)
    ch = _per_layer_chain(inst, bound if bound is not None else 1)
    out: list[str | None] = []
    for li, (a, k) in enumerate(zip(ch.alphas, ch.kappas)):
        if k >= 1:
            out.append(f"layer {li}: MLP branch bound kappa >= 1")
        elif a < 1:
            out.append(None)
        else:
            exact = uniform_layer_injective(inst, li)
            out.append(None if exact else f"layer {li}: " + (
                "attention injectivity not established (alpha >= 1, logits not all zero)" if exact is None
                else "det(I + c V) = 0 for some prompt length: not injective for every fixed prompt"))
    return out
