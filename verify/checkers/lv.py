"""Independent checker of LV certificates (no update of W_v of rank <= r fits), in exact arithmetic.

Single layer, single head, residual MLP g(h) = h + W2 relu(W1 h + b1) + b2 with branch bound
kappa < 1 (max norm), one target per example (the last position). An update Delta of W_v alone
keeps the attention weights, so the state before the MLP is h_i = x_i + V u_i + Wo Delta u_i (V =
Wo Wv, or Wv without Wo) with u_i the frozen attention average. Let H_i = g^{-1}(Y_i) and
R = [H_i - x_i - V u_i]_i (d x N). Then [h_i - H_i]_i = Wo Delta U - R, a rank-<=r matrix minus R:

    max_i ||g(h_i) - Y_i||_inf >= (1 - kappa) max_i ||h_i - H_i||_inf
                               >= (1 - kappa) ||Wo Delta U - R||_F / sqrt(d N)
                               >= (1 - kappa) sigma_{r+1}(R) / sqrt(d N)        (Eckart-Young).

The certificate gives points H~_i; this checker encloses V u_i in a box (exact exp bounds), takes
R~ = [H~_i - x_i - box midpoint]_i, and bounds |R - R~| entrywise by rho_i + box radius, with
rho_i = ||g(H~_i) - Y_i||_inf / (1 - kappa) >= ||H~_i - H_i||_inf. It checks: Q^T (R~ R~^T - s^2 I) Q
positive definite (so sigma_{r+1}(R~) > s, Courant-Fischer), e^2 >= the enclosure error's squared
Frobenius norm (so sigma_{r+1}(R) >= s - e, Weyl), c^2 >= d N; the margin is
(1 - kappa)(s - e) / c. Shares no code with the encoder (verify/encoders/lv.py).
"""

from __future__ import annotations

from fractions import Fraction

from .exact import BeyondLimits, attention_box, get, head_logits, matvec, positive_definite, vec
from .instance import Instance
from .l1 import kappa, mlp, single_layer_problem
from .reading import MalformedCertificate, rational
from .result import CheckResult


def example_facts(inst: Instance, value_map: list, k: Fraction, H: list, n: int, claim: str
                  ) -> tuple[list, list, list, Fraction] | str:
    """Example n's exact facts (LV and LV-scale): its encoded last token x, a box [lo, hi] around
    value_map u (exact exp bounds), and rho = ||g(H~) - Y||_inf / (1 - kappa) >= ||H~ - g^{-1}(Y)||_inf;
    or why they cannot be had."""
    X_raw, Y = inst.dataset[n]
    if len(Y) != 1:
        return f"example {n} has {len(Y)} targets; {claim} speaks about the last position only"
    layer = inst.layers[0]
    X = inst.encoded(X_raw)
    try:
        lo, hi = attention_box(value_map, head_logits(layer.heads[0], X[-1], X), X)
    except BeyondLimits as exc:
        return str(exc)
    return X[-1], lo, hi, max(abs(o - t) for o, t in zip(mlp(layer, H), Y[0])) / (1 - k)


def check_lv(cert: dict, inst: Instance) -> CheckResult:
    """Re-verify an LV certificate against its (validated) embedded instance."""
    why = single_layer_problem(inst)
    if why:
        return CheckResult(False, why)
    d, layer = inst.d, inst.layers[0]
    head = layer.heads[0]
    N = len(inst.dataset)
    r = get(cert, "rank", "certificate")
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise MalformedCertificate("rank: expected an integer >= 0")
    if r + 1 > min(d, N):
        return CheckResult(False, f"rank {r} + 1 exceeds min(d, N) = {min(d, N)}")
    k = kappa(layer)
    if k >= 1:
        return CheckResult(False, f"the MLP branch bound kappa = {float(k):.6g} is not below 1")
    H_raw, Q_raw = get(cert, "H", "certificate"), get(cert, "Q", "certificate")
    if not isinstance(H_raw, list) or len(H_raw) != N:
        raise MalformedCertificate(f"H: expected {N} points, one per example")
    if not isinstance(Q_raw, list) or len(Q_raw) != r + 1:
        raise MalformedCertificate(f"Q: expected {r + 1} vectors")
    H = [vec(h, f"H[{i}]", d) for i, h in enumerate(H_raw)]
    Q = [vec(q, f"Q[{j}]", d) for j, q in enumerate(Q_raw)]
    s, e, c = (rational(get(cert, key, "certificate"), key) for key in ("s", "e", "c"))
    claimed = rational(get(cert, "margin", "certificate"), "margin")
    columns, error2 = [], Fraction(0)
    for i, h in enumerate(H):
        facts = example_facts(inst, head.V, k, h, i, "LV")
        if isinstance(facts, str):
            return CheckResult(False, facts)
        last, lo, hi, rho = facts
        columns.append([hk - xk - (a + b) / 2 for hk, xk, a, b in zip(h, last, lo, hi)])
        error2 += sum(((rho + (b - a) / 2) ** 2 for a, b in zip(lo, hi)), Fraction(0))
    G = [[sum((col[a] * col[b] for col in columns), Fraction(0)) for b in range(d)] for a in range(d)]
    Gq = [matvec(G, q) for q in Q]
    M = [[sum((x * y for x, y in zip(qi, gq)), Fraction(0)) - s * s * sum((x * y for x, y in zip(qi, qj)), Fraction(0))
          for qj, gq in zip(Q, Gq)] for qi in Q]
    if s <= 0 or not positive_definite(M):
        return CheckResult(False, "Q^T (R R^T - s^2 I) Q is not positive definite: sigma_{r+1} >= s is not shown")
    if e < 0 or e * e < error2:
        return CheckResult(False, f"e^2 = {float(e * e):.6g} is below the enclosure error {float(error2):.6g}")
    if c <= 0 or c * c < d * N:
        return CheckResult(False, f"c^2 = {float(c * c):.6g} is below d N = {d * N}")
    margin = (1 - k) * (s - e) / c
    if margin <= 0:
        return CheckResult(False, f"no margin: s - e = {float(s - e):.6g}")
    if claimed > margin:
        return CheckResult(False, f"claimed margin {float(claimed):.6g} exceeds the checked {float(margin):.6g}")
    return CheckResult(True, f"every update of W_v of rank <= {r} keeps a last-position max error >= "
                             f"{float(margin):.6g} (sigma_{r + 1} >= {float(s - e):.6g}, kappa {float(k):.3g})",
                       margin=margin, facts={"rank": r, "threshold_rank_at_least": r + 1})
