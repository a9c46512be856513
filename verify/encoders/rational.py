"""Exact rational helpers for the encoders: binary64 -> Fraction, vectors, outward rounding.

(The independent checker, verify/checkers, has its own arithmetic and imports nothing here.)
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Iterable, Sequence

import numpy as np

Vec = list  # list[Fraction]
Mat = list  # list[list[Fraction]], rows; acts as M @ x

GRID_BITS = 120  # outward rounding grid 2^-120 for enclosure endpoints


def q(x: float) -> Fraction:
    """The exact rational value of a binary64 number (never via str)."""
    return Fraction(float(x))


def qvec(a: Iterable[float]) -> Vec:
    return [q(x) for x in a]


def qmat(a: np.ndarray) -> Mat:
    return [qvec(row) for row in np.atleast_2d(a)]


def matvec(M: Mat, x: Sequence[Fraction]) -> Vec:
    return [sum((m * xi for m, xi in zip(row, x)), Fraction(0)) for row in M]


def matmul(A: Mat, B: Mat) -> Mat:
    cols = list(zip(*B))
    return [[sum((a * b for a, b in zip(row, col)), Fraction(0)) for col in cols] for row in A]


def transpose(M: Mat) -> Mat:
    return [list(col) for col in zip(*M)]


def dot(x: Sequence[Fraction], y: Sequence[Fraction]) -> Fraction:
    return sum((a * b for a, b in zip(x, y)), Fraction(0))


def inf_norm(x: Sequence[Fraction]) -> Fraction:
    return max((abs(v) for v in x), default=Fraction(0))


def round_down(x: Fraction, bits: int = GRID_BITS) -> Fraction:
    return Fraction(math.floor(x * (1 << bits)), 1 << bits)


def round_up(x: Fraction, bits: int = GRID_BITS) -> Fraction:
    return Fraction(math.ceil(x * (1 << bits)), 1 << bits)


def frac_str(x: Fraction) -> str:
    return f"{x.numerator}/{x.denominator}"


def rationalize(x: float, max_den: int = 1 << 40) -> Fraction:
    """A short rational near a float (for multipliers proposed by a float LP)."""
    return Fraction(float(x)).limit_denominator(max_den)


def solve_exact(A: Mat, b: Sequence[Fraction]) -> Vec | None:
    """The unique x with A x = b (A square), by Gaussian elimination in Fractions; None if singular."""
    n = len(A)
    M = [list(row) + [bi] for row, bi in zip(A, b)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if M[r][col] != 0), None)
        if pivot is None:
            return None
        M[col], M[pivot] = M[pivot], M[col]
        inv = 1 / M[col][col]
        M[col] = [v * inv for v in M[col]]
        for r in range(n):
            if r != col and M[r][col] != 0:
                f = M[r][col]
                M[r] = [a - f * p for a, p in zip(M[r], M[col])]
    return [row[n] for row in M]


def sqrt_bounds(x: Fraction, bits: int = 64) -> tuple[Fraction, Fraction]:
    """Rationals lo <= sqrt(x) <= hi (x >= 0) with relative gap about 2^-bits, by integer square
    roots: sqrt(p/q) = sqrt(p q 4^k) / (q 2^k). Exact for any size (no float underflow)."""
    if x < 0:
        raise ValueError(f"sqrt_bounds: expected x >= 0, got {x}")
    p, qd = x.numerator, x.denominator
    k = max(0, (2 * bits - (p * qd).bit_length()) // 2 + 1)
    n = (p * qd) << (2 * k)
    r = math.isqrt(n)
    return Fraction(r, qd << k), Fraction(r + (r * r != n), qd << k)


def positive_definite(G: Sequence[Sequence[Fraction]]) -> bool:
    """Exact LDL^T without pivoting: every pivot > 0 iff the symmetric G is positive definite."""
    A = [list(row) for row in G]
    for k in range(len(A)):
        if A[k][k] <= 0:
            return False
        for i in range(k + 1, len(A)):
            f = A[i][k] / A[k][k]
            if f:
                A[i] = [a - f * b for a, b in zip(A[i], A[k])]
    return True
