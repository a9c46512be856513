"""Independent checker of L2 certificates (prompt length lower bound), in exact arithmetic.

Claim L2 (SPEC section 3), robust form. N target positions j with attention outputs
a_j = Att(x_j, Z_j) and needed outputs c_j. If a prompt of length m_p < N reached attention
errors e_j, the vectors c_j + e_j - (1 - lam_j) a_j would lie in span(V P), of dimension < N,
so some unit alpha gives M beta = -sum_j alpha_j e_j with M = [c_1..c_N, a_1..a_N] and
||beta||_2 >= 1; hence max_j ||e_j||_inf >= sigma_min(M) / sqrt(N d). The certificate proves
sigma_min(M) >= s - r: G - mu I is positive definite (exact LDL^T pivots) for G = M~^T M~, with
M~ the box midpoints, s^2 <= mu, and r^2 >= ||M - M~||_F^2 from the box widths; t^2 N d <= 1.
Then delta = (s - r) t at the attention output and (1 - kappa) delta - max_j ||r_j|| at the layer
output, for every prompt shorter than N. Shares no code with the encoder (verify/l2.py).
"""

from __future__ import annotations

from fractions import Fraction

from .check import CheckResult, MalformedCertificate, _get, _kappa, _mat, _mlp, _model, _mv, _rat, _softmax_box, _vec


def _positive_definite(G: list[list[Fraction]]) -> bool:
    """Exact LDL^T without pivoting: every pivot > 0 iff G (symmetric) is positive definite."""
    A = [row[:] for row in G]
    n = len(A)
    for k in range(n):
        if A[k][k] <= 0:
            return False
        for i in range(k + 1, n):
            f = A[i][k] / A[k][k]
            if f:
                A[i] = [a - f * b for a, b in zip(A[i], A[k])]
    return True


def check_l2(cert: dict) -> CheckResult:
    inst = _get(cert, "instance", "certificate")
    m = _model(inst)
    if "error" in m:
        return CheckResult(False, m["error"])
    d = m["d"]
    encoder = inst["model"].get("attention", "encoder") == "encoder"
    dataset = _get(inst, "dataset", "instance")
    positions = _get(cert, "positions", "certificate")
    data = _get(cert, "data", "certificate")
    if not isinstance(positions, list) or not isinstance(data, list) or len(positions) != len(data):
        raise MalformedCertificate("positions/data: expected lists of equal length")
    N = len(positions)
    if N < 2 or 2 * N > d or len({tuple(p) for p in positions}) != N:
        return CheckResult(False, f"need 2 <= N distinct positions with 2N <= d (N={N}, d={d})")
    mu, s, r, t = (_rat(_get(cert, k, "certificate"), k) for k in ("mu", "s", "r", "t"))
    delta = _rat(_get(cert, "delta", "certificate"), "delta")
    claimed = _rat(_get(cert, "margin", "certificate"), "margin")
    columns_c, columns_a, width2, residual = [], [], Fraction(0), Fraction(0)
    for idx, (pos, entry) in enumerate(zip(positions, data)):
        if (not isinstance(pos, list) or len(pos) != 2 or not all(isinstance(v, int) for v in pos)
                or not 0 <= pos[0] < len(dataset)):
            raise MalformedCertificate(f"positions[{idx}]: expected [example, position]")
        e, p = pos
        X = _mat(_get(dataset[e], "X", "dataset"), f"dataset[{e}].X", d)
        Y = _mat(_get(dataset[e], "Y", "dataset"), f"dataset[{e}].Y", d)
        row = p - (len(X) - len(Y))
        if not 0 <= row < len(Y):
            return CheckResult(False, f"position {pos} has no target")
        if m["E"] is not None:
            X = [[a + b for a, b in zip(x, pe)] for x, pe in zip(X, m["E"])]
        visible = X if encoder else X[: p + 1]
        query = _mv(m["Wq"], X[p])
        logits = [sum((a * b for a, b in zip(_mv(m["Wk"], x), query)), Fraction(0)) for x in visible]
        s_lo, s_hi = _softmax_box(logits)
        vals = [_mv(m["V"], x) for x in visible]
        c = _vec(_get(entry, "c", "data"), f"data[{idx}].c", d)
        a_lo = _vec(_get(entry, "a_lo", "data"), f"data[{idx}].a_lo", d)
        a_hi = _vec(_get(entry, "a_hi", "data"), f"data[{idx}].a_hi", d)
        for k in range(d):
            lo = sum((min(sl * v[k], sh * v[k]) for sl, sh, v in zip(s_lo, s_hi, vals)), Fraction(0))
            hi = sum((max(sl * v[k], sh * v[k]) for sl, sh, v in zip(s_lo, s_hi, vals)), Fraction(0))
            if not (a_lo[k] <= lo and hi <= a_hi[k]):
                return CheckResult(False, f"position {pos}: the box does not enclose a_j (coordinate {k})")
        out = _mlp(m, [a + b for a, b in zip(X[p], c)])
        residual = max(residual, max(abs(o - y) for o, y in zip(out, Y[row])))
        columns_c.append(c)
        columns_a.append([(lo + hi) / 2 for lo, hi in zip(a_lo, a_hi)])
        width2 += sum(((hi - lo) / 2) ** 2 for lo, hi in zip(a_lo, a_hi))
    cols = columns_c + columns_a
    G = [[sum((a * b for a, b in zip(ci, cj)), Fraction(0)) for cj in cols] for ci in cols]
    if not (mu > 0 and s >= 0 and s * s <= mu and r >= 0 and r * r >= width2 and t > 0 and t * t * N * d <= 1):
        return CheckResult(False, "the bounds mu, s, r, t are not consistent")
    if not _positive_definite([[g - (mu if i == j else 0) for j, g in enumerate(row)] for i, row in enumerate(G)]):
        return CheckResult(False, "G - mu I is not positive definite")
    if not (s > r and 0 < delta <= (s - r) * t):
        return CheckResult(False, "delta exceeds (s - r) t")
    kappa = _kappa(m)
    if kappa >= 1:
        return CheckResult(False, "the MLP branch bound kappa is not below 1")
    margin = (1 - kappa) * delta - residual
    if margin <= 0 or claimed > margin:
        return CheckResult(False, f"claimed margin {float(claimed):.6g} is not established ({float(margin):.6g})")
    return CheckResult(True, f"prompts shorter than {N} keep an error >= {float(margin):.6g}", margin)
