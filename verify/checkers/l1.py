"""Independent checker of L1 / L1+ certificates, in exact rational arithmetic.

It imports neither z3 nor the encoder nor any other peftaudit module: it parses the
certificate's embedded instance itself, encloses exp with its own Taylor bounds, recomputes
every derived number it relies on, and checks the Farkas identity of the linear system below.

The system (SPEC section 4). Members i share the last input token x_0; V = Wo Wv (or Wv);
a_i = Att(x_0, X_i) lies in the box [a_lo_i, a_hi_i]; c_i is the attention output the target
needs (approximately); delta is the radius. Variables: v (u = V v), and per member s_i >= 0
(s_i = t_i - 1 = 1/lam_i - 1), w_i = t_i z_i, q_i = s_i a_i; for L1+ also sigma = 1/S_P.

    E_i   : V v - w_i + q_i = 0                      (multiplier free)
    Whi_i : w_i - s_i (c_i + delta) <= c_i + delta   (>= 0)
    Wlo_i : -w_i + s_i (c_i - delta) <= delta - c_i  (>= 0)
    Qhi_i : q_i - s_i a_hi_i <= 0                    (>= 0)
    Qlo_i : -q_i + s_i a_lo_i <= 0                   (>= 0)
    S_i   : -s_i <= 0                                (>= 0)
  With the shared normaliser (L1+, or an L1 certificate with "shared_normaliser": true;
  s_i = sigma S_i with S_i in [S_lo_i, S_hi_i], S_i = sum_j exp(logit_ij - shift)):
    Mhi_i : s_i - sigma S_hi_i <= 0                  (>= 0)
    Mlo_i : -s_i + sigma S_lo_i <= 0                 (>= 0)
    N     : -sigma <= 0                              (>= 0)

Multipliers y with A^T y = 0 and b^T y < 0 prove the system infeasible: for every prompt of
every length some member's attention output z_i is farther than delta from c_i (max norm).
With the residual MLP's branch Lipschitz bound kappa < 1 and r_i = MLP(x_0 + c_i) - y_i
computed exactly, the layer-output error is then > min_i (1 - kappa) delta - ||r_i||; a
certificate with cell trees of the delta-spheres ("sphere", verify/checkers/l1_sphere.py)
replaces (1 - kappa) delta by the larger proven rho_i of member i.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from .exact import BeyondLimits, attention_box, exp_bounds, get, head_logits, matvec, mtv, vec
from .instance import Instance, Layer
from .l1_sphere import output_margin
from .reading import MalformedCertificate, rational
from .result import CheckResult


def single_layer_problem(inst: Instance) -> str | None:
    """Why the single-layer claims (L1, L1+, L2) do not apply to this model, or None."""
    if len(inst.layers) != 1:
        return "the claim needs a single-layer model"
    if len(inst.layers[0].heads) != 1:
        return "the claim needs a single attention head"
    if inst.layernorm:
        return "the claim assumes no layer norm"
    if inst.mlp != "residual":
        return "the margin needs a residual MLP (inverse-Lipschitz bound 1 - kappa)"
    if len(inst.layers[0].heads[0].V) != inst.d:
        return "value map is not d x d"
    return None


def mlp(layer: Layer, h: list[Fraction]) -> list[Fraction]:
    """The residual MLP of one token, exactly."""
    pre = [a + b for a, b in zip(matvec(layer.W1, h), layer.b1)]
    act = [x if x > 0 else Fraction(0) for x in pre]
    return [hi + a + b for hi, a, b in zip(h, matvec(layer.W2, act), layer.b2)]


def kappa(layer: Layer) -> Fraction:
    """|| |W2| |W1| ||_inf: the residual MLP branch's max-norm Lipschitz bound."""
    w1_row_sums = [sum((abs(x) for x in row), Fraction(0)) for row in layer.W1]
    return max(sum((abs(w) * r for w, r in zip(row, w1_row_sums)), Fraction(0)) for row in layer.W2)


