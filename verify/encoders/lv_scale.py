"""Encoder for claim LV-scale: no scaling of W_v's rows (IA3 on v, W_v -> diag(l) W_v) fits the
dataset; the system is documented in verify/checkers/lv_scale.py, which re-verifies every
certificate independently.

A row scaling leaves the attention weights as they are, so at the last position of example i
the state before the MLP is h_i = x_i + l * v_i with v_i = W_v u_i (u_i the frozen attention
average). Coordinate k of every example depends on l_k alone: fitting needs l_k v_ik ~ b_ik with
b_ik = H_ik - x_ik, H_i = g^{-1}(Y_i). For two examples i, j,
    |v_jk| |l_k v_ik - b_ik| + |v_ik| |l_k v_jk - b_jk| >= |v_ik b_jk - v_jk b_ik|,
so one of the two errors is at least |v_ik b_jk - v_jk b_ik| / (|v_ik| + |v_jk|): the dual of the
one-variable Chebyshev LP min_l max_i |l v_ik - b_ik|, whose optimum such a pair attains. The
certificate names the coordinate and the pair; intervals carry the enclosures of v and H.
"""

from __future__ import annotations

from fractions import Fraction
from itertools import combinations

import numpy as np

from peftaudit.instance import Instance, digest, to_dict

from ..checkers import CERT_FORMAT
from .l1 import DEFAULT_TOLERANCE, CertifyResult
from .lv import example_boxes, residual_matrix
from .lv import hypotheses as value_hypotheses
from .rational import frac_str, qmat, qvec
from .selfcheck import checked_result

WV = "layers.0.heads.0.Wv"


def hypotheses(inst: Instance) -> str | None:
    """LV-scale's hypotheses: LV's (one layer, one head, no layer norm, a residual MLP with
    kappa < 1, one target per example), a head without an output map (W_v's rows are the state's
    coordinates), and at least two examples."""
    why = value_hypotheses(inst, 0)
    if why is not None:
        return why
    if "layers.0.heads.0.Wo" in inst.weights:
        return "LV-scale needs a head without an output map Wo (a row of W_v is then a coordinate of the state)"
    if len(inst.dataset) < 2:
        return "LV-scale needs at least two examples"
    return None


def scaled_values(inst: Instance, residual: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(V, B) in float64, each (N, d): v_i = W_v u_i, and b_i = H_i - x_i, the part of the state
    a row scaling must produce (`residual`: residual_matrix(inst), when the caller has it)."""
    R, _, U = residual if residual is not None else residual_matrix(inst)
    Wv = inst.weights[WV]
    V = (Wv @ U).T                                                                    # (N,d)
    return V, R.T + V                                                                 # (N,d): R = H - x - V


def _times(a: tuple[Fraction, Fraction], b: tuple[Fraction, Fraction]) -> tuple[Fraction, Fraction]:
    products = [x * y for x in a for y in b]
    return min(products), max(products)


def pair_bound(v: list, b: list, i: int, j: int, k: int) -> Fraction:
    """The exact lower bound one pair (i, j) gives at coordinate k, from intervals v[i][k], b[i][k]."""
    lo, hi = (p - q for p, q in zip(_times(v[i][k], b[j][k]), reversed(_times(v[j][k], b[i][k]))))
    top = max(Fraction(0), lo, -hi)                                                  # |numerator| from below
    size = lambda iv: max(abs(iv[0]), abs(iv[1]))  # noqa: E731
    bottom = size(v[i][k]) + size(v[j][k])
    return top / bottom if bottom > 0 else Fraction(0)


def chebyshev_scales(V: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Per coordinate k, the l_k minimising max_i |l_k v_ik - b_ik| (float64): the minimum of a
    convex piecewise-linear function lies where two of its lines cross, so every crossing is tried."""
    out = []
    for v, b in zip(V.T, B.T):
        cand = [0.0] + [bi / vi for vi, bi in zip(v, b) if vi != 0]
        for (vi, bi), (vj, bj) in combinations(zip(v, b), 2):
            cand += [(bi - bj) / (vi - vj)] if vi != vj else []
            cand += [(bi + bj) / (vi + vj)] if vi != -vj else []
        out.append(min(cand, key=lambda x: np.max(np.abs(x * v - b))))
    return np.array(out)


def construct_scaling(inst: Instance) -> dict[str, np.ndarray]:
    """The ceiling's construction, as an IA3 adapter on W_v: the Chebyshev scales per coordinate.
    It is a candidate witness only: the interval replay of the exact model decides what it reaches."""
    V, B = scaled_values(inst)
    return {WV + ".l": chebyshev_scales(V, B)}


def certify_lv_scale(inst: Instance, tolerance: float = DEFAULT_TOLERANCE) -> CertifyResult:
    """Certify that no row scaling of W_v gets the last-position error below a margin."""
    why = hypotheses(inst)
    if why is not None:
        return CertifyResult("LV-scale", "not-applicable", why)
    d, N = inst.spec.d, len(inst.dataset)
    residual = residual_matrix(inst)  # the preimages g^{-1}(Y_i) are iterated once, here
    H_cert = [qvec(H) for H in residual[1]]
    boxes, kappa = example_boxes(inst, qmat(inst.weights[WV]), H_cert)
    v_box = [list(zip(box.lo, box.hi)) for box in boxes]
    b_box = [[(h - x - box.rho, h - x + box.rho) for h, x in zip(box.H, box.last)] for box in boxes]
    V, B = scaled_values(inst, residual)
    scores = sorted(((abs(V[i, k] * B[j, k] - V[j, k] * B[i, k]) / (abs(V[i, k]) + abs(V[j, k]) or np.inf), k, i, j)
                     for k in range(d) for i, j in combinations(range(N), 2)), reverse=True)
    best = max(((pair_bound(v_box, b_box, i, j, k), k, i, j) for _, k, i, j in scores[:4]), default=None)
    cheb = chebyshev_scales(V, B)
    optimum = float(np.max(np.abs(cheb * V - B)))
    if best is None or float((1 - kappa) * best[0]) <= tolerance:
        return CertifyResult("LV-scale", "not-certified", f"the best coordinate pair gives no margin above "
                             f"{tolerance:g} (the float64 optimum of the scaling problem is {optimum:.3g}): a row "
                             "scaling of W_v may fit", best_error=optimum)
    bound, k, i, j = best
    margin = (1 - kappa) * bound
    cert = {"format": CERT_FORMAT, "claim": "LV-scale", "instance": to_dict(inst), "instance_sha256": digest(inst),
            "H": [[frac_str(x) for x in h] for h in H_cert], "coordinate": k, "pair": [i, j],
            "margin": frac_str(margin),
            "uncertified": {"state_optimum_float": optimum, "kappa": float(kappa)}}
    return checked_result("LV-scale", cert, f"every row scaling of W_v keeps a last-position error >= "
                          f"{float(margin):.6g} (coordinate {k}, examples {i} and {j}); checked", margin=margin)
