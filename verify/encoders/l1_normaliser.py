"""L1+ sharpened by the prompt's normaliser bound of SPEC section 2, as a disjunction of pieces.

For every prompt, with v = sum_j s_j p_j its softmax-weighted mean (u = V v) and k = Wk^T Wq x_0
(the logit of a prompt token p is <p, k>), log S_P = <k, v> + H(s) >= <k, v>, so
sigma = 1/S_P <= exp(-<k, v>): a nonconvex constraint. Split the line z = <k, v> into pieces
(-inf, z_1], [z_1, z_2], ..., [z_K, inf); on [z_j, ...) the bound sigma <= exp(-z_j) is linear.
A certificate is one Farkas certificate per piece (checked by verify/checkers/l1.py); the exact
repair of a piece that uses the z rows needs g with V^T g = k, so the bound applies where k lies
in range(V^T) (SPEC section 2). Breakpoints and radii are found with float LPs under a fixed
budget of LP solves (deterministic), and only the exact check decides.
"""

from __future__ import annotations

from fractions import Fraction

from .l1 import Piece, _Data, _dual_lp, _multipliers_from, _repair
from .rational import solve_exact, transpose
from .softmax_bounds import exp_enclosure

MAX_PIECES = 8
Z_STEPS = 14
LP_BUDGET = 800


class _Budget:
    def __init__(self, n: int):
        self.left = n

    def lp(self, data: _Data, delta: float, piece: Piece):
        if self.left <= 0:
            raise TimeoutError
        self.left -= 1
        return _dual_lp(data, delta, True, piece)


CAP_EXPONENT = 700  # exp beyond this is no usable bound in a float LP (and dropping it is sound)


def _cap(data: _Data, z_lo: Fraction) -> Fraction | None:
    """An upper bound on exp(shift - z_lo), or None where it is too large to help (no bound)."""
    if data.shift - z_lo > CAP_EXPONENT:
        return None
    return exp_enclosure(data.shift - z_lo)[1]


def _pieces_at(data: _Data, delta: float, budget: _Budget, span: float) -> list | None:
    """[(piece, float solution)] covering the z line, each infeasible at delta; None if not found."""
    out = []
    z_lo: Fraction | None = None
    for _ in range(MAX_PIECES):
        cap = None if z_lo is None else _cap(data, z_lo)
        sol = budget.lp(data, delta, (None, z_lo, cap))
        if sol is not None:  # the rest of the line in one piece
            out.append(((None, z_lo, cap), sol))
            return out
        lo = (float(z_lo) if z_lo is not None else -span)
        first = budget.lp(data, delta, (Fraction(lo), z_lo, cap)) if z_lo is None else None
        if z_lo is None and first is None:
            return None
        good, good_sol, hi = lo, first, span
        for _ in range(Z_STEPS):  # the largest z_hi that keeps this piece infeasible
            mid = (good + hi) / 2
            sol = budget.lp(data, delta, (Fraction(mid), z_lo, cap))
            if sol is not None:
                good, good_sol = mid, sol
            else:
                hi = mid
        if good_sol is None or (z_lo is not None and good - float(z_lo) < 1e-6):
            return None
        z_hi = Fraction(good)
        out.append(((z_hi, z_lo, cap), good_sol))
        z_lo = z_hi
    return None


def _exact(data: _Data, delta: float, pieces: list) -> tuple[Fraction, list] | None:
    """Exact multipliers per piece and the radius all of them prove (None if one fails)."""
    radius = Fraction(delta)
    exact = []
    for piece, sol in pieces:
        ys, mh, ml, extras, r = _repair(data, sol, True, piece)
        if r <= 0:
            return None
        radius = min(radius, r)
        exact.append((piece, ys, mh, ml, extras))
    return radius, [(piece, _multipliers_from(data, ys, mh, ml, radius, True, extras))
                    for piece, ys, mh, ml, extras in exact]


def sharpen(data: _Data, best_plain: float) -> tuple[Fraction, list] | None:
    """The largest radius the piecewise bound certifies beyond `best_plain`, with its pieces."""
    if data.g is None:
        data.g = solve_exact(transpose(data.V), data.key)
    if data.g is None:
        return None  # k is not in range(V^T): the bound does not apply
    scale = max(1.0, *(abs(float(x)) for v in data.c + data.a_hi for x in v))
    span = 64.0 + abs(float(data.shift)) + 4 * scale * max(1.0, *(abs(float(x)) for x in data.key))
    if best_plain > 0:
        candidates = [best_plain * f for f in (1.25, 1.5, 2, 3, 4, 6, 8)]
    else:
        candidates = [scale * 2.0 ** -e for e in (12, 10, 8, 6, 4, 3, 2, 1, 0)]
    budget = _Budget(LP_BUDGET)
    found = None
    try:
        for delta in candidates:
            pieces = _pieces_at(data, delta, budget, span)
            result = _exact(data, delta, pieces) if pieces else None
            if result is None:
                if found is not None:
                    break
                continue
            found = result
    except TimeoutError:
        pass
    return found