def _farkas(mult: Any, rows: list, V: list, key: list, delta: Fraction, shared: bool,
            piece: tuple | None) -> str | None:
    """None when the multipliers prove the system of the module docstring infeasible, else why.

    piece = (z_lo, z_hi, sigma_max) adds, for L1+, the rows -<key, v> <= -z_lo (Zlo),
    <key, v> <= z_hi (Zhi) and sigma <= sigma_max (Sig): the bound sigma <= exp(-<key, v>) of
    SPEC section 2 (with v the softmax-weighted prompt mean, log S_P >= <key, v>) on that piece.
    """
    d = len(V)
    K = len(rows)

    def fam(name: str, i: int, n: int | None) -> Any:
        got = get(mult, name, "multipliers")
        if not isinstance(got, list) or len(got) != K:
            raise MalformedCertificate(f"multipliers.{name}: expected one entry per member")
        return vec(got[i], f"multipliers.{name}[{i}]", n) if n else rational(got[i], f"multipliers.{name}[{i}]")

    col_v = [Fraction(0)] * d
    col_sigma = Fraction(0)
    rhs = Fraction(0)
    for i, (c, a_lo, a_hi, S_lo, S_hi) in enumerate(rows):
        yE, yWhi, yWlo = fam("E", i, d), fam("Whi", i, d), fam("Wlo", i, d)
        yQhi, yQlo, yS = fam("Qhi", i, d), fam("Qlo", i, d), fam("S", i, None)
        nonneg = yWhi + yWlo + yQhi + yQlo + [yS]
        col_s = -yS
        if shared:
            yMhi, yMlo = fam("Mhi", i, None), fam("Mlo", i, None)
            nonneg += [yMhi, yMlo]
            col_s += yMhi - yMlo
            col_sigma += -S_hi * yMhi + S_lo * yMlo
        if any(v < 0 for v in nonneg):
            return f"member {i}: a multiplier of an inequality is negative"
        for k in range(d):
            if -yE[k] + yWhi[k] - yWlo[k] != 0:
                return f"member {i}: column w[{k}] does not cancel"
            if yE[k] + yQhi[k] - yQlo[k] != 0:
                return f"member {i}: column q[{k}] does not cancel"
            col_s += (-(c[k] + delta) * yWhi[k] + (c[k] - delta) * yWlo[k]
                      - a_hi[k] * yQhi[k] + a_lo[k] * yQlo[k])
            rhs += (c[k] + delta) * yWhi[k] + (delta - c[k]) * yWlo[k]
        if col_s != 0:
            return f"member {i}: column s does not cancel"
        col_v = [a + b for a, b in zip(col_v, mtv(V, yE))]
    if piece is not None:
        z_lo, z_hi, cap = piece
        extras = {"Zlo": z_lo, "Zhi": z_hi, "Sig": cap}
        vals = {}
        for name, bound in extras.items():
            vals[name] = Fraction(0) if bound is None else rational(get(mult, name, "multipliers"), f"multipliers.{name}")
            if vals[name] < 0:
                return f"multiplier {name} is negative"
        col_v = [a + kk * (vals["Zhi"] - vals["Zlo"]) for a, kk in zip(col_v, key)]
        col_sigma += vals["Sig"]
        rhs += (z_hi or 0) * vals["Zhi"] - (z_lo or 0) * vals["Zlo"] + (cap or 0) * vals["Sig"]
    if any(v != 0 for v in col_v):
        return "column v does not cancel"
    if shared:
        yN = rational(get(mult, "N", "multipliers"), "multipliers.N")
        if yN < 0:
            return "multiplier N is negative"
        if col_sigma - yN != 0:
            return "column sigma does not cancel"
    if not rhs < 0:
        return "the combined right-hand side is not negative (no contradiction)"
    return None


def _shared_normaliser(cert: dict) -> bool:
    """An L1 certificate may use the L1+ system (the same statement, a tighter relaxation)."""
    flag = cert.get("shared_normaliser", False)
    if not isinstance(flag, bool):
        raise MalformedCertificate("shared_normaliser: expected true or false")
    return flag


