"""Independent checker of M certificates (prompts on invertible layers), in exact arithmetic.

Claim M (SPEC section 3), robust form. Norms: ||z|| is a token's 2-norm and ||Z|| = max_t ||z_t||
for a sequence. Every prompt token has ||p|| <= B; prompts are not positionally encoded.

1. Attention is Lipschitz on bounded sequences. For a query x_i and visible tokens x_j (all with
   norm <= R), out_i = sum_j s_ij V x_j with s_i = softmax_j(x_j^T A x_i), A = Wk^T Wq. A change
   dx with max_j ||dx_j|| <= Delta gives |dl_ij| <= 2 ||A|| R Delta, and
   d out_i = sum_j s_ij V dx_j + V sum_j s_ij (x_j - xbar)(dl_ij - dlbar) (softmax Jacobian),
   whose norm is <= ||V|| Delta + ||V|| 2R (range_j dl_ij)/2 <= ||V|| (1 + 4 ||A|| R^2) Delta:
   the mean absolute deviation of dl under s is at most half its range. Summed over heads this
   is alpha(R); by the mean value inequality on the (convex) ball it bounds differences.
2. Radii: if all tokens entering a layer have norm <= R, after it they have norm
   <= H + ||W2|| (||W1|| H + ||b1||) + ||b2||, H = R (1 + sum_h ||V_h||).
3. Residual MLP: (1 - kappa) ||p - q|| <= ||MLP(p) - MLP(q)|| <= (1 + kappa) ||p - q||,
   kappa = ||W2|| ||W1|| < 1.
4. Chain, relative to D = ||X_i - X_j|| (content, encoded). lam_l bounds the content difference
   at layer l from below, up_l from above, rho_l bounds the prompt states' difference from above.
   lam_1 = up_1 = 1, rho_1 = 0. Per layer with alpha_l = alpha(R_l), R_1 = max(r0, B):
       low = lam - alpha max(rho, lam)   (> 0 required; the bound is increasing in the true
                                          content difference, so its minimum is at lam)
       lam' = (1 - kappa) low
       encoder: rho' = (1 + kappa)(rho + alpha max(rho, up)),  up' = (1 + kappa)(up + alpha max(rho, up))
       causal:  rho' = 0 (the prompt never attends to the input), up' unused.
   This is the joint condition for encoder models: after layer 1 the prompt states depend on X.
5. Then ||out_P(X_i) - out_P(X_j)|| >= lam_{L+1} D for every prompt with norms <= B; with
   Y_i = Y_j some example keeps an error >= lam_{L+1} D / 2 at some token, and in the max norm
   over coordinates >= lam_{L+1} D t / 2 with t^2 d <= 1.

The certificate supplies the norm bounds; this module re-proves each of them (s^2 I - Gram
positive definite by an exact LDL^T; r^2 >= ||b||^2) and recomputes everything else.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from .exact import get, mul, positive_definite, sq, transpose
from .instance import Instance, Layer
from .reading import MalformedCertificate, rational
from .result import CheckResult


def _norm_is_bounded(M: list[list[Fraction]], s: Fraction) -> bool:
    """||M||_2 <= s, proved exactly: M = 0, or s^2 I - G positive definite (G the smaller Gram)."""
    if s < 0:
        return False
    if not any(x for row in M for x in row):
        return True
    rows = M if len(M) <= len(M[0]) else transpose(M)
    return positive_definite([[(s * s if i == j else 0) - sum((a * b for a, b in zip(r1, r2)), Fraction(0))
                               for j, r2 in enumerate(rows)] for i, r1 in enumerate(rows)])


def _layer(layer: Layer, li: int, bounds: Any) -> tuple[list[Fraction], list[Fraction], Fraction, Fraction,
                                                        Fraction, Fraction] | str:
    """Re-prove one layer's claimed norm bounds; returns (sV, sA, sW1, sW2, rb1, rb2) or a reason."""
    where = f"layers[{li}]"
    sV_doc, sA_doc = get(bounds, "sV", where), get(bounds, "sA", where)
    if not (isinstance(sV_doc, list) and isinstance(sA_doc, list)
            and len(sV_doc) == len(sA_doc) == len(layer.heads)):
        raise MalformedCertificate(f"{where}: one sV and one sA per head expected")
    sV = [rational(x, f"{where}.sV") for x in sV_doc]
    sA = [rational(x, f"{where}.sA") for x in sA_doc]
    for h, head in enumerate(layer.heads):
        if not _norm_is_bounded(head.V, sV[h]):
            return f"{where}.heads[{h}]: ||V|| <= {float(sV[h]):.6g} is not proved"
        if not _norm_is_bounded(mul(transpose(head.Wk), head.Wq), sA[h]):
            return f"{where}.heads[{h}]: ||Wk^T Wq|| <= {float(sA[h]):.6g} is not proved"
    sW1, sW2, rb1, rb2 = (rational(get(bounds, k, where), f"{where}.{k}") for k in ("sW1", "sW2", "rb1", "rb2"))
    if not (_norm_is_bounded(layer.W1, sW1) and _norm_is_bounded(layer.W2, sW2)):
        return f"{where}: the MLP norm bounds are not proved"
    if not (rb1 >= 0 and rb2 >= 0 and rb1 * rb1 >= sq(layer.b1) and rb2 * rb2 >= sq(layer.b2)):
        return f"{where}: the bias norm bounds are not proved"
    return sV, sA, sW1, sW2, rb1, rb2


