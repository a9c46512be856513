"""Branch and bound over the delta-sphere: the L1 margin from the MLP's exact local behaviour.

The checker's argument (verify/checkers/l1_sphere.py): a member whose attention output leaves
the ball ||h - P|| <= delta has layer-output distance from g(P) at least rho = min over the
sphere of ||g(s) - g(P)||_inf, against the global (1 - kappa) delta. This module finds, in
float64, cell trees on the sphere's 2d faces whose exact cell bounds make rho large: best-first,
it splits the cell with the lowest bound along its widest free coordinate, until a leaf budget or
a time budget is spent or the lowest bound is within a relative gap of the best sphere point
seen (no split can gain more). A tree cut short is still a valid cover; its rho is the minimum
over the cells it has. Only the checker's exact arithmetic decides.
"""

from __future__ import annotations

import numpy as np

from .cells import LEAF, Budget, bisect
from .mlp import MLPWeights

SphereBudget = Budget  # per member: cells over all faces together, seconds, gap
DEFAULT_BUDGET = SphereBudget()
NO_REFINEMENT = SphereBudget(leaves=0)
REFINE_MAX_D = 32  # beyond this width the default is no refinement: the exact check of a cell costs
#                    O(d^2 m) per activation pattern, and at d = 64 it tripled certify + check time


def refinement_budget(d: int, asked: SphereBudget | None) -> SphereBudget:
    """The budget to use: the one asked for, else the default up to REFINE_MAX_D and none beyond."""
    if asked is not None:
        return asked
    return DEFAULT_BUDGET if d <= REFINE_MAX_D else NO_REFINEMENT


def _bound(W1: np.ndarray, W2: np.ndarray, pre0: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Float lower bound of ||g(P + e) - g(P)||_inf over lo <= e <= hi, as the checker computes it exactly."""
    r0 = np.maximum(pre0, 0.0)                                       # (m,)
    p_lo = pre0 + np.maximum(W1, 0) @ lo + np.minimum(W1, 0) @ hi    # (m,)
    p_hi = pre0 + np.maximum(W1, 0) @ hi + np.minimum(W1, 0) @ lo    # (m,)
    active, inactive = p_lo >= 0, p_hi <= 0
    unstable = ~active & ~inactive
    A = np.eye(len(lo)) + W2[:, active] @ W1[active]                 # (d, d)
    const = W2[:, active] @ (pre0[active] - r0[active]) - W2[:, inactive] @ r0[inactive]  # (d,)
    t_lo, t_hi = -r0[unstable], p_hi[unstable] - r0[unstable]        # (u,)
    Wu = W2[:, unstable]                                             # (d, u)
    out_lo = np.maximum(A, 0) @ lo + np.minimum(A, 0) @ hi + const + np.maximum(Wu, 0) @ t_lo + np.minimum(Wu, 0) @ t_hi
    out_hi = np.maximum(A, 0) @ hi + np.minimum(A, 0) @ lo + const + np.maximum(Wu, 0) @ t_hi + np.minimum(Wu, 0) @ t_lo
    return float(max(0.0, np.max(out_lo), np.max(-out_hi)))


def _point(mlp: MLPWeights, P: np.ndarray, e: np.ndarray) -> float:
    """||g(P + e) - g(P)||_inf at one sphere point: an upper bound of rho (float)."""
    def branch(h: np.ndarray) -> np.ndarray:
        return mlp.W2 @ np.maximum(mlp.W1 @ h + mlp.b1, 0)           # (d,)
    return float(np.max(np.abs(e + branch(P + e) - branch(P))))


def sphere_trees(mlp: MLPWeights, P: np.ndarray, delta: float, budget: SphereBudget = DEFAULT_BUDGET
                 ) -> tuple[list[list[int]], float]:
    """Per face, a preorder cell tree (the checker's format), and the float rho it proves."""
    W1, W2 = np.asarray(mlp.W1, float), np.asarray(mlp.W2, float)
    d = len(P)
    pre0 = W1 @ P + np.asarray(mlp.b1, float)                        # (m,)
    roots = []
    for face in range(2 * d):
        j, sign = face // 2, (1.0 if face % 2 == 0 else -1.0)
        lo, hi = np.full(d, -delta), np.full(d, delta)
        lo[j] = hi[j] = sign * delta
        roots.append((lo, hi, j))
    return bisect(roots, lambda lo, hi: _bound(W1, W2, pre0, lo, hi), budget,
                  lambda lo, hi: _point(mlp, P, (lo + hi) / 2))


SLACK = 1e-9  # a claimed margin stays this far (relative to max(1, delta)) below the float one: rounding


def refined_margin(mlp: MLPWeights, centres: list, residuals: list, kappa: float, delta: float,
                   budget: SphereBudget = DEFAULT_BUDGET) -> tuple[float, dict, list[float]]:
    """The float margin that sphere trees around each centre P_i prove when some member's attention
    output is at least delta from its c_i: min_i max((1 - kappa) delta, rho_i) - ||r_i||, less SLACK;
    the certificate's "sphere" record; and each member's floor (for reporting)."""
    trees, floors = [], []
    for P in centres:
        member_trees, rho = sphere_trees(mlp, np.array([float(v) for v in P]), delta, budget)
        trees.append(member_trees)
        floors.append(max((1 - kappa) * delta, rho))
    margin = min(f - float(r) for f, r in zip(floors, residuals)) - SLACK * max(1.0, delta)
    return margin, {"trees": trees}, floors


def cell_count(record: dict) -> int:
    """Leaves in a sphere record (every member, every face)."""
    return sum(t.count(LEAF) for member in record["trees"] for t in member)