def check_l1(cert: dict, inst: Instance) -> CheckResult:
    """Re-verify an L1 or L1+ certificate against its (validated) embedded instance."""
    shared = cert["claim"] == "L1+" or _shared_normaliser(cert)
    why = single_layer_problem(inst)
    if why:
        return CheckResult(False, why)
    d, layer = inst.d, inst.layers[0]
    head = layer.heads[0]
    V = head.V
    members = get(cert, "members", "certificate")
    if (not isinstance(members, list) or len(members) < 2
            or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(inst.dataset) for i in members)
            or len(set(members)) != len(members)):
        raise MalformedCertificate("members: expected at least two distinct example indices")
    delta = rational(get(cert, "delta", "certificate"), "delta")
    claimed = rational(get(cert, "margin", "certificate"), "margin")
    shift = rational(cert.get("logit_shift", 0), "logit_shift")
    data = get(cert, "data", "certificate")
    if not isinstance(data, list) or len(data) != len(members):
        raise MalformedCertificate("data: expected one entry per member")
    if delta < 0:
        return CheckResult(False, "delta is negative")
    # 1. the problem data: tokens after positional encoding, boxes, normalisers, residuals
    x0 = None
    rows = []  # per member: (c, a_lo, a_hi, S_lo, S_hi)
    centres, residuals = [], []  # per member: P_i = x_0 + c_i and ||MLP(P_i) - y_i||_inf
    for idx, (i, entry) in enumerate(zip(members, data)):
        X_raw, Y = inst.dataset[i]
        X = inst.encoded(X_raw)
        if x0 is None:
            x0 = X[-1]
        elif X[-1] != x0:
            return CheckResult(False, f"example {i} does not share the last token")
        c = vec(get(entry, "c", "data"), f"data[{idx}].c", d)
        a_lo = vec(get(entry, "a_lo", "data"), f"data[{idx}].a_lo", d)
        a_hi = vec(get(entry, "a_hi", "data"), f"data[{idx}].a_hi", d)
        # a_i = V X^T softmax(logits): the checker's own box must lie inside the stored one
        logits = head_logits(head, x0, X)
        try:
            lo, hi = attention_box(V, logits, X)
            if shared:
                e = [exp_bounds(l - shift) for l in logits]
        except BeyondLimits as exc:
            raise MalformedCertificate(f"member {i}: {exc}") from None
        for k in range(d):
            if not (a_lo[k] <= lo[k] and hi[k] <= a_hi[k]):
                return CheckResult(False, f"member {i}: the attention box does not enclose a_i (coordinate {k})")
        centres.append([a + b for a, b in zip(x0, c)])
        residuals.append(max(abs(o - t) for o, t in zip(mlp(layer, centres[-1]), Y[-1])))
        S_lo = S_hi = None
        if shared:
            S_lo = rational(get(entry, "S_lo", "data"), f"data[{idx}].S_lo")
            S_hi = rational(get(entry, "S_hi", "data"), f"data[{idx}].S_hi")
            if not (S_lo <= sum((lo for lo, _ in e), Fraction(0)) and sum((hi for _, hi in e), Fraction(0)) <= S_hi):
                return CheckResult(False, f"member {i}: [S_lo, S_hi] does not enclose the normaliser")
        rows.append((c, a_lo, a_hi, S_lo, S_hi))
    key = mtv(head.Wk, matvec(head.Wq, x0))  # logit of a prompt token p is <p, key>
    # 2. infeasibility: one system, or (L1+) one per piece of the z = <key, v> line
    pieces = cert.get("pieces")
    if pieces is None:
        why = _farkas(get(cert, "multipliers", "certificate"), rows, V, key, delta, shared, None)
        if why:
            return CheckResult(False, why)
    else:
        if not shared or not isinstance(pieces, list) or not pieces:
            raise MalformedCertificate("pieces: expected a non-empty list (with the shared normaliser only)")
        bounds = []
        for j, piece in enumerate(pieces):
            ends = [None if get(piece, k, f"pieces[{j}]") is None else rational(piece[k], f"pieces[{j}].{k}")
                    for k in ("z_lo", "z_hi", "sigma_max")]
            z_lo, z_hi, cap = ends
            bounds.append((z_lo, z_hi))
            if cap is not None:  # sigma' <= exp(shift - z) <= exp(shift - z_lo) on this piece
                try:
                    if z_lo is None or cap < exp_bounds(shift - z_lo)[1]:
                        return CheckResult(False, f"piece {j}: sigma_max is not a proven bound on exp(shift - z_lo)")
                except BeyondLimits as exc:
                    raise MalformedCertificate(f"piece {j}: {exc}") from None
            why = _farkas(get(piece, "multipliers", f"pieces[{j}]"), rows, V, key, delta, shared, (z_lo, z_hi, cap))
            if why:
                return CheckResult(False, f"piece {j}: {why}")
        if bounds[0][0] is not None or bounds[-1][1] is not None or any(
                hi is None or lo is None or hi != lo for (_, hi), (lo, _) in zip(bounds, bounds[1:])):
            return CheckResult(False, "the pieces do not cover the whole z line")
    # margin at the layer output
    k = kappa(layer)
    if k >= 1:
        return CheckResult(False, "the MLP branch bound kappa is not below 1")
    margin, how = output_margin(layer, k, delta, centres, residuals, cert.get("sphere"))
    if margin <= 0:
        return CheckResult(False, "no positive margin at the layer output")
    if claimed > margin:
        return CheckResult(False, f"claimed margin {float(claimed):.6g} exceeds the verified {float(margin):.6g}", margin)
    return CheckResult(True, f"infeasible at delta={float(delta):.6g}; layer-output margin {float(margin):.6g} "
                       f"(through {how})", margin)
