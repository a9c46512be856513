"""MLP facts the certificates need: branch Lipschitz bound, injectivity, inverse, exact evaluation.

A residual MLP z -> z + W2 relu(W1 z + b1) + b2 whose branch has max-norm Lipschitz constant
kappa < 1 is injective with ||MLP(p) - MLP(q)|| >= (1 - kappa) ||p - q|| (max norm). The bound
used is kappa = || |W2| |W1| ||_inf (max row sum), exact in rationals: for p, q the branch
difference is W2 D W1 (p - q) with D diagonal in [0, 1], and ||W2 D W1||_inf <= || |W2||W1| ||_inf.
Otherwise injectivity is decided exactly by z3 (piecewise-linear arithmetic), with a replayed
witness pair when it fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Mapping

import numpy as np

from .rational import Vec, matvec, qmat, qvec

Z3_TIMEOUT_MS = 20_000


@dataclass(frozen=True)
class MLPWeights:
    kind: str  # "residual" | "plain"
    W1: np.ndarray  # (h, d)
    b1: np.ndarray  # (h,)
    W2: np.ndarray  # (d, h)
    b2: np.ndarray  # (d,)

    @classmethod
    def of_layer(cls, kind: str, weights: Mapping[str, np.ndarray], layer: int = 0) -> "MLPWeights":
        p = f"layers.{layer}."
        return cls(kind, weights[p + "W1"], weights[p + "b1"], weights[p + "W2"], weights[p + "b2"])


@dataclass(frozen=True)
class Injectivity:
    status: str  # "injective" | "not-injective" | "unknown"
    method: str  # how it was decided
    witness: tuple[Vec, Vec] | None = None  # p != q with MLP(p) == MLP(q), exact


def branch_lipschitz(mlp: MLPWeights) -> Fraction:
    """Exact rational bound on the max-norm Lipschitz constant of W2 relu(W1 . + b1).

    || |W2| |W1| ||_inf = max_i sum_k |W2_ik| (row sum k of |W1|), in O(d h) exact operations.
    """
    row_sums = [sum((abs(x) for x in qvec(row)), Fraction(0)) for row in mlp.W1]
    return max(sum((abs(w) * r for w, r in zip(qvec(row), row_sums)), Fraction(0)) for row in mlp.W2)


def inverse_lipschitz(mlp: MLPWeights) -> Fraction | None:
    """c with ||MLP(p) - MLP(q)||_inf >= c ||p - q||_inf for all p, q, when one is known."""
    if mlp.kind != "residual":
        return None
    kappa = branch_lipschitz(mlp)
    return 1 - kappa if kappa < 1 else None


def evaluate_exact(mlp: MLPWeights, h: Vec) -> Vec:
    pre = [a + b for a, b in zip(matvec(qmat(mlp.W1), h), qvec(mlp.b1))]
    hidden = [x if x > 0 else Fraction(0) for x in pre]
    branch = [a + b for a, b in zip(matvec(qmat(mlp.W2), hidden), qvec(mlp.b2))]
    return [a + b for a, b in zip(h, branch)] if mlp.kind == "residual" else branch


def evaluate_float(mlp: MLPWeights, h: np.ndarray) -> np.ndarray:
    branch = mlp.W2 @ np.maximum(mlp.W1 @ h + mlp.b1, 0.0) + mlp.b2
    return h + branch if mlp.kind == "residual" else branch


def invert(mlp: MLPWeights, y: np.ndarray, iterations: int = 10_000) -> np.ndarray:
    """Float h with MLP(h) ~= y for a contractive residual MLP (fixed point h = y - branch(h)).

    The result is approximate; callers compute its residual exactly (SPEC section 4).
    """
    kappa_estimate = (np.abs(mlp.W2) @ np.abs(mlp.W1)).sum(axis=1).max()  # float: only a precondition
    if mlp.kind != "residual" or kappa_estimate >= 1:
        raise ValueError("invert needs a residual MLP whose branch is a contraction")
    h = np.array(y, dtype=np.float64)
    for _ in range(iterations):
        new = y - (evaluate_float(mlp, h) - h)
        if np.array_equal(new, h):
            break
        h = new
    return h


def injectivity(mlp: MLPWeights, timeout_ms: int = Z3_TIMEOUT_MS) -> Injectivity:
    """Decide injectivity exactly: a cheap sufficient condition first, then z3."""
    if inverse_lipschitz(mlp) is not None:
        return Injectivity("injective", "residual branch is a max-norm contraction (kappa < 1)")
    import z3

    d = mlp.W1.shape[1]
    W1, b1, W2, b2 = qmat(mlp.W1), qvec(mlp.b1), qmat(mlp.W2), qvec(mlp.b2)

    def num(x: Fraction) -> z3.ArithRef:
        return z3.Q(x.numerator, x.denominator)

    def f(z: list) -> list:
        pre = [sum(num(w) * zi for w, zi in zip(row, z)) + num(b) for row, b in zip(W1, b1)]
        hidden = [z3.If(s > 0, s, 0) for s in pre]
        out = [sum(num(w) * hk for w, hk in zip(row, hidden)) + num(b) for row, b in zip(W2, b2)]
        return [zi + oi for zi, oi in zip(z, out)] if mlp.kind == "residual" else out

    p = [z3.Real(f"p{i}") for i in range(d)]
    r = [z3.Real(f"q{i}") for i in range(d)]
    solver = z3.Solver()
    solver.set("timeout", timeout_ms)
    solver.add(*[a == b for a, b in zip(f(p), f(r))])
    solver.add(z3.Or(*[a != b for a, b in zip(p, r)]))
    result = solver.check()
    if result == z3.unsat:
        return Injectivity("injective", "z3: no pair p != q with MLP(p) = MLP(q)")
    if result == z3.sat:
        model = solver.model()

        def value(v: z3.ArithRef) -> Fraction:
            val = model.eval(v, model_completion=True)
            return Fraction(val.numerator_as_long(), val.denominator_as_long())
        wp, wq = [value(v) for v in p], [value(v) for v in r]
        if wp != wq and evaluate_exact(mlp, wp) == evaluate_exact(mlp, wq):  # replay the witness exactly
            return Injectivity("not-injective", "z3 witness, replayed exactly", (wp, wq))
        return Injectivity("unknown", "z3 witness failed exact replay")
    return Injectivity("unknown", f"z3: {solver.reason_unknown()}")