def check_m(cert: dict, inst: Instance) -> CheckResult:
    """Re-verify an M certificate against its (validated) embedded instance."""
    d = inst.d
    if inst.layernorm:
        return CheckResult(False, "M's bounds assume no layer norm")
    if inst.mlp != "residual":
        return CheckResult(False, "M's margin needs residual MLPs")
    if any(len(head.V) != d for layer in inst.layers for head in layer.heads):
        return CheckResult(False, "a head's value map is not d x d")
    encoder = inst.attention == "encoder"
    claimed_layers = get(cert, "layers", "certificate")
    if not isinstance(claimed_layers, list) or len(claimed_layers) != len(inst.layers):
        raise MalformedCertificate("layers: one bound record per model layer expected")
    pair = get(cert, "pair", "certificate")
    if (not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(i, int) and not isinstance(i, bool)
                                                                 and 0 <= i < len(inst.dataset) for i in pair)
            or pair[0] == pair[1]):
        raise MalformedCertificate("pair: expected two distinct example indices")
    X = [inst.encoded(inst.dataset[i][0]) for i in pair]
    Y = [inst.dataset[i][1] for i in pair]
    if len(X[0]) != len(X[1]) or Y[0] != Y[1] or len(Y[0]) != len(X[0]):
        return CheckResult(False, "the pair needs equal lengths, equal targets, and targets at every position")
    B, r0, D, t = (rational(get(cert, k, "certificate"), k) for k in ("B", "r0", "D", "t"))
    claimed = rational(get(cert, "margin", "certificate"), "margin")
    if not (B > 0 and r0 >= 0 and D > 0 and t > 0 and t * t * d <= 1):
        return CheckResult(False, "B, r0, D, t are not consistent")
    if any(r0 * r0 < sq(x) for seq in X for x in seq):
        return CheckResult(False, "r0 does not bound the input tokens' norms")
    if D * D > max(sq([a - b for a, b in zip(x1, x2)]) for x1, x2 in zip(*X)):
        return CheckResult(False, "D exceeds the inputs' distance")
    radius = max(r0, B)
    lam, rho, up = Fraction(1), Fraction(0), Fraction(1)
    for li, (layer, bounds) in enumerate(zip(inst.layers, claimed_layers)):
        proved = _layer(layer, li, bounds)
        if isinstance(proved, str):
            return CheckResult(False, proved)
        sV, sA, sW1, sW2, rb1, rb2 = proved
        alpha = sum((v * (1 + 4 * a * radius * radius) for v, a in zip(sV, sA)), Fraction(0))
        kappa = sW1 * sW2
        low = lam - alpha * max(rho, lam)
        if kappa >= 1 or low <= 0:
            return CheckResult(False, f"layer {li}: the lower Lipschitz chain fails (alpha {float(alpha):.4g}, "
                               f"kappa {float(kappa):.4g})")
        lam = (1 - kappa) * low
        if encoder:
            grow = alpha * max(rho, up)
            rho, up = (1 + kappa) * (rho + grow), (1 + kappa) * (up + grow)
        H = radius * (1 + sum(sV, Fraction(0)))
        radius = H + sW2 * (sW1 * H + rb1) + rb2
    margin = lam * D * t / 2
    if claimed > margin or claimed <= 0:
        return CheckResult(False, f"claimed margin {float(claimed):.6g} is not established ({float(margin):.6g})")
    return CheckResult(True, f"every prompt with token norms <= {float(B):.6g} keeps a max error >= "
                       f"{float(margin):.6g}", margin)
