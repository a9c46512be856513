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
  L1+ only (s_i = sigma S_i with S_i in [S_lo_i, S_hi_i], S_i = sum_j exp(logit_ij - shift)):
    Mhi_i : s_i - sigma S_hi_i <= 0                  (>= 0)
    Mlo_i : -s_i + sigma S_lo_i <= 0                 (>= 0)
    N     : -sigma <= 0                              (>= 0)

Multipliers y with A^T y = 0 and b^T y < 0 prove the system infeasible: for every prompt of
every length some member's attention output z_i is farther than delta from c_i (max norm).
With the residual MLP's branch Lipschitz bound kappa < 1 and r_i = MLP(x_0 + c_i) - y_i
computed exactly, the layer-output error is then > (1 - kappa) delta - max_i ||r_i||.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

CERT_FORMAT = "peftaudit.certificate/1"
BITS = 300  # working precision of the exp enclosures (far tighter than any encoder's)


class MalformedCertificate(ValueError):
    """The certificate is not a well-formed certificate (as opposed to a false one)."""


@dataclass(frozen=True)
class CheckResult:
    valid: bool
    reason: str
    margin: Fraction | None = None  # the layer-output margin the checker established


# ------------------------------------------------------------------ parsing

def _rat(x: Any, where: str) -> Fraction:
    if isinstance(x, bool):
        raise MalformedCertificate(f"{where}: expected a number, got {x!r}")
    if isinstance(x, int):
        return Fraction(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            raise MalformedCertificate(f"{where}: expected a finite number, got {x!r}")
        return Fraction(x)  # the exact binary64 value
    if isinstance(x, str):
        try:
            return Fraction(x)
        except (ValueError, ZeroDivisionError):
            raise MalformedCertificate(f"{where}: expected a rational 'p/q', got {x!r}") from None
    raise MalformedCertificate(f"{where}: expected a number, got {type(x).__name__}")


def _vec(x: Any, where: str, n: int | None = None) -> list[Fraction]:
    if not isinstance(x, list) or (n is not None and len(x) != n):
        raise MalformedCertificate(f"{where}: expected a list of {n if n is not None else 'some'} numbers")
    return [_rat(v, f"{where}[{i}]") for i, v in enumerate(x)]


def _mat(x: Any, where: str, cols: int | None = None) -> list[list[Fraction]]:
    if not isinstance(x, list) or not x:
        raise MalformedCertificate(f"{where}: expected a non-empty list of rows")
    return [_vec(row, f"{where}[{i}]", cols) for i, row in enumerate(x)]


def _get(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise MalformedCertificate(f"{where}: missing key {key!r}")
    return obj[key]


# ------------------------------------------------------------------ arithmetic

def _mv(M: list[list[Fraction]], x: list[Fraction]) -> list[Fraction]:
    out = []
    for row in M:
        acc = Fraction(0)
        for a, b in zip(row, x):
            acc += a * b
        out.append(acc)
    return out


def _mtv(M: list[list[Fraction]], y: list[Fraction]) -> list[Fraction]:
    """M^T y."""
    out = [Fraction(0)] * len(M[0])
    for row, yi in zip(M, y):
        if yi:
            out = [o + a * yi for o, a in zip(out, row)]
    return out


def _floor(x: Fraction) -> Fraction:
    return Fraction(math.floor(x * (1 << BITS)), 1 << BITS)


def _ceil(x: Fraction) -> Fraction:
    return Fraction(math.ceil(x * (1 << BITS)), 1 << BITS)


def _exp_nonneg(y: Fraction) -> tuple[Fraction, Fraction]:
    """lo <= exp(y) <= hi for y >= 0: Taylor terms rounded down / up, then repeated squaring."""
    k = 0
    while y > Fraction(1, 2) * (1 << k):
        k += 1
    x = y / (1 << k)  # 0 <= x <= 1/2
    x_lo, x_hi = _floor(x), _ceil(x)
    lo = hi = Fraction(1)
    t_lo = t_hi = Fraction(1)
    n = 0
    while True:
        n += 1
        t_lo = _floor(t_lo * x_lo / n)
        t_hi = _ceil(t_hi * x_hi / n)
        lo += t_lo
        hi += t_hi
        if t_hi < Fraction(1, 1 << (BITS - 20)):
            break
    hi += 2 * _ceil(t_hi * x_hi / (n + 1))  # tail sum_{m>n} x^m/m! <= 2 x^(n+1)/(n+1)! for x <= 1/2
    for _ in range(k):
        lo, hi = _floor(lo * lo), _ceil(hi * hi)
    return lo, hi


def exp_bounds(r: Fraction) -> tuple[Fraction, Fraction]:
    """Rigorous rational lo <= exp(r) <= hi."""
    if r >= 0:
        return _exp_nonneg(r)
    lo, hi = _exp_nonneg(-r)
    return _floor(1 / hi), _ceil(1 / lo)


def _softmax_box(logits: list[Fraction]) -> tuple[list[Fraction], list[Fraction]]:
    if all(l == logits[0] for l in logits):
        w = Fraction(1, len(logits))
        return [w] * len(logits), [w] * len(logits)
    top = max(logits)
    e = [exp_bounds(l - top) for l in logits]
    total_lo = sum((lo for lo, _ in e), Fraction(0))
    total_hi = sum((hi for _, hi in e), Fraction(0))
    return [_floor(lo / total_hi) for lo, _ in e], [_ceil(hi / total_lo) for _, hi in e]


# ------------------------------------------------------------------ the check

def _model(inst: Any) -> dict:
    model = _get(inst, "model", "instance")
    d = _get(model, "d", "instance.model")
    if not isinstance(d, int) or isinstance(d, bool) or d < 1:
        raise MalformedCertificate(f"instance.model.d: expected a positive integer, got {d!r}")
    layers = _get(model, "layers", "instance.model")
    if not isinstance(layers, list) or len(layers) != 1:
        return {"error": "the claim needs a single-layer model"}
    heads = _get(layers[0], "heads", "instance.model.layers[0]")
    if not isinstance(heads, list) or len(heads) != 1:
        return {"error": "the claim needs a single attention head"}
    if model.get("layernorm", False):
        return {"error": "the claim assumes no layer norm"}
    if model.get("mlp", "residual") != "residual":
        return {"error": "the margin needs a residual MLP (inverse-Lipschitz bound 1 - kappa)"}
    head, layer = heads[0], layers[0]
    Wq = _mat(_get(head, "Wq", "head"), "Wq", d)
    Wk = _mat(_get(head, "Wk", "head"), "Wk", d)
    Wv = _mat(_get(head, "Wv", "head"), "Wv", d)
    V = Wv
    if "Wo" in head:
        Wo = _mat(head["Wo"], "Wo", len(Wv))
        V = [[sum((Wo[r][k] * Wv[k][c] for k in range(len(Wv))), Fraction(0)) for c in range(d)] for r in range(d)]
    if len(V) != d:
        return {"error": "value map is not d x d"}
    W1 = _mat(_get(layer, "W1", "layer"), "W1", d)
    W2 = _mat(_get(layer, "W2", "layer"), "W2", len(W1))
    pos = model.get("positional")
    return {"d": d, "Wq": Wq, "Wk": Wk, "V": V, "W1": W1, "b1": _vec(_get(layer, "b1", "layer"), "b1", len(W1)),
            "W2": W2, "b2": _vec(_get(layer, "b2", "layer"), "b2", d),
            "E": _mat(pos, "positional", d) if pos is not None else None}


def _mlp(m: dict, h: list[Fraction]) -> list[Fraction]:
    pre = [a + b for a, b in zip(_mv(m["W1"], h), m["b1"])]
    act = [x if x > 0 else Fraction(0) for x in pre]
    return [hi + a + b for hi, a, b in zip(h, _mv(m["W2"], act), m["b2"])]


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
        got = _get(mult, name, "multipliers")
        if not isinstance(got, list) or len(got) != K:
            raise MalformedCertificate(f"multipliers.{name}: expected one entry per member")
        return _vec(got[i], f"multipliers.{name}[{i}]", n) if n else _rat(got[i], f"multipliers.{name}[{i}]")

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
        col_v = [a + b for a, b in zip(col_v, _mtv(V, yE))]
    if piece is not None:
        z_lo, z_hi, cap = piece
        extras = {"Zlo": z_lo, "Zhi": z_hi, "Sig": cap}
        vals = {}
        for name, bound in extras.items():
            vals[name] = Fraction(0) if bound is None else _rat(_get(mult, name, "multipliers"), f"multipliers.{name}")
            if vals[name] < 0:
                return f"multiplier {name} is negative"
        col_v = [a + kk * (vals["Zhi"] - vals["Zlo"]) for a, kk in zip(col_v, key)]
        col_sigma += vals["Sig"]
        rhs += (z_hi or 0) * vals["Zhi"] - (z_lo or 0) * vals["Zlo"] + (cap or 0) * vals["Sig"]
    if any(v != 0 for v in col_v):
        return "column v does not cancel"
    if shared:
        yN = _rat(_get(mult, "N", "multipliers"), "multipliers.N")
        if yN < 0:
            return "multiplier N is negative"
        if col_sigma - yN != 0:
            return "column sigma does not cancel"
    if not rhs < 0:
        return "the combined right-hand side is not negative (no contradiction)"
    return None


def _kappa(m: dict) -> Fraction:
    """|| |W2| |W1| ||_inf: the residual MLP branch's max-norm Lipschitz bound."""
    w1_row_sums = [sum((abs(x) for x in row), Fraction(0)) for row in m["W1"]]
    return max(sum((abs(w) * r for w, r in zip(row, w1_row_sums)), Fraction(0)) for row in m["W2"])


def check_certificate(cert: Any) -> CheckResult:
    """Re-verify a certificate. Raises MalformedCertificate when it is not one."""
    if not isinstance(cert, dict) or cert.get("format") != CERT_FORMAT:
        raise MalformedCertificate(f"format: expected {CERT_FORMAT!r}")
    claim = _get(cert, "claim", "certificate")
    if claim == "L2":
        from .check_l2 import check_l2
        return check_l2(cert)
    if claim == "M":
        from .check_m import check_m
        return check_m(cert)
    if claim not in ("L1", "L1+"):
        raise MalformedCertificate(f"claim: expected 'L1', 'L1+', 'L2' or 'M', got {claim!r}")
    shared = claim == "L1+"
    m = _model(_get(cert, "instance", "certificate"))
    if "error" in m:
        return CheckResult(False, m["error"])
    d = m["d"]
    dataset = _get(cert["instance"], "dataset", "instance")
    members = _get(cert, "members", "certificate")
    if (not isinstance(members, list) or len(members) < 2 or len(set(members)) != len(members)
            or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(dataset) for i in members)):
        raise MalformedCertificate("members: expected at least two distinct example indices")
    delta = _rat(_get(cert, "delta", "certificate"), "delta")
    claimed = _rat(_get(cert, "margin", "certificate"), "margin")
    shift = _rat(cert.get("logit_shift", 0), "logit_shift")
    data = _get(cert, "data", "certificate")
    if not isinstance(data, list) or len(data) != len(members):
        raise MalformedCertificate("data: expected one entry per member")

    if delta < 0:
        return CheckResult(False, "delta is negative")
    # 1. the problem data: tokens after positional encoding, boxes, normalisers, residuals
    x0 = None
    rows = []  # per member: (c, a_lo, a_hi, S_lo, S_hi)
    residual = Fraction(0)
    for idx, (i, entry) in enumerate(zip(members, data)):
        X = _mat(_get(dataset[i], "X", f"dataset[{i}]"), f"dataset[{i}].X", d)
        Y = _mat(_get(dataset[i], "Y", f"dataset[{i}]"), f"dataset[{i}].Y", d)
        if m["E"] is not None:
            if len(X) > len(m["E"]):
                return CheckResult(False, "more tokens than positional rows")
            X = [[a + b for a, b in zip(x, e)] for x, e in zip(X, m["E"])]
        last = X[-1]
        if x0 is None:
            x0 = last
        elif last != x0:
            return CheckResult(False, f"example {i} does not share the last token")
        y = Y[-1]
        c = _vec(_get(entry, "c", "data"), f"data[{idx}].c", d)
        a_lo = _vec(_get(entry, "a_lo", "data"), f"data[{idx}].a_lo", d)
        a_hi = _vec(_get(entry, "a_hi", "data"), f"data[{idx}].a_hi", d)
        # a_i = V X^T softmax(logits): the checker's own box must lie inside the stored one
        query = _mv(m["Wq"], x0)
        logits = [sum((a * b for a, b in zip(_mv(m["Wk"], x), query)), Fraction(0)) for x in X]
        s_lo, s_hi = _softmax_box(logits)
        vals = [_mv(m["V"], x) for x in X]
        for k in range(d):
            lo = sum((min(sl * v[k], sh * v[k]) for sl, sh, v in zip(s_lo, s_hi, vals)), Fraction(0))
            hi = sum((max(sl * v[k], sh * v[k]) for sl, sh, v in zip(s_lo, s_hi, vals)), Fraction(0))
            if not (a_lo[k] <= lo and hi <= a_hi[k]):
                return CheckResult(False, f"member {i}: the attention box does not enclose a_i (coordinate {k})")
        r = [o - t for o, t in zip(_mlp(m, [a + b for a, b in zip(x0, c)]), y)]
        residual = max(residual, max(abs(v) for v in r))
        S_lo = S_hi = None
        if shared:
            S_lo = _rat(_get(entry, "S_lo", "data"), f"data[{idx}].S_lo")
            S_hi = _rat(_get(entry, "S_hi", "data"), f"data[{idx}].S_hi")
            e = [exp_bounds(l - shift) for l in logits]
            if not (S_lo <= sum((lo for lo, _ in e), Fraction(0)) and sum((hi for _, hi in e), Fraction(0)) <= S_hi):
                return CheckResult(False, f"member {i}: [S_lo, S_hi] does not enclose the normaliser")
        rows.append((c, a_lo, a_hi, S_lo, S_hi))
    key = _mtv(m["Wk"], _mv(m["Wq"], x0))  # logit of a prompt token p is <p, key>
    # 2. infeasibility: one system, or (L1+) one per piece of the z = <key, v> line
    pieces = cert.get("pieces")
    if pieces is None:
        why = _farkas(_get(cert, "multipliers", "certificate"), rows, m["V"], key, delta, shared, None)
        if why:
            return CheckResult(False, why)
    else:
        if not shared or not isinstance(pieces, list) or not pieces:
            raise MalformedCertificate("pieces: expected a non-empty list (L1+ only)")
        bounds = []
        for j, piece in enumerate(pieces):
            z_lo = None if _get(piece, "z_lo", f"pieces[{j}]") is None else _rat(piece["z_lo"], f"pieces[{j}].z_lo")
            z_hi = None if _get(piece, "z_hi", f"pieces[{j}]") is None else _rat(piece["z_hi"], f"pieces[{j}].z_hi")
            cap = None if _get(piece, "sigma_max", f"pieces[{j}]") is None else _rat(piece["sigma_max"], "sigma_max")
            bounds.append((z_lo, z_hi))
            if cap is not None:  # sigma' <= exp(shift - z) <= exp(shift - z_lo) on this piece
                if z_lo is None or cap < exp_bounds(shift - z_lo)[1]:
                    return CheckResult(False, f"piece {j}: sigma_max is not a proven bound on exp(shift - z_lo)")
            why = _farkas(_get(piece, "multipliers", f"pieces[{j}]"), rows, m["V"], key, delta, shared,
                          (z_lo, z_hi, cap))
            if why:
                return CheckResult(False, f"piece {j}: {why}")
        if bounds[0][0] is not None or bounds[-1][1] is not None or any(
                hi is None or lo is None or hi != lo for (_, hi), (lo, _) in zip(bounds, bounds[1:])):
            return CheckResult(False, "the pieces do not cover the whole z line")
    # margin at the layer output
    kappa = _kappa(m)
    if kappa >= 1:
        return CheckResult(False, "the MLP branch bound kappa is not below 1")
    margin = (1 - kappa) * delta - residual
    if margin <= 0:
        return CheckResult(False, "no positive margin at the layer output")
    if claimed > margin:
        return CheckResult(False, f"claimed margin {float(claimed):.6g} exceeds the verified {float(margin):.6g}", margin)
    return CheckResult(True, f"infeasible at delta={float(delta):.6g}; layer-output margin {float(margin):.6g}", margin)


def check_file(path: str | Path) -> CheckResult:
    """Load a certificate file and check it; MalformedCertificate for unreadable files."""
    try:
        cert = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedCertificate(f"{path}: not a readable JSON certificate ({exc})") from None
    return check_certificate(cert)
