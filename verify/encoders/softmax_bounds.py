"""Rigorous rational enclosures of exp and of softmax weights (mpmath interval arithmetic).

exp never enters z3 or the linear problems: each exp(r) of a rational r is enclosed in a
rational interval [lo, hi] that provably contains it, and the enclosures enter the problems.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Sequence

from mpmath import iv

from .rational import Vec, round_down, round_up

PRECISION_BITS = 160


def _raw_to_fraction(raw: tuple) -> Fraction:
    """An mpmath raw mpf tuple (sign, mantissa, exponent, bitcount) -> its exact value."""
    sign, man, exp, _ = raw
    if not man and exp:  # inf / nan are encoded with a zero mantissa and a special exponent
        raise OverflowError("exp enclosure out of range")
    value = Fraction(man) * (Fraction(2) ** exp)
    return -value if sign else value


def exp_enclosure(r: Fraction) -> tuple[Fraction, Fraction]:
    """Rationals lo <= exp(r) <= hi, outward rounded to the grid of verify.rational."""
    saved = iv.prec
    iv.prec = PRECISION_BITS
    try:
        x = iv.mpf(r.numerator) / iv.mpf(r.denominator)  # an interval containing r
        e = iv.exp(x)
        lo_raw, hi_raw = e._mpi_  # the interval's exact binary end points
        lo, hi = _raw_to_fraction(lo_raw), _raw_to_fraction(hi_raw)
    finally:
        iv.prec = saved
    return round_down(lo), round_up(hi)


def softmax_enclosure(logits: Sequence[Fraction]) -> tuple[Vec, Vec]:
    """Bounds on softmax(logits): exact when all logits are equal, else via exp enclosures.

    Uses s_j = 1 / sum_k exp(l_k - l_j), so every exp argument is a difference of logits.
    """
    n = len(logits)
    if all(l == logits[0] for l in logits):
        w = Fraction(1, n)
        return [w] * n, [w] * n
    lo, hi = [], []
    for j, lj in enumerate(logits):
        sums_lo, sums_hi = Fraction(1), Fraction(1)
        for k, lk in enumerate(logits):
            if k != j:
                e_lo, e_hi = exp_enclosure(lk - lj)
                sums_lo += e_lo
                sums_hi += e_hi
        lo.append(round_down(1 / sums_hi))
        hi.append(round_up(1 / sums_lo))
    return lo, hi


def attention_enclosure(V: Sequence[Sequence[Fraction]], key: Sequence[Fraction],
                        visible: Sequence[Sequence[Fraction]]) -> tuple[Vec, Vec]:
    """Coordinate bounds on V sum_j s_j x_j with s = softmax(<x_j, key>) over the visible tokens
    (key = Wk^T Wq x_query), exactly enclosed."""
    s_lo, s_hi = softmax_enclosure([sum((a * b for a, b in zip(x, key)), Fraction(0)) for x in visible])
    vals = [[sum((a * b for a, b in zip(row, x)), Fraction(0)) for row in V] for x in visible]
    d = len(V)
    lo = [sum((min(l * v[k], h * v[k]) for l, h, v in zip(s_lo, s_hi, vals)), Fraction(0)) for k in range(d)]
    hi = [sum((max(l * v[k], h * v[k]) for l, h, v in zip(s_lo, s_hi, vals)), Fraction(0)) for k in range(d)]
    return lo, hi


def sum_exp_enclosure(logits: Sequence[Fraction], shift: Fraction) -> tuple[Fraction, Fraction]:
    """Bounds on sum_j exp(l_j - shift)."""
    lo, hi = Fraction(0), Fraction(0)
    for l in logits:
        e_lo, e_hi = exp_enclosure(l - shift)
        lo += e_lo
        hi += e_hi
    return lo, hi
