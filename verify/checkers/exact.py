"""The checkers' small exact-arithmetic module: Fraction vectors and matrices, rigorous exp.

Nothing here is shared with the encoders: exp is enclosed by Taylor bounds on a 2^-BITS grid
with repeated squaring; exp of arguments below -EXP_LIMIT is enclosed by [0, exp(-EXP_LIMIT)]
(monotone, and cheap), and arguments above EXP_LIMIT are beyond the checker's limits.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

from .reading import MalformedCertificate, rational

BITS = 300          # working precision of the exp enclosures (far tighter than any encoder's)
EXP_LIMIT = 1000    # |argument| of exp the checker encloses by Taylor series

Vec = list[Fraction]
Mat = list[list[Fraction]]


def get(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise MalformedCertificate(f"{where}: missing key {key!r}")
    return obj[key]


def vec(x: Any, where: str, n: int | None = None) -> Vec:
    if not isinstance(x, list) or (n is not None and len(x) != n):
        raise MalformedCertificate(f"{where}: expected a list of {n if n is not None else 'some'} numbers")
    return [rational(v, f"{where}[{i}]") for i, v in enumerate(x)]


def matvec(M: Mat, x: Vec) -> Vec:
    return [sum((a * b for a, b in zip(row, x)), Fraction(0)) for row in M]


def mtv(M: Mat, y: Vec) -> Vec:
    """M^T y."""
    out = [Fraction(0)] * len(M[0])
    for row, yi in zip(M, y):
        if yi:
            out = [o + a * yi for o, a in zip(out, row)]
    return out


def mul(A: Mat, B: Mat) -> Mat:
    cols = list(zip(*B))
    return [[sum((a * b for a, b in zip(row, col)), Fraction(0)) for col in cols] for row in A]


def identity(n: int) -> Mat:
    return [[Fraction(int(i == j)) for j in range(n)] for i in range(n)]


def interval_matvec(M: Mat, lo: Vec, hi: Vec) -> tuple[Vec, Vec]:
    """Exact coordinatewise [min, max] of M h over the box lo <= h <= hi."""
    out_lo, out_hi = [], []
    for row in M:
        a = b = Fraction(0)
        for w, l, h in zip(row, lo, hi):
            a, b = (a + w * l, b + w * h) if w >= 0 else (a + w * h, b + w * l)
        out_lo.append(a)
        out_hi.append(b)
    return out_lo, out_hi


def transpose(A: Mat) -> Mat:
    return [list(c) for c in zip(*A)]


def sq(v: Vec) -> Fraction:
    return sum((x * x for x in v), Fraction(0))


def positive_definite(G: Mat) -> bool:
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


def _floor(x: Fraction) -> Fraction:
    return Fraction(math.floor(x * (1 << BITS)), 1 << BITS)


def _ceil(x: Fraction) -> Fraction:
    return Fraction(math.ceil(x * (1 << BITS)), 1 << BITS)


def _exp_nonneg(y: Fraction) -> tuple[Fraction, Fraction]:
    """lo <= exp(y) <= hi for 0 <= y <= EXP_LIMIT: Taylor terms rounded down / up, then squaring."""
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


class BeyondLimits(ValueError):
    """A quantity the checker will not enclose (too large an exp argument)."""


def exp_bounds(r: Fraction) -> tuple[Fraction, Fraction]:
    """Rigorous rational lo <= exp(r) <= hi."""
    if r > EXP_LIMIT:
        raise BeyondLimits(f"exp argument {float(r):.6g} exceeds the checker's limit {EXP_LIMIT}")
    if r >= 0:
        return _exp_nonneg(r)
    if r < -EXP_LIMIT:  # 0 < exp(r) < exp(-EXP_LIMIT)
        return Fraction(0), _ceil(1 / _exp_nonneg(Fraction(EXP_LIMIT))[0])
    lo, hi = _exp_nonneg(-r)
    return _floor(1 / hi), _ceil(1 / lo)


def softmax_box(logits: Vec) -> tuple[Vec, Vec]:
    """Rational bounds on each softmax weight."""
    if all(l == logits[0] for l in logits):
        w = Fraction(1, len(logits))
        return [w] * len(logits), [w] * len(logits)
    top = max(logits)
    e = [exp_bounds(l - top) for l in logits]
    total_lo = sum((lo for lo, _ in e), Fraction(0))
    total_hi = sum((hi for _, hi in e), Fraction(0))
    return [_floor(lo / total_hi) for lo, _ in e], [_ceil(hi / total_lo) for _, hi in e]


def head_logits(head: Any, query: Vec, visible: list[Vec]) -> Vec:
    """The head's exact logits <Wk x, Wq query> of a query token over the visible tokens."""
    q = matvec(head.Wq, query)
    return [sum((a * b for a, b in zip(matvec(head.Wk, x), q)), Fraction(0)) for x in visible]


def attention_box(V: Mat, query_logits: Vec, visible: list[Vec]) -> tuple[Vec, Vec]:
    """Bounds on V sum_j s_j x_j with s = softmax(query_logits), coordinate by coordinate."""
    s_lo, s_hi = softmax_box(query_logits)
    vals = [matvec(V, x) for x in visible]
    d = len(V)
    lo = [sum((min(sl * v[k], sh * v[k]) for sl, sh, v in zip(s_lo, s_hi, vals)), Fraction(0)) for k in range(d)]
    hi = [sum((max(sl * v[k], sh * v[k]) for sl, sh, v in zip(s_lo, s_hi, vals)), Fraction(0)) for k in range(d)]
    return lo, hi
