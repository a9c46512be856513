"""Independent checker of L2 certificates (prompt length lower bound), in exact arithmetic.

Claim L2 (SPEC section 3), robust form. N target positions j with attention outputs
a_j = Att(x_j, Z_j) and needed outputs c_j. If a prompt of length m_p < N reached attention
errors e_j, the vectors c_j + e_j - (1 - lam_j) a_j would lie in span(V P), of dimension < N,
so some unit alpha gives M beta = -sum_j alpha_j e_j with M = [c_1..c_N, a_1..a_N] and
||beta||_2 >= 1; hence max_j ||e_j||_inf >= sigma_min(M) / sqrt(N d). The certificate proves
sigma_min(M) >= s - r: G - mu I is positive definite (exact LDL^T pivots) for G = M~^T M~, with
M~ the box midpoints, s^2 <= mu, and r^2 >= ||M - M~||_F^2 from the box widths; t^2 N d <= 1.
Then delta = (s - r) t at the attention output and (1 - kappa) delta - max_j ||r_j|| at the layer
output, for every prompt shorter than N. Two optional refinements: for N = 2, a cell tree
("pair_cells", l2_pair.py) proves the structured radius of one-token prompts, often far above the
Gram one (the Gram block may then be left out); and cell trees on each position's delta-sphere
("sphere", l1_sphere.py) replace (1 - kappa) delta by the MLP's proven local floor, per position.
Shares no code with the encoder (verify/encoders/l2.py).
"""

from __future__ import annotations

from fractions import Fraction

from .exact import BeyondLimits, attention_box, get, head_logits, positive_definite, vec
from .instance import Instance
from .l1 import kappa, mlp, single_layer_problem
from .l1_sphere import output_margin
from .l2_pair import pair_floor
from .reading import MalformedCertificate, rational
from .result import CheckResult


def check_l2(cert: dict, inst: Instance) -> CheckResult:
    """Re-verify an L2 certificate against its (validated) embedded instance."""
    why = single_layer_problem(inst)
    if why:
        return CheckResult(False, why)
    d, layer = inst.d, inst.layers[0]
    head = layer.heads[0]
    encoder = inst.attention == "encoder"
    positions = get(cert, "positions", "certificate")
    data = get(cert, "data", "certificate")
    if not isinstance(positions, list) or not isinstance(data, list) or len(positions) != len(data):
        raise MalformedCertificate("positions/data: expected lists of equal length")
    N = len(positions)
    for idx, pos in enumerate(positions):
        if (not isinstance(pos, list) or len(pos) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in pos)
                or not 0 <= pos[0] < len(inst.dataset)):
            raise MalformedCertificate(f"positions[{idx}]: expected [example, position]")
    if N < 2 or 2 * N > d or len({tuple(p) for p in positions}) != N:
        return CheckResult(False, f"need 2 <= N distinct positions with 2N <= d (N={N}, d={d})")
    delta = rational(get(cert, "delta", "certificate"), "delta")
    claimed = rational(get(cert, "margin", "certificate"), "margin")
    columns_c, columns_a, width2 = [], [], Fraction(0)
    boxes, centres, residuals = [], [], []  # per position: a_j's box, P_j = x_j + c_j, ||MLP(P_j) - y_j||
    for idx, (pos, entry) in enumerate(zip(positions, data)):
        e, p = pos
        X_raw, Y = inst.dataset[e]
        X = inst.encoded(X_raw)
        row = p - (len(X) - len(Y))
        if not (0 <= p < len(X) and 0 <= row < len(Y)):
            return CheckResult(False, f"position {pos} has no target")
        visible = X if encoder else X[: p + 1]
        logits = head_logits(head, X[p], visible)
        c = vec(get(entry, "c", "data"), f"data[{idx}].c", d)
        a_lo = vec(get(entry, "a_lo", "data"), f"data[{idx}].a_lo", d)
        a_hi = vec(get(entry, "a_hi", "data"), f"data[{idx}].a_hi", d)
        try:
            lo, hi = attention_box(head.V, logits, visible)
        except BeyondLimits as exc:
            raise MalformedCertificate(f"position {pos}: {exc}") from None
        for k in range(d):
            if not (a_lo[k] <= lo[k] and hi[k] <= a_hi[k]):
                return CheckResult(False, f"position {pos}: the box does not enclose a_j (coordinate {k})")
        centres.append([a + b for a, b in zip(X[p], c)])
        residuals.append(max(abs(o - y) for o, y in zip(mlp(layer, centres[-1]), Y[row])))
        boxes.append((a_lo, a_hi))
        columns_c.append(c)
        columns_a.append([(lo + hi) / 2 for lo, hi in zip(a_lo, a_hi)])
        width2 += sum(((hi - lo) / 2) ** 2 for lo, hi in zip(a_lo, a_hi))
    radius = Fraction(0)  # the attention radius proved: some position's error is at least this
    if "mu" in cert or "pair_cells" not in cert:
        why = _gram_radius(cert, columns_c + columns_a, width2, N, d)
        if isinstance(why, str):
            return CheckResult(False, why)
        radius = why
    if "pair_cells" in cert:
        if N != 2:
            raise MalformedCertificate("pair_cells: only for N = 2 positions")
        radius = max(radius, pair_floor(columns_c, boxes, cert["pair_cells"], "pair_cells"))
    if not 0 < delta <= radius:
        return CheckResult(False, f"delta exceeds the proved attention radius {float(radius):.6g}")
    k = kappa(layer)
    if k >= 1:
        return CheckResult(False, "the MLP branch bound kappa is not below 1")
    margin, how = output_margin(layer, k, delta, centres, residuals, cert.get("sphere"))
    if margin <= 0 or claimed > margin:
        return CheckResult(False, f"claimed margin {float(claimed):.6g} is not established ({float(margin):.6g})")
    return CheckResult(True, f"prompts shorter than {N} keep an error >= {float(margin):.6g} (through {how})",
                       margin, {"N": N, "prompt_params_needed": N * d})


def _gram_radius(cert: dict, cols: list, width2: Fraction, N: int, d: int) -> Fraction | str:
    """(s - r) t from the Gram block (mu, s, r, t), re-proved; or why it does not hold."""
    mu, s, r, t = (rational(get(cert, k, "certificate"), k) for k in ("mu", "s", "r", "t"))
    G = [[sum((a * b for a, b in zip(ci, cj)), Fraction(0)) for cj in cols] for ci in cols]
    if not (mu > 0 and s >= 0 and s * s <= mu and r >= 0 and r * r >= width2 and t > 0 and t * t * N * d <= 1):
        return "the bounds mu, s, r, t are not consistent"
    if not positive_definite([[g - (mu if i == j else 0) for j, g in enumerate(row)] for i, row in enumerate(G)]):
        return "G - mu I is not positive definite"
    return max(s - r, Fraction(0)) * t
