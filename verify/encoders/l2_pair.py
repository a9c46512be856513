"""The structured L2 floor for N = 2 positions (the argument: verify/checkers/l2_pair.py).

With one prompt token, (1 - theta) e_1 - theta e_2 = -F(theta, s) for theta in [0, 1] and s in
[0, 2]; this module finds, in float64, a cell tree over that rectangle whose exact cell bounds
make the least ||F||_inf large (cells.py), and the empty prompt's floor beside it. Only the
checker's exact arithmetic decides.
"""

from __future__ import annotations

import math

import numpy as np

from .cells import Budget, bisect

DEFAULT_BUDGET = Budget(leaves=1000, seconds=2.0)


def _bound(lo: np.ndarray, hi: np.ndarray, c: np.ndarray, a_lo: np.ndarray, a_hi: np.ndarray) -> float:
    """Float lower bound of ||F||_inf over the cell theta in [lo0, hi0], s in [lo1, hi1] (inf: empty)."""
    t_lo, t_hi, s_lo, s_hi = lo[0], hi[0], lo[1], hi[1]
    widest = 0.5 if t_lo <= 0.5 <= t_hi else min(max(t_lo, 1 - t_lo), max(t_hi, 1 - t_hi))
    s_hi = min(s_hi, 1 / widest)
    if s_hi < s_lo:
        return math.inf
    q_lo = min(t_lo * (1 - t_lo), t_hi * (1 - t_hi))
    q_hi = 0.25 if t_lo <= 0.5 <= t_hi else max(t_lo * (1 - t_lo), t_hi * (1 - t_hi))
    u_lo, u_hi = c[0] - a_hi[0], c[0] - a_lo[0]                                  # (d,) c_1 - a_1
    v_lo, v_hi = c[1] - a_hi[1], c[1] - a_lo[1]                                  # (d,) c_2 - a_2
    w_lo, w_hi = a_lo[0] - a_hi[1], a_hi[0] - a_lo[1]                            # (d,) a_1 - a_2
    first_lo = np.minimum((1 - t_lo) * u_lo - t_lo * v_hi, (1 - t_hi) * u_lo - t_hi * v_hi)
    first_hi = np.maximum((1 - t_lo) * u_hi - t_lo * v_lo, (1 - t_hi) * u_hi - t_hi * v_lo)
    products = np.stack([q * s * w for q, s in ((q_lo, s_lo), (q_hi, s_hi)) for w in (w_lo, w_hi)])  # (4, d)
    f_lo, f_hi = first_lo + products.min(0), first_hi + products.max(0)
    return float(max(0.0, np.max(f_lo), np.max(-f_hi)))


def _centre(lo: np.ndarray, hi: np.ndarray, c: np.ndarray, a: np.ndarray) -> float:
    """||F||_inf at the cell's centre with the boxes' midpoints (an upper value of the least)."""
    t, s = (lo + hi) / 2
    s = min(s, 1 / max(t, 1 - t))
    return float(np.abs((1 - t) * (c[0] - a[0]) - t * (c[1] - a[1]) + t * (1 - t) * s * (a[0] - a[1])).max())


def pair_cells(c: np.ndarray, a_lo: np.ndarray, a_hi: np.ndarray, budget: Budget = DEFAULT_BUDGET
               ) -> tuple[list[int], float]:
    """A cell tree over (theta, s) and the float floor min(delta_0, least cell bound).

    c, a_lo, a_hi: (2, d) the needed attention outputs and the boxes of the data's own."""
    empty = float(np.max(np.maximum(np.maximum(a_lo - c, c - a_hi), 0.0).max(axis=1)))
    a_mid = (a_lo + a_hi) / 2
    trees, floor = bisect([(np.array([0.0, 0.0]), np.array([1.0, 2.0]), None)],
                          lambda lo, hi: _bound(lo, hi, c, a_lo, a_hi), budget,
                          lambda lo, hi: _centre(lo, hi, c, a_mid))
    return trees[0], min(empty, floor)
