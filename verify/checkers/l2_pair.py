"""A structured attention floor for L2 with N = 2 target positions (prompts of length 0 or 1).

Positions j = 1, 2 have data attention outputs a_j (in boxes) and needed outputs c_j. With no
prompt z_j = a_j, so some error is at least delta_0 = max_j min over the box ||a_j - c_j||_inf. With
one prompt token p, z_j = lam_j u + (1 - lam_j) a_j for the same u = V p and some lam_j in (0, 1),
so lam_2 (z_1 - (1 - lam_1) a_1) = lam_1 lam_2 u = lam_1 (z_2 - (1 - lam_2) a_2). Writing
e_j = z_j - c_j, theta = lam_1 / (lam_1 + lam_2) and s = lam_1 + lam_2, and dividing by s:

    (1 - theta) e_1 - theta e_2 = -F,  F = (1 - theta)(c_1 - a_1) - theta (c_2 - a_2)
                                           + theta (1 - theta) s (a_1 - a_2),

and ||(1 - theta) e_1 - theta e_2||_inf <= max_j ||e_j||_inf. So max_j ||e_j||_inf >= min ||F||_inf
over theta in [0, 1] and s in [0, 2] with s max(theta, 1 - theta) <= 1 (each lam_j <= 1). A
certificate's cell tree (cells.py) covers that rectangle; on each cell this module bounds
||F||_inf from below exactly (F_k is bilinear in theta and the a-box on the first part, and
theta (1 - theta) s >= 0 has an exact range on a cell). Standard library only.
"""

from __future__ import annotations

from fractions import Fraction

from .cells import ONE, leaves

Vec = list[Fraction]


def empty_prompt_floor(cs: list[Vec], boxes: list[tuple[Vec, Vec]]) -> Fraction:
    """delta_0: with no prompt, max_j of the least ||a - c_j||_inf over a_j's box."""
    return max(max(max(lo - c, c - hi, Fraction(0)) for c, lo, hi in zip(cj, blo, bhi))
               for cj, (blo, bhi) in zip(cs, boxes))


def _theta_s(N: list[int]) -> tuple[Fraction, Fraction]:
    """Root box [-ONE, ONE]^2 -> theta in [0, 1], s in [0, 2]."""
    return Fraction(N[0] + ONE, 2 * ONE), Fraction(N[1] + ONE, ONE)


def _cell_bound(lo: list[int], hi: list[int], c1: Vec, b1: tuple[Vec, Vec], c2: Vec, b2: tuple[Vec, Vec]
                ) -> Fraction | None:
    """A lower bound of ||F||_inf over the cell, or None where no (theta, s) of it is allowed."""
    t_lo, s_lo = _theta_s(lo)
    t_hi, s_hi = _theta_s(hi)
    half = Fraction(1, 2)
    widest = half if t_lo <= half <= t_hi else min(max(t_lo, 1 - t_lo), max(t_hi, 1 - t_hi))
    s_hi = min(s_hi, 1 / widest)  # lam_j = theta s, (1 - theta) s are at most 1
    if s_hi < s_lo:
        return None
    q = lambda t: t * (1 - t)  # noqa: E731
    q_lo = min(q(t_lo), q(t_hi))
    q_hi = Fraction(1, 4) if t_lo <= half <= t_hi else max(q(t_lo), q(t_hi))
    qs_lo, qs_hi = q_lo * s_lo, q_hi * s_hi
    best = Fraction(0)
    for k in range(len(c1)):
        u_lo, u_hi = c1[k] - b1[1][k], c1[k] - b1[0][k]      # c_1 - a_1
        v_lo, v_hi = c2[k] - b2[1][k], c2[k] - b2[0][k]      # c_2 - a_2
        w_lo, w_hi = b1[0][k] - b2[1][k], b1[1][k] - b2[0][k]  # a_1 - a_2
        first_lo = min((1 - t) * u_lo - t * v_hi for t in (t_lo, t_hi))
        first_hi = max((1 - t) * u_hi - t * v_lo for t in (t_lo, t_hi))
        products = [a * b for a in (qs_lo, qs_hi) for b in (w_lo, w_hi)]
        f_lo, f_hi = first_lo + min(products), first_hi + max(products)
        best = max(best, f_lo, -f_hi)
    return best


def pair_floor(cs: list[Vec], boxes: list[tuple[Vec, Vec]], tree: object, where: str) -> Fraction:
    """min(delta_0, the least cell bound of ||F||_inf): some position's attention error is at least this."""
    floor = empty_prompt_floor(cs, boxes)
    for lo, hi in leaves(tree, [-ONE, -ONE], [ONE, ONE], set(), where):
        bound = _cell_bound(lo, hi, cs[0], boxes[0], cs[1], boxes[1])
        if bound is not None:
            floor = min(floor, bound)
    return floor
